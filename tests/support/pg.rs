//! A throw-away PostgreSQL for tests: `initdb` into a temporary directory, `postgres` on a
//! Unix socket in that directory and on 127.0.0.1 at a free port, password authentication
//! (SCRAM) everywhere. PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user (Debian's package makes it). A watchdog process stops the server and
//! removes its directory when the test process ends, however it ends (a panic, an abort, a
//! kill), so nothing is left behind.
//!
//! [`Pg::shared`] is one server per test process, each test taking a database of its own
//! ([`Pg::database`]); [`Pg::start`] a server of the test's own (one it can stop and start,
//! [`Pg::stop`], [`Pg::restart`]). Without PostgreSQL's binaries both fail, saying so
//! (`scripts/setup.sh` installs them, so CI runs these tests), unless
//! `TAPWIRE_SKIP_POSTGRES` is set: then they return `None` with a `SKIP:` message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tapwire_lab::pg::{bin_dir, user_ids};

/// The password of the superuser `postgres` and of the role tests connect as.
pub const PASSWORD: &str = "tapwire-test-secret";
/// The role the tests' collectors connect as (owner of every database made here).
pub const ROLE: &str = "tapwire";

/// A certificate authority made for one test and a server certificate it signed for
/// 127.0.0.1 and `localhost`, as PEM.
pub struct TestCa {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestCa {
    /// A new authority named `name` and its server certificate (fresh keys each time: two
    /// authorities never trust each other's certificates).
    pub fn new(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server")
            .signed_by(&key, &ca)
            .expect("server certificate");
        TestCa {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }
}

/// A running PostgreSQL of the test's.
pub struct Pg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as (uid, gid), when the tests run as root.
    owner: Option<(u32, u32)>,
    server: Mutex<Option<Child>>,
    watchdog: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Pg {
    /// The process's shared server, started on first use.
    pub fn shared() -> Option<&'static Pg> {
        static SHARED: OnceLock<Option<Pg>> = OnceLock::new();
        SHARED.get_or_init(|| Pg::start("shared")).as_ref()
    }

    /// A server of the caller's own, stopped and removed when dropped.
    pub fn start(tag: &str) -> Option<Pg> {
        Pg::start_with(tag, None)
    }

    /// A server of the caller's own with TLS on, its certificate signed by `ca`; with
    /// `only`, clients on TCP must use TLS (`hostssl` lines only in pg_hba.conf; the Unix
    /// socket stays plain, for [`Pg::psql`]).
    pub fn start_tls(tag: &str, ca: &TestCa, only: bool) -> Option<Pg> {
        Pg::start_with(tag, Some((ca, only)))
    }

    fn start_with(tag: &str, tls: Option<(&TestCa, bool)>) -> Option<Pg> {
        let Some(bin) = bin_dir() else {
            if std::env::var_os("TAPWIRE_SKIP_POSTGRES").is_some() {
                eprintln!("SKIP: no PostgreSQL binaries, and TAPWIRE_SKIP_POSTGRES is set");
                return None;
            }
            panic!(
                "{} (TAPWIRE_SKIP_POSTGRES=1 skips these tests)",
                tapwire_lab::pg::missing()
            );
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tapwire-pg-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let owner = if is_root() {
            Some(user_ids("postgres").expect(
                "running as root, PostgreSQL needs a user to run as: the postgresql package makes `postgres`",
            ))
        } else {
            None
        };
        if let Some((uid, gid)) = owner {
            chown(&dir, uid, gid);
        }
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if let Some((uid, gid)) = owner {
            chown(&pwfile, uid, gid);
        }
        let mut pg = Pg {
            dir,
            bin,
            port: free_port(),
            owner,
            server: Mutex::new(None),
            watchdog: None,
        };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args(tapwire_lab::pg::initdb_args(&data, &pwfile))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((ca, only)) = tls {
            pg.configure_tls(ca, only);
        }
        pg.spawn_server();
        pg.watchdog = Some(pg.spawn_watchdog());
        pg.wait_ready(Duration::from_secs(30));
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        Some(pg)
    }

    /// The server's certificate and key in its data directory, `ssl = on`, and with `only`
    /// every TCP line of pg_hba.conf made `hostssl`.
    fn configure_tls(&self, ca: &TestCa, only: bool) {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (name, pem) in [
            ("server.crt", &ca.server_cert_pem),
            ("server.key", &ca.server_key_pem),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).expect("server certificate");
            // PostgreSQL refuses a key others may read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = self.owner {
                chown(&path, uid, gid);
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )
        .unwrap();
        if only {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            let lines: Vec<String> = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}"),
                    None => l.to_string(),
                })
                .collect();
            std::fs::write(&hba, lines.join("\n") + "\n").expect("pg_hba.conf");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The Unix socket's directory.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A command of PostgreSQL's, run as the server's user.
    fn command(&self, name: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.env("PGPASSWORD", PASSWORD).current_dir(&self.dir);
        c
    }

    fn spawn_server(&self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log");
        if let Some((uid, gid)) = self.owner {
            chown(&self.dir.join("server.log"), uid, gid);
        }
        let child = self
            .command("postgres")
            .args(tapwire_lab::pg::server_args(
                &self.data_dir(),
                &self.dir,
                self.port,
                "127.0.0.1",
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        *self.server.lock().unwrap() = Some(child);
    }

    /// A shell that waits for this process to end, then stops the server at once and removes
    /// its directory: also after a panic that skips destructors, or a kill.
    fn spawn_watchdog(&self) -> Child {
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
             pid=$(head -1 '{data}/postmaster.pid' 2>/dev/null); \
             if [ -n \"$pid\" ]; then kill -QUIT \"$pid\"; sleep 1; kill -KILL \"$pid\"; fi 2>/dev/null; \
             rm -rf '{dir}'",
            me = std::process::id(),
            data = self.data_dir().display(),
            dir = self.dir.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog")
    }

    fn wait_ready(&self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let ok = self
                .command("pg_isready")
                .args([
                    "-h",
                    self.dir.to_str().unwrap(),
                    "-p",
                    &self.port.to_string(),
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(c) = self.server.lock().unwrap().as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "postgres not ready within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs `sql` in database `db` as the superuser; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args([
                "-h",
                self.dir.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
            ])
            .args([
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database owned by [`ROLE`], named after `tag` and made unique; its name.
    pub fn database(&self, tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name: String = format!("t_{tag}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        name
    }

    /// `postgres://tapwire:PASSWORD@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The same over the Unix socket, which processes in any network namespace reach.
    pub fn socket_url(&self, db: &str) -> String {
        tapwire_lab::pg::socket_url(ROLE, PASSWORD, &self.dir, self.port, db)
    }

    /// Stops the server (fast shutdown: sessions are ended) and waits for it to exit.
    pub fn stop(&self) {
        let mut server = self.server.lock().unwrap();
        if let Some(mut c) = server.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped server again, on the same port and socket.
    pub fn restart(&self) {
        self.stop();
        self.spawn_server();
        self.wait_ready(Duration::from_secs(30));
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
