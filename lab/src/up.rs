//! `tapwire lab up`: carry the plan out, wait until every session receives, show the UI.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use tapwire_api_types::{SessionState, Snapshot};

use crate::keeper::{self, Keeper};
use crate::plan::{self, API, Plan, Sender};
use crate::record::{self, Info, invoked_as};
use crate::sys::{self, Output};
use crate::{Refused, UpOptions, down, fleet, ovs, status};

/// `println!` for progress: a reader that went away (`| head`) must not stop `up` half-way,
/// so what cannot be shown is dropped and the lab is built.
macro_rules! say {
    ($($arg:tt)*) => {
        let _ = tapwire_netio::stdout::try_line(format_args!($($arg)*));
    };
}

/// Tools the lab runs, with the Debian package that has each (scripts/setup.sh installs them).
const TOOLS: [(&str, &str); 11] = [
    ("ip", "iproute2"),
    ("setsid", "util-linux"),
    ("sysctl", "procps"),
    ("kill", "procps"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("python3", "python3"),
    ("curl", "curl"),
    ("tcpdump", "tcpdump"),
    ("sh", "dash"),
];

pub fn up(a: &UpOptions) -> Result<ExitCode> {
    let t0 = Instant::now();
    let name = &a.name;
    if !sys::is_root() {
        return Err(Refused("the lab makes network namespaces: run it as root".into()).into());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !sys::have(t))
        .map(|(t, p)| format!("{t} ({p})"))
        .collect();
    if !missing.is_empty() {
        return Err(Refused(format!(
            "missing {}: scripts/setup.sh installs them",
            missing.join(", ")
        ))
        .into());
    }
    let pg = if a.fleet {
        Some(fleet::preflight()?)
    } else {
        None
    };
    let tapwire = std::env::current_exe().context("find the tapwire binary")?;
    let probe = probe_binary(a.probe.as_deref(), &tapwire)?;
    let ovs = !a.fleet && !a.no_ovs && ovs::installed();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("captures").join(name));
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let out = std::path::absolute(&out).context("absolute path of the captures directory")?;
    let plan = if a.fleet {
        Plan::new_fleet(name, out)
    } else {
        Plan::new(name, out, ovs)
    }
    .map_err(Refused)?;
    let state = plan.state_dir();
    let lab = format!("{} lab", invoked_as());
    let left = sys::namespaces(&plan.prefix());
    if state.exists() || !left.is_empty() {
        return Err(Refused(format!(
            "lab {name:?} is already up or was left behind ({}): `{lab} status --name {name}` shows it, `{lab} down --name {name}` removes it",
            if left.is_empty() {
                state.display().to_string()
            } else {
                left.join(", ")
            }
        ))
        .into());
    }
    if !ovs && !a.no_ovs && !a.fleet {
        say!(
            "Open vSwitch is not installed: no host3 (apt-get install openvswitch-switch adds it)"
        );
    }
    std::fs::create_dir_all(state.join("logs"))
        .with_context(|| format!("create {}", state.display()))?;
    let info = Info {
        name: name.clone(),
        out: plan.out.clone(),
        ovs,
        fleet: a.fleet,
        tapwire: tapwire.clone(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    std::fs::write(state.join("lab.json"), serde_json::to_string_pretty(&info)?)
        .context("write the lab's state")?;

    let mut keeper = None;
    let built = build(&plan, &tapwire, &probe, t0, &mut keeper, pg);
    if let Some(k) = keeper {
        k.finish();
    }
    if let Err(e) = built {
        eprintln!("tapwire lab: up failed: {e:#}\ntapwire lab: removing what was made");
        if let Err(d) = down::down(name) {
            eprintln!("tapwire lab: {d:#}");
        }
        return Err(e);
    }
    let ready = wait_receiving(&plan, &tapwire, Duration::from_secs(a.wait), t0);
    say!("");
    summary(&plan);
    let ok = match ready {
        Ok(()) => true,
        Err(e) => {
            eprintln!("tapwire lab: {e:#}");
            eprintln!(
                "tapwire lab: the lab stays up: `{} lab status --name {name}` shows what is missing, logs are in {}",
                invoked_as(),
                state.join("logs").display()
            );
            false
        }
    };
    if a.detach || !std::io::stdout().is_terminal() {
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    ui(&plan, &tapwire)?;
    if !state.exists() {
        say!("The lab was taken down.");
        return Ok(ExitCode::SUCCESS);
    }
    let lab = format!("{} lab", invoked_as());
    let named = if name == plan::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    };
    say!(
        "The lab is still up: `{lab} top{named}` shows it again, `{lab} status{named}` counts, `{lab} down{named}` removes it."
    );
    Ok(ExitCode::SUCCESS)
}

/// `tapwire lab top`.
pub fn top(name: &str) -> Result<ExitCode> {
    let info = Info::load(name)
        .ok_or_else(|| anyhow!("lab {name:?} is not up ({} lab up)", invoked_as()))?;
    ui(&info.plan(), &info.tapwire)?;
    Ok(ExitCode::SUCCESS)
}

/// `tapwire top` inside the collector's namespace (with a fleet: `top --fleet`), on this
/// terminal.
fn ui(plan: &Plan, tapwire: &Path) -> Result<()> {
    if plan.fleet {
        return fleet::ui(plan, tapwire);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &plan.ns("col")])
        .arg(tapwire)
        .args(["top", "--connect", API])
        .status()
        .context("run tapwire top in the collector's namespace")?;
    // `lab down` from another terminal ends it with the rest of the lab.
    if !status.success() && plan.state_dir().exists() {
        bail!("tapwire top ended with {status}");
    }
    Ok(())
}

fn probe_binary(given: Option<&Path>, tapwire: &Path) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let beside = tapwire.with_file_name("tapwire-probe");
    if beside.exists() {
        return Ok(beside);
    }
    if sys::have("tapwire-probe") {
        return Ok(PathBuf::from("tapwire-probe"));
    }
    Err(Refused(format!(
        "tapwire-probe is neither beside {} nor on the PATH: build it (cargo build --release) or give --probe",
        tapwire.display()
    ))
    .into())
}

fn step(t0: Instant, what: &str) {
    say!("[{:5.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// Namespaces, links, addresses, the keeper, OVS, collector, IDS, probes, traffic; with a
/// fleet, PostgreSQL and the collectors, sessions and flows on it instead.
fn build(
    plan: &Plan,
    tapwire: &Path,
    probe: &Path,
    t0: Instant,
    keeper: &mut Option<Keeper>,
    pg: Option<(PathBuf, (u32, u32))>,
) -> Result<()> {
    let state = plan.state_dir();
    let logs = state.join("logs");
    let roles = plan.roles();
    sys::ip_batch(
        &roles
            .iter()
            .map(|r| format!("netns add {}", plan.ns(r)))
            .collect::<Vec<_>>(),
    )
    .context("make the namespaces")?;
    sys::ip_batch(&plan.link_batch()).context("make the links")?;
    for r in &roles {
        sys::ns_script(&plan.ns(r), &plan.setup_script(r))?;
    }
    step(
        t0,
        &format!(
            "{} namespaces tw-{}-*, {} veth pairs, 3 bridges",
            roles.len(),
            plan.name,
            plan.links().len()
        ),
    );
    let home = plan.ns(if plan.fleet { "db" } else { "col" });
    let k = keeper.insert(Keeper::start(tapwire, &home, &logs.join("keeper.log"))?);
    sys::record(&state, k.pid(), &home, keeper::NAME)?;
    match pg {
        Some(pg) => fleet::build(plan, tapwire, probe, k, t0, pg)?,
        None => single(plan, tapwire, probe, t0, k)?,
    }
    traffic(plan, t0, k)
}

/// OVS, the collector, IDS and probes of the lab of one collector.
fn single(plan: &Plan, tapwire: &Path, probe: &Path, t0: Instant, k: &mut Keeper) -> Result<()> {
    let state = plan.state_dir();
    let logs = state.join("logs");
    let col = plan.ns("col");

    if plan.ovs {
        let key = plan
            .sessions()
            .iter()
            .find(|s| s.sender == Sender::Ovs)
            .map(|s| s.id)
            .unwrap_or(0);
        ovs::start(plan, key, k)?;
        step(
            t0,
            &format!("host3: Open vSwitch mirrors br-int to ERSPAN II session {key}"),
        );
    }

    let config = state.join("collector.toml");
    std::fs::write(&config, plan.collector_toml()).context("write collector.toml")?;
    sys::spawn(
        k,
        &state,
        &col,
        "collector",
        &[
            tapwire.display().to_string(),
            "collect".into(),
            "--config".into(),
            config.display().to_string(),
            "--no-tui".into(),
            "--log-file".into(),
            logs.join("collector.log").display().to_string(),
            "--api".into(),
            API.into(),
            "--gre-v6".into(),
            "off".into(),
            "--vxlan".into(),
            "off".into(),
            "--geneve".into(),
            "off".into(),
            "--tzsp".into(),
            "off".into(),
        ],
        Output::Log(logs.join("collector.err")),
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while status::snapshot(plan, tapwire).is_err() {
        if Instant::now() >= deadline {
            bail!(
                "the collector's API did not answer within 15 s; its log:\n{}{}",
                tail(&logs.join("collector.log")),
                tail(&logs.join("collector.err"))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    step(
        t0,
        &format!(
            "collector in {col}: {} sessions, API {API}, files in {}",
            plan.sessions().len(),
            plan.out.display()
        ),
    );

    // The collector made the monitoring VM's NIC before its API answered.
    let ids = plan.ids();
    sys::spawn(
        k,
        &state,
        &plan.ns(ids.role),
        ids.name,
        &ids.argv,
        Output::Split(logs.join("ids.log"), logs.join("ids.err")),
    )?;

    for host in ["host1", "host2"] {
        let file = state.join(format!("probe-{host}.toml"));
        std::fs::write(&file, plan.probe_toml(host))
            .with_context(|| format!("write {}", file.display()))?;
        sys::spawn(
            k,
            &state,
            &plan.ns(host),
            &format!("probe-{host}"),
            &[
                probe.display().to_string(),
                "--config".into(),
                file.display().to_string(),
            ],
            Output::Log(logs.join(format!("probe-{host}.log"))),
        )?;
    }
    step(
        t0,
        &format!(
            "probes on host1 ({} flows) and host2 ({} flows)",
            plan.flows("host1").len(),
            plan.flows("host2").len()
        ),
    );
    Ok(())
}

/// The steady traffic between the VMs.
fn traffic(plan: &Plan, t0: Instant, k: &mut Keeper) -> Result<()> {
    let state = plan.state_dir();
    let logs = state.join("logs");
    let www = state.join("www");
    std::fs::create_dir_all(&www).context("create the web root")?;
    std::fs::write(
        www.join("index.html"),
        "<html><body>tapwire lab: vm2's web server</body></html>\n",
    )
    .context("write the web root")?;
    let traffic = plan.traffic(&www);
    for t in &traffic {
        sys::spawn(
            k,
            &state,
            &plan.ns(t.role),
            t.name,
            &t.argv,
            Output::Log(logs.join(format!("{}.log", t.name))),
        )?;
    }
    step(
        t0,
        &format!(
            "traffic: {} generators (ping, iperf3 at 1 Mbit/s, HTTP, broadcast, multicast)",
            traffic.len()
        ),
    );
    Ok(())
}

/// Polls the API until every session of the plan is receiving.
fn wait_receiving(plan: &Plan, tapwire: &Path, timeout: Duration, t0: Instant) -> Result<()> {
    let names: Vec<&str> = plan.sessions().iter().map(|s| s.name).collect();
    let deadline = Instant::now() + timeout;
    let mut shown = usize::MAX;
    loop {
        let waiting: Vec<&str> = if plan.fleet {
            match fleet::sessions(plan, tapwire) {
                Ok(placed) => names
                    .iter()
                    .filter(|n| {
                        !placed
                            .iter()
                            .any(|p| p.session == **n && p.state == Some(SessionState::Receiving))
                    })
                    .copied()
                    .collect(),
                Err(_) => names.clone(),
            }
        } else {
            match status::snapshot(plan, tapwire) {
                Ok(snap) => not_receiving(&snap, &names),
                Err(_) => names.clone(),
            }
        };
        if waiting.is_empty() {
            step(t0, &format!("all {} sessions receiving", names.len()));
            return Ok(());
        }
        if waiting.len() != shown {
            shown = waiting.len();
            step(
                t0,
                &format!(
                    "sessions receiving: {} of {} (waiting for {})",
                    names.len() - waiting.len(),
                    names.len(),
                    waiting.join(", ")
                ),
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "not receiving after {} s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sessions of `names` that are not receiving in `snap`.
pub fn not_receiving<'a>(snap: &Snapshot, names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| {
            !snap
                .sessions
                .iter()
                .any(|s| s.name == **n && s.state == SessionState::Receiving)
        })
        .copied()
        .collect()
}

/// What each session shows and where to look.
fn summary(plan: &Plan) {
    say!("{:<12} {:<52} SENDER", "SESSION", "WORKFLOW");
    for s in plan.sessions() {
        say!("{:<12} {:<52} {}", s.name, s.workflow, record::sender(s));
    }
    say!("");
    if plan.fleet {
        say!("captures   {}/<collector>/", plan.out.display());
        say!(
            "failover   {} lab fail col1   (SIGKILL; its sessions move within the {} s lease), then {} lab revive col1",
            invoked_as(),
            fleet::LEASE_S,
            invoked_as()
        );
        say!("logs       {}", plan.state_dir().join("logs").display());
        return;
    }
    say!("captures   {}", plan.out.display());
    say!(
        "monitor    ip netns exec {} tcpdump -i {} -nn   (IDS stand-in: {})",
        plan.ns("mon"),
        plan::MONITOR_TAP,
        plan.state_dir().join("logs/ids.log").display()
    );
    say!("logs       {}", plan.state_dir().join("logs").display());
}

fn tail(path: &Path) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(2000)..]).into_owned()
}
