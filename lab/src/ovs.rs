//! host3: Open vSwitch's userspace datapath as a foreign ERSPAN sender beside tapwire's probes.
//!
//! ovsdb-server and ovs-vswitchd run inside host3's namespace with their own run directory and
//! database under the lab's state (a system Open vSwitch is never touched), both bridges with
//! `datapath_type=netdev`. `br-int` holds the VMs' ports; a mirror with `select_all` outputs
//! to the ERSPAN II port `erspan0` (session id = `options:key`), whose underlay is `br-tun`:
//! its address is host3's on the mirror network and its one port `up0` the uplink. As the
//! project's OVS tests found: OVS cannot send to its own address, needs the collector's
//! neighbour entry primed (`tnl/neigh/set`) and an underlay MTU above the mirrored frames.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::keeper::Keeper;
use crate::plan::{COLLECTOR_IP, COLLECTOR_MAC, Plan, UNDERLAY_MTU, host_named};
use crate::sys::{self, Output};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const TOOLS: [&str; 5] = [
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
];

/// Whether Open vSwitch is installed (the lab then has host3).
pub fn installed() -> bool {
    TOOLS.iter().all(|t| sys::have(t)) && Path::new(SCHEMA).exists()
}

/// Starts OVS on host3 and sets up its bridges and the mirror of session `key`.
pub fn start(plan: &Plan, key: u16, keeper: &mut Keeper) -> Result<()> {
    let ns = plan.ns("host3");
    let state = plan.state_dir();
    let dir = state.join("ovs");
    std::fs::create_dir_all(&dir).context("create the OVS run directory")?;
    let d = dir.display().to_string();
    sys::run(Command::new("ovsdb-tool").args(["create", &format!("{d}/conf.db"), SCHEMA]))?;
    let env: Vec<String> = vec![
        "env".into(),
        format!("OVS_RUNDIR={d}"),
        format!("OVS_LOGDIR={d}"),
        format!("OVS_DBDIR={d}"),
    ];
    let with_env = |rest: &[String]| env.iter().chain(rest).cloned().collect::<Vec<_>>();
    sys::spawn(
        keeper,
        &state,
        &ns,
        "ovsdb-server",
        &with_env(&[
            "ovsdb-server".into(),
            format!("{d}/conf.db"),
            format!("--remote=punix:{d}/db.sock"),
            format!("--unixctl={d}/ovsdb-server.ctl"),
            format!("--log-file={d}/ovsdb-server.log"),
        ]),
        Output::Log(state.join("logs/ovsdb-server.log")),
    )?;
    wait(Duration::from_secs(10), "ovsdb-server's socket", || {
        dir.join("db.sock").exists()
    })?;
    let vs = Vsctl { dir: dir.clone() };
    vs.run(&["--no-wait", "init"])?;
    sys::spawn(
        keeper,
        &state,
        &ns,
        "ovs-vswitchd",
        &with_env(&[
            "ovs-vswitchd".into(),
            format!("unix:{d}/db.sock"),
            format!("--unixctl={d}/ovs-vswitchd.ctl"),
            format!("--log-file={d}/ovs-vswitchd.log"),
        ]),
        Output::Log(state.join("logs/ovs-vswitchd.log")),
    )?;
    for br in ["br-tun", "br-int"] {
        vs.run(&[
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
        ])?;
    }
    vs.run(&["add-port", "br-tun", "up0"])?;
    for v in plan.vms().filter(|v| v.host == "host3") {
        vs.run(&["add-port", "br-int", v.port])?;
    }
    // br-tun is a TAP made by ovs-vswitchd: the tunnel endpoint's address lives there, so
    // OVS's routes (read from the namespace) send tunnels out of up0.
    let h = host_named("host3");
    sys::ns_script(
        &ns,
        &format!(
            "ip link set br-tun mtu {UNDERLAY_MTU} up\nip addr add {}/24 dev br-tun\n",
            h.underlay_ip
        ),
    )?;
    vs.run(&[
        "set",
        "interface",
        "up0",
        &format!("mtu_request={UNDERLAY_MTU}"),
    ])?;
    vs.appctl(&["tnl/neigh/set", "br-tun", COLLECTOR_IP, COLLECTOR_MAC])?;
    wait(
        Duration::from_secs(10),
        "OVS's route to the collector",
        || {
            vs.appctl(&["ovs/route/show"])
                .is_ok_and(|r| r.contains("10.99.0.0/24"))
        },
    )?;
    vs.run(&[
        "add-port",
        "br-int",
        "erspan0",
        "--",
        "set",
        "interface",
        "erspan0",
        "type=erspan",
        &format!("options:remote_ip={COLLECTOR_IP}"),
        &format!("options:key={key}"),
        "options:erspan_ver=1",
        "options:erspan_idx=0x1",
        "--",
        "--id=@out",
        "get",
        "port",
        "erspan0",
        "--",
        "--id=@m",
        "create",
        "mirror",
        "name=to-tapwire",
        "select_all=true",
        "output-port=@out",
        "--",
        "add",
        "bridge",
        "br-int",
        "mirrors",
        "@m",
    ])?;
    Ok(())
}

struct Vsctl {
    dir: PathBuf,
}

impl Vsctl {
    fn run(&self, args: &[&str]) -> Result<String> {
        sys::run(
            Command::new("ovs-vsctl")
                .arg(format!("--db=unix:{}/db.sock", self.dir.display()))
                .arg("--timeout=20")
                .args(args),
        )
        .with_context(|| {
            format!(
                "Open vSwitch on host3 (log: {})",
                self.dir.join("ovs-vswitchd.log").display()
            )
        })
    }

    fn appctl(&self, args: &[&str]) -> Result<String> {
        sys::run(
            Command::new("ovs-appctl")
                .arg("-t")
                .arg(self.dir.join("ovs-vswitchd.ctl"))
                .args(args),
        )
    }
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() >= deadline {
            bail!("{what} did not come up within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
