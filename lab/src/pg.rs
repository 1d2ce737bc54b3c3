//! A throw-away PostgreSQL: where its binaries are, the user it runs as, how `initdb` makes its
//! data directory and how the server is started. Shared by the fleet lab (`lab up --fleet`,
//! whose server the keeper runs until `lab down`) and the tests' support (`tests/support/pg.rs`).
//!
//! PostgreSQL refuses to run as root; as root the server runs as the `postgres` user (Debian's
//! `postgresql` package makes it). Durability is off (`fsync=off` and friends): the data is
//! thrown away with the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package with the binaries (`scripts/setup.sh` installs it).
pub const PACKAGE: &str = "postgresql";

/// Where the PostgreSQL binaries are: the highest version under /usr/lib/postgresql, else
/// `pg_config --bindir`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    bin.join("postgres").exists().then_some(bin)
}

/// Why there is no server to start, for an error message.
pub fn missing() -> String {
    format!(
        "no PostgreSQL binaries (/usr/lib/postgresql/*/bin or pg_config): apt-get install {PACKAGE} (scripts/setup.sh installs it)"
    )
}

/// `(uid, gid)` of `user` from /etc/passwd.
pub fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// `initdb`'s arguments: superuser `postgres` with the password in `pwfile`, SCRAM
/// authentication everywhere.
pub fn initdb_args(data: &Path, pwfile: &Path) -> Vec<String> {
    vec![
        "-D".into(),
        data.display().to_string(),
        "-U".into(),
        "postgres".into(),
        "--auth=scram-sha-256".into(),
        "--no-sync".into(),
        "-E".into(),
        "UTF8".into(),
        format!("--pwfile={}", pwfile.display()),
    ]
}

/// `postgres`'s arguments: its socket in `socket_dir` (`.s.PGSQL.<port>`), TCP on `listen`
/// (`""`: none), durability off.
pub fn server_args(data: &Path, socket_dir: &Path, port: u16, listen: &str) -> Vec<String> {
    [
        "-D",
        &data.display().to_string(),
        "-k",
        &socket_dir.display().to_string(),
        "-p",
        &port.to_string(),
        "-c",
        &format!("listen_addresses={listen}"),
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=400",
    ]
    .map(String::from)
    .to_vec()
}

/// libpq's URL of database `db` as `role` over the Unix socket in `socket_dir`, which
/// processes in every network namespace reach.
pub fn socket_url(role: &str, password: &str, socket_dir: &Path, port: u16, db: &str) -> String {
    format!(
        "postgres://{role}:{password}@localhost:{port}/{db}?host={}",
        socket_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_listens_on_its_socket_only_when_asked_to() {
        let a = server_args(Path::new("/d/data"), Path::new("/d"), 5432, "");
        let i = a.iter().position(|x| x == "-k").unwrap();
        assert_eq!(a[i + 1], "/d");
        assert!(a.contains(&"listen_addresses=".to_string()), "{a:?}");
        assert!(a.contains(&"fsync=off".to_string()));
    }

    #[test]
    fn urls_name_the_socket_directory() {
        assert_eq!(
            socket_url("tapwire", "pw", Path::new("/run/x/pg"), 5432, "lab"),
            "postgres://tapwire:pw@localhost:5432/lab?host=/run/x/pg"
        );
    }

    #[test]
    fn user_ids_read_passwd() {
        assert_eq!(user_ids("root"), Some((0, 0)));
        assert_eq!(user_ids("no-such-user-here"), None);
    }
}
