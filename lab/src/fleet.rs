//! `tapwire lab up --fleet`, `lab fail` and `lab revive`: a fleet of [`COLLECTORS`] on one
//! throw-away PostgreSQL, sessions placed `auto`, probes that take their flows from any live
//! collector; a collector killed with SIGKILL and its sessions moving, live.
//!
//! PostgreSQL's data directory and socket are in the lab's state directory (`pg/`), so `down`
//! removes them with the rest; the server runs as the `postgres` user under the keeper, in the
//! `db` namespace, on its Unix socket only (which every namespace reaches through the file
//! system). The admin token `up` makes is in `<state>/admin-token` (mode 0600).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tapwire_api_types::SessionState;
use tapwire_api_types::control::{CollectorState, Fleet};

use crate::keeper::{self, Keeper};
use crate::plan::{API, COLLECTORS, FLEET_DB, FleetCollector, Plan, Sender, fleet_collector};
use crate::record::{Info, invoked_as};
use crate::sys::{self, Output};
use crate::{Refused, pg, status};

/// PostgreSQL's port: only the name of its socket file (`.s.PGSQL.5432`), no TCP.
const PG_PORT: u16 = 5432;
/// The fleet's lease (`tapwire_control::fleet::LEASE`): a dead collector's sessions move
/// after it.
pub const LEASE_S: u64 = 6;

macro_rules! say {
    ($($arg:tt)*) => {
        let _ = tapwire_netio::stdout::try_line(format_args!($($arg)*));
    };
}

/// What `up --fleet` needs beyond the lab's tools: PostgreSQL's binaries and the user it runs
/// as. Checked before anything is made.
pub fn preflight() -> Result<(PathBuf, (u32, u32))> {
    let bin = pg::bin_dir().ok_or_else(|| Refused(pg::missing()))?;
    for tool in ["initdb", "postgres", "pg_isready", "psql"] {
        if !bin.join(tool).exists() && !sys::have(tool) {
            return Err(Refused(format!(
                "{tool} missing in {}: {}",
                bin.display(),
                pg::missing()
            ))
            .into());
        }
    }
    if !sys::have("setpriv") {
        return Err(
            Refused("missing setpriv (util-linux): scripts/setup.sh installs it".into()).into(),
        );
    }
    let owner = pg::user_ids("postgres").ok_or_else(|| {
        Refused(format!(
            "no user `postgres` to run PostgreSQL as (it refuses root): apt-get install {}",
            pg::PACKAGE
        ))
    })?;
    Ok((bin, owner))
}

fn pg_tool(bin: &Path, tool: &str) -> PathBuf {
    let p = bin.join(tool);
    if p.exists() { p } else { PathBuf::from(tool) }
}

/// Starts PostgreSQL under the keeper in namespace `db`, makes the fleet's role and database;
/// returns the collectors' `--db` URL.
pub fn start_db(plan: &Plan, k: &mut Keeper, bin: &Path, owner: (u32, u32)) -> Result<String> {
    let state = plan.state_dir();
    let dir = state.join("pg");
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (uid, gid) = owner;
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {} to postgres", dir.display()))?;
    let password = random_hex(16)?;
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, &password).context("write PostgreSQL's password file")?;
    std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).context("chown the password file")?;
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
        .context("chmod the password file")?;
    let out = Command::new(pg_tool(bin, "initdb"))
        .args(pg::initdb_args(&data, &pwfile))
        .uid(uid)
        .gid(gid)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .context("run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut argv: Vec<String> = [
        "setpriv",
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
        &pg_tool(bin, "postgres").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    argv.extend(pg::server_args(&data, &dir, PG_PORT, ""));
    sys::spawn(
        k,
        &state,
        &plan.ns("db"),
        "postgres",
        &argv,
        Output::Log(state.join("logs/postgres.log")),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(pg_tool(bin, "pg_isready"))
            .args([
                "-q",
                "-h",
                &dir.display().to_string(),
                "-p",
                &PG_PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "PostgreSQL did not answer within 30 s; its log:\n{}",
                tail(&state.join("logs/postgres.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let psql = |sql: &str| -> Result<()> {
        sys::run(
            Command::new(pg_tool(bin, "psql"))
                .env("PGPASSWORD", &password)
                .args(["-h", &dir.display().to_string(), "-p", &PG_PORT.to_string()])
                .args([
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-qAt",
                ])
                .args(["-c", sql]),
        )
        .map(|_| ())
    };
    psql(&format!(
        "CREATE ROLE {FLEET_DB} LOGIN PASSWORD '{password}'"
    ))?;
    psql(&format!("CREATE DATABASE {FLEET_DB} OWNER {FLEET_DB}"))?;
    let url = pg::socket_url(FLEET_DB, &password, &dir, PG_PORT, FLEET_DB);
    write_secret(&state.join("db-url"), &url)?;
    Ok(url)
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("write {}", path.display()))
}

/// The name of collector `c`'s process in the lab's records.
pub fn record_name(c: &FleetCollector) -> String {
    format!("collector-{}", c.name)
}

/// Starts collector `c` under keeper `k`.
pub fn start_collector(
    plan: &Plan,
    k: &mut Keeper,
    tapwire: &Path,
    c: &FleetCollector,
    db: &str,
) -> Result<()> {
    let state = plan.state_dir();
    let out = plan.out.join(c.name);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    sys::spawn(
        k,
        &state,
        &plan.ns(c.name),
        &record_name(c),
        &plan.fleet_collector_argv(tapwire, c, db),
        Output::Log(state.join(format!("logs/{}.err", c.name))),
    )?;
    Ok(())
}

/// `tapwire ARGS` inside collector `c`'s namespace, with the admin token; its stdout.
fn cli(
    plan: &Plan,
    tapwire: &Path,
    c: &FleetCollector,
    args: &[String],
    token: &str,
) -> Result<String> {
    sys::run(
        Command::new("ip")
            .args(["netns", "exec", &plan.ns(c.name)])
            .arg(tapwire)
            .args(args)
            .args([
                "--controller",
                &format!("http://{}:{}", c.ip, crate::plan::FLEET_API_PORT),
            ])
            .args(["--token", token]),
    )
}

/// `tapwire token create --db URL ...` (offline, on the database): the token.
fn make_token(tapwire: &Path, db: &str, name: &str, role: &str) -> Result<String> {
    let out = sys::run(Command::new(tapwire).args([
        "token", "create", "--db", db, "--name", name, "--role", role, "--json",
    ]))?;
    let v: Value = serde_json::from_str(&out).context("token create's answer")?;
    v["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow!("token create printed no token: {out}"))
}

/// The fleet as the first collector that answers sees it (`GET /api/v1/fleet` on its
/// loopback API).
pub fn fleet(plan: &Plan) -> Result<Fleet> {
    let mut last = anyhow!("no collector");
    for c in &COLLECTORS {
        let out = sys::run(
            Command::new("ip")
                .args(["netns", "exec", &plan.ns(c.name)])
                .args([
                    "curl",
                    "-sSf",
                    "--max-time",
                    "2",
                    &format!("http://{API}/api/v1/fleet"),
                ]),
        );
        match out.and_then(|o| serde_json::from_str::<Fleet>(&o).context("the fleet's answer")) {
            Ok(f) => return Ok(f),
            Err(e) => last = e.context(format!("{}'s API", c.name)),
        }
    }
    Err(last)
}

/// Session name -> owner, live collectors only.
pub fn owners(f: &Fleet) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = f
        .collectors
        .iter()
        .filter(|c| c.state == CollectorState::Live)
        .flat_map(|c| c.sessions.iter().map(|s| (s.clone(), c.name.clone())))
        .collect();
    v.sort();
    v
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fleet part of `up`: PostgreSQL, the collectors, the admin and probe tokens, the
/// sessions (auto) and flows, the probes.
pub fn build(
    plan: &Plan,
    tapwire: &Path,
    probe: &Path,
    k: &mut Keeper,
    t0: Instant,
    pg: (PathBuf, (u32, u32)),
) -> Result<()> {
    let step = |what: &str| {
        say!("[{:5.1} s] {what}", t0.elapsed().as_secs_f64());
    };
    let db = start_db(plan, k, &pg.0, pg.1)?;
    step(&format!(
        "PostgreSQL in {} on its socket in {}",
        plan.ns("db"),
        plan.state_dir().join("pg").display()
    ));
    let admin = make_token(tapwire, &db, "lab-admin", "admin")?;
    write_secret(&plan.state_dir().join("admin-token"), &admin)?;
    for c in &COLLECTORS {
        start_collector(plan, k, tapwire, c, &db)?;
    }
    let live = wait_for(Duration::from_secs(20), || {
        let f = fleet(plan).ok()?;
        let n = f
            .collectors
            .iter()
            .filter(|c| c.state == CollectorState::Live)
            .count();
        (n == COLLECTORS.len()).then_some(())
    });
    if live.is_none() {
        bail!(
            "the collectors did not all join the fleet within 20 s: {}",
            fleet(plan).map_or_else(|e| format!("{e:#}"), |f| format!("{:?}", owners(&f)))
        );
    }
    step(&format!(
        "collectors {} on PostgreSQL, APIs {}",
        COLLECTORS.map(|c| c.name).join(", "),
        plan.fleet_controllers()
    ));
    let first = &COLLECTORS[0];
    for s in plan.sessions() {
        cli(plan, tapwire, first, &Plan::fleet_session_args(s), &admin)?;
    }
    let n = plan.sessions().len();
    let placed = wait_for(Duration::from_secs(10), || {
        let o = owners(&fleet(plan).ok()?);
        (o.len() == n).then_some(o)
    })
    .ok_or_else(|| anyhow!("the fleet did not place all {n} sessions within 10 s"))?;
    step(&format!(
        "{n} auto sessions placed: {}",
        placed
            .iter()
            .map(|(s, c)| format!("{s}→{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for s in plan.sessions() {
        if let Sender::Probe(f) = s.sender {
            cli(plan, tapwire, first, &Plan::fleet_flow_args(s, &f), &admin)?;
        }
    }
    let state = plan.state_dir();
    for host in ["host1", "host2"] {
        let token = make_token(tapwire, &db, host, "probe")?;
        sys::spawn(
            k,
            &state,
            &plan.ns(host),
            &format!("probe-{host}"),
            &plan.fleet_probe_argv(probe, host, &token),
            Output::Log(state.join(format!("logs/probe-{host}.log"))),
        )?;
    }
    step(&format!(
        "probes on host1 ({} flows) and host2 ({} flows), flows from {}",
        plan.flows("host1").len(),
        plan.flows("host2").len(),
        plan.fleet_controllers()
    ));
    Ok(())
}

/// One session's state on the collector that owns it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed {
    pub session: String,
    pub owner: Option<String>,
    pub state: Option<SessionState>,
    pub packets: u64,
    pub bytes: u64,
    pub written: u64,
    pub lost: u64,
    /// The file it writes now.
    pub file: Option<String>,
}

/// Every session of the plan: its owner (from the fleet) and its state there.
pub fn sessions(plan: &Plan, tapwire: &Path) -> Result<Vec<Placed>> {
    let f = fleet(plan)?;
    let owners = owners(&f);
    let mut snaps = std::collections::BTreeMap::new();
    Ok(plan
        .sessions()
        .iter()
        .map(|s| {
            let owner = owners
                .iter()
                .find(|(n, _)| n == s.name)
                .map(|(_, c)| c.clone());
            let live = owner.as_ref().and_then(|o| {
                let snap = snaps
                    .entry(o.clone())
                    .or_insert_with(|| status::snapshot_in(&plan.ns(o), tapwire).ok());
                snap.as_ref()?
                    .sessions
                    .iter()
                    .find(|x| x.name == s.name)
                    .cloned()
            });
            Placed {
                session: s.name.to_string(),
                owner,
                state: live.as_ref().map(|l| l.state),
                packets: live.as_ref().map_or(0, |l| l.packets),
                bytes: live.as_ref().map_or(0, |l| l.bytes),
                written: live.as_ref().map_or(0, |l| l.written),
                lost: live.as_ref().map_or(0, |l| l.lost),
                file: live
                    .as_ref()
                    .and_then(|l| l.files.as_ref())
                    .and_then(|f| f.current.clone()),
            }
        })
        .collect())
}

fn load_fleet(name: &str) -> Result<(Info, Plan)> {
    let info = Info::load(name)
        .ok_or_else(|| anyhow!("lab {name:?} is not up ({} lab up --fleet)", invoked_as()))?;
    let plan = info.plan();
    if !plan.fleet {
        return Err(Refused(format!(
            "lab {name:?} is not a fleet ({} lab up --fleet)",
            invoked_as()
        ))
        .into());
    }
    Ok((info, plan))
}

fn collector_arg(name: &str) -> Result<&'static FleetCollector> {
    fleet_collector(name).ok_or_else(|| {
        Refused(format!(
            "no collector {name:?} in the fleet lab: {}",
            COLLECTORS.map(|c| c.name).join(", ")
        ))
        .into()
    })
}

/// `tapwire lab fail COLLECTOR`: SIGKILL to the collector, then where its sessions go.
pub fn fail(name: &str, collector: &str) -> Result<ExitCode> {
    let (_, plan) = load_fleet(name)?;
    let c = collector_arg(collector)?;
    let rec = sys::records(&plan.state_dir())
        .into_iter()
        .rfind(|r| r.name == record_name(c) && r.alive())
        .ok_or_else(|| {
            Refused(format!(
                "collector {} is not running ({} lab revive {})",
                c.name,
                invoked_as(),
                c.name
            ))
        })?;
    let before = fleet(&plan).map(|f| owners(&f)).unwrap_or_default();
    let its: Vec<String> = before
        .iter()
        .filter(|(_, o)| o == c.name)
        .map(|(s, _)| s.clone())
        .collect();
    let t0 = Instant::now();
    sys::kill_group(rec.pid, "KILL");
    say!(
        "killed collector {} (pid {}) with SIGKILL; its sessions ({}) move when its lease of {LEASE_S} s runs out",
        c.name,
        rec.pid,
        if its.is_empty() {
            "none".to_string()
        } else {
            its.join(", ")
        }
    );
    let mut left = its.clone();
    let moved = wait_for(Duration::from_secs(LEASE_S * 3), || {
        let now = owners(&fleet(&plan).ok()?);
        left.retain(|s| match now.iter().find(|(n, _)| n == s) {
            Some((_, o)) if o != c.name => {
                say!("[{:5.1} s] {s} → {o}", t0.elapsed().as_secs_f64());
                false
            }
            _ => true,
        });
        left.is_empty().then_some(())
    });
    if moved.is_none() {
        bail!("not moved after {} s: {}", LEASE_S * 3, left.join(", "));
    }
    say!(
        "`{} lab status --name {name}` shows the fleet; `{} lab revive {} --name {name}` starts it again",
        invoked_as(),
        invoked_as(),
        c.name
    );
    Ok(ExitCode::SUCCESS)
}

/// `tapwire lab revive COLLECTOR`: starts a killed collector again (under a keeper of its
/// own); the sessions that moved stay where they are.
pub fn revive(name: &str, collector: &str) -> Result<ExitCode> {
    let (info, plan) = load_fleet(name)?;
    let c = collector_arg(collector)?;
    let state = plan.state_dir();
    if sys::records(&state)
        .iter()
        .any(|r| r.name == record_name(c) && r.alive())
    {
        return Err(Refused(format!("collector {} is running", c.name)).into());
    }
    let db = std::fs::read_to_string(state.join("db-url")).context("the lab's database URL")?;
    let mut k = Keeper::start(
        &info.tapwire,
        &plan.ns("db"),
        &state.join("logs/keeper.log"),
    )?;
    sys::record(&state, k.pid(), &plan.ns("db"), keeper::NAME)?;
    let started = start_collector(&plan, &mut k, &info.tapwire, c, db.trim());
    k.finish();
    started?;
    let t0 = Instant::now();
    let live = wait_for(Duration::from_secs(15), || {
        let f = fleet(&plan).ok()?;
        f.collectors
            .iter()
            .find(|m| m.name == c.name && m.state == CollectorState::Live)
            .map(|m| m.sessions.clone())
    })
    .ok_or_else(|| anyhow!("collector {} did not rejoin the fleet within 15 s", c.name))?;
    say!(
        "[{:5.1} s] collector {} is live again with {} sessions{}",
        t0.elapsed().as_secs_f64(),
        c.name,
        live.len(),
        if live.is_empty() {
            ": the ones that moved stay where they are (no flapping); new auto sessions may land on it"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The first collector whose process runs (for `top --fleet`).
pub fn running(plan: &Plan) -> Option<&'static FleetCollector> {
    let recs = sys::records(&plan.state_dir());
    COLLECTORS
        .iter()
        .find(|c| recs.iter().any(|r| r.name == record_name(c) && r.alive()))
}

/// `tapwire top --fleet` in a running collector's namespace with the lab's admin token.
pub fn ui(plan: &Plan, tapwire: &Path) -> Result<()> {
    let c = running(plan).ok_or_else(|| anyhow!("no collector of the fleet runs"))?;
    let token = std::fs::read_to_string(plan.state_dir().join("admin-token"))
        .context("the lab's admin token")?;
    let status = Command::new("ip")
        .args(["netns", "exec", &plan.ns(c.name)])
        .arg(tapwire)
        .args(["top", "--fleet", "--connect", API])
        .env("TAPWIRE_API_TOKEN", token.trim())
        .status()
        .context("run tapwire top --fleet")?;
    if !status.success() && plan.state_dir().exists() {
        bail!("tapwire top ended with {status}");
    }
    Ok(())
}

fn tail(path: &Path) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(2000)..]).into_owned()
}
