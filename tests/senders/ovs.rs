//! Open vSwitch's userspace datapath as a real ERSPAN / GRE sender.
//!
//! ```text
//!  h1 eth0 ── p1 ┐                     ┌ up0 ── col0  (col: 10.77.0.2, fd77::2)
//!  h2 eth0 ── p2 ┤ br-mir ─(mirrors)─▶ tunnel ports ─▶ br-tun (10.77.0.1, fd77::1)
//!  h3 eth0 ── p3 ┘     (netdev datapath, namespace "ovs")
//! ```
//!
//! ovsdb-server and ovs-vswitchd run in the foreground inside the lab's `ovs` namespace with
//! their own run directory and database (nothing touches a system OVS), `datapath_type=netdev`.
//! Hosts `h1..hN` (192.168.50.N/24, static neighbours, IPv6 off, so the only traffic is what a
//! test makes) hang off `br-mir`; mirrors select their ports and output to tunnel ports of type
//! `erspan`, `ip6erspan` or `gre` whose underlay is `br-tun`, whose one physical port `up0` is a
//! veth to the collector's namespace. MTU 9000 on the underlay, offloads off on every veth, the
//! collector's neighbour entry primed with `tnl/neigh/set`. Teardown is the [`Lab`]'s: every
//! process in the namespaces is killed and the namespaces deleted, also on panic.
//!
//! What OVS 3.1's userspace datapath emits (measured; see tests/senders/OVS.md,
//! asserted by tests/collect_ovs.rs): type=gre sets only K (no sequence unless `options:seq=true`, which gives
//! that port type a counter of its own; with `options:csum=true` as well, the checksum is
//! computed before the sequence number is written, so it verifies only on packet 0); type=erspan sets only S (never K), with ONE sequence
//! counter shared by all `erspan` ports (Type II and III) and another shared by all `ip6erspan`
//! ports; the session id is `options:key`; Type III carries `gra=0` with a wall-clock timestamp
//! in 100 µs units (mod 2^32), no platform sub-header, `hw`=`erspan_hwid`, `D`=`erspan_dir`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::{COL_MAC, COL_V4, COL_V6, Lab, Proc, wait_until};
use crate::{require, run_ok};

/// The tunnel endpoint on the OVS side.
pub const OVS_V4: &str = "10.77.0.1";
pub const OVS_V6: &str = "fd77::1";

/// The mirror output port of one mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// `type=erspan erspan_ver=1` (or `ip6erspan` when `v6`).
    ErspanII { key: u32, index: u32, v6: bool },
    /// `type=erspan erspan_ver=2` (or `ip6erspan`); `egress` sets `erspan_dir=1`.
    ErspanIII {
        key: u32,
        hwid: u8,
        egress: bool,
        v6: bool,
    },
    /// `type=gre` carrying Ethernet (GRE-TEB), with `options:seq=true` when `seq` and
    /// `options:csum=true` when `csum`.
    Gre { key: u32, seq: bool, csum: bool },
    /// `type=vxlan`, VNI `options:key`, over IPv6 when `v6`.
    Vxlan { vni: u32, v6: bool },
    /// `type=geneve`, VNI `options:key`, over IPv6 when `v6`.
    Geneve { vni: u32, v6: bool },
}

impl Tunnel {
    /// (kind, id) as tapwire keys the source this port becomes.
    pub fn kind_id(&self) -> (&'static str, u64) {
        match *self {
            Tunnel::ErspanII { key, .. } => ("erspan-ii", u64::from(key)),
            Tunnel::ErspanIII { key, .. } => ("erspan-iii", u64::from(key)),
            Tunnel::Gre { key, .. } => ("gre", u64::from(key)),
            Tunnel::Vxlan { vni, .. } => ("vxlan", u64::from(vni)),
            Tunnel::Geneve { vni, .. } => ("geneve", u64::from(vni)),
        }
    }

    /// The outer source address the collector sees.
    pub fn src(&self) -> &'static str {
        match *self {
            Tunnel::ErspanII { v6: true, .. }
            | Tunnel::ErspanIII { v6: true, .. }
            | Tunnel::Vxlan { v6: true, .. }
            | Tunnel::Geneve { v6: true, .. } => OVS_V6,
            _ => OVS_V4,
        }
    }

    fn interface_options(&self) -> Vec<String> {
        let remote = |v6: bool| format!("options:remote_ip={}", if v6 { COL_V6 } else { COL_V4 });
        match *self {
            Tunnel::ErspanII { key, index, v6 } => vec![
                format!("type={}", if v6 { "ip6erspan" } else { "erspan" }),
                remote(v6),
                format!("options:key={key}"),
                "options:erspan_ver=1".into(),
                format!("options:erspan_idx={index:#x}"),
            ],
            Tunnel::ErspanIII {
                key,
                hwid,
                egress,
                v6,
            } => vec![
                format!("type={}", if v6 { "ip6erspan" } else { "erspan" }),
                remote(v6),
                format!("options:key={key}"),
                "options:erspan_ver=2".into(),
                format!("options:erspan_dir={}", u8::from(egress)),
                format!("options:erspan_hwid={hwid}"),
            ],
            Tunnel::Gre { key, seq, csum } => {
                let mut v = vec![
                    "type=gre".into(),
                    remote(false),
                    format!("options:key={key}"),
                ];
                if seq {
                    v.push("options:seq=true".into());
                }
                if csum {
                    v.push("options:csum=true".into());
                }
                v
            }
            Tunnel::Vxlan { vni, v6 } => vec![
                "type=vxlan".into(),
                remote(v6),
                format!("options:key={vni}"),
            ],
            Tunnel::Geneve { vni, v6 } => vec![
                "type=geneve".into(),
                remote(v6),
                format!("options:key={vni}"),
            ],
        }
    }
}

/// A running OVS userspace switch with `n_hosts` hosts and a collector namespace `col`.
pub struct Ovs {
    pub lab: Lab,
    dir: PathBuf,
    n_hosts: usize,
    // Field order: the daemons are killed before the lab removes the namespaces.
    _vswitchd: Proc,
    _ovsdb: Proc,
}

impl Ovs {
    /// Builds the topology above and starts OVS; panics (with OVS's log) if it does not come up.
    pub fn start(tag: &str, n_hosts: usize) -> Ovs {
        for tool in [
            "ovsdb-tool",
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-appctl",
        ] {
            require(tool);
        }
        let mut lab = Lab::empty(tag);
        let ovs = lab.add_ns("ovs");
        let col = lab.add_ns("col");
        // No IPv6 on the switch's ports or the hosts: nothing but the test's traffic is mirrored.
        lab.exec_ok(
            &ovs,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        for i in 1..=n_hosts {
            let h = lab.add_ns(&format!("h{i}"));
            for conf in ["all", "default"] {
                lab.exec_ok(
                    &h,
                    &[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{conf}.disable_ipv6=1"),
                    ],
                );
            }
            lab.veth(&h, "eth0", &host_mac(i), &ovs, &format!("p{i}"), "");
            lab.addr(&h, "eth0", &format!("{}/24", host_ip(i)));
        }
        lab.veth(&ovs, "up0", "", &col, "col0", COL_MAC);
        lab.addr(&col, "col0", &format!("{COL_V4}/24"));
        lab.addr(&col, "col0", &format!("{COL_V6}/64"));
        lab.exec_ok(&col, &["ip", "link", "set", "col0", "mtu", "9000"]);
        lab.exec_ok(&ovs, &["ip", "link", "set", "up0", "mtu", "9000"]);
        // Hosts keep MTU 1500: a 1514-byte frame plus ERSPAN fits the 9000-byte underlay.
        for i in 1..=n_hosts {
            let h = lab.ns(&format!("h{i}")).to_string();
            for j in (1..=n_hosts).filter(|j| *j != i) {
                lab.exec_ok(
                    &h,
                    &[
                        "ip",
                        "neigh",
                        "replace",
                        &host_ip(j),
                        "lladdr",
                        &host_mac(j),
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ],
                );
            }
        }

        let dir = lab.dir().join("ovs");
        std::fs::create_dir_all(&dir).expect("OVS run dir");
        let d = dir.to_str().expect("utf-8").to_string();
        run_ok(Command::new("ovsdb-tool").args([
            "create",
            &format!("{d}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ]));
        let env = [
            "env".to_string(),
            format!("OVS_RUNDIR={d}"),
            format!("OVS_LOGDIR={d}"),
            format!("OVS_DBDIR={d}"),
        ];
        let ovsdb_cmd: Vec<String> = env
            .iter()
            .cloned()
            .chain([
                "ovsdb-server".into(),
                format!("{d}/conf.db"),
                format!("--remote=punix:{d}/db.sock"),
                format!("--unixctl={d}/ovsdb-server.ctl"),
                format!("--log-file={d}/ovsdb-server.log"),
            ])
            .collect();
        let ovsdb = lab.spawn(&ovs, &as_strs(&ovsdb_cmd));
        let sock = dir.join("db.sock");
        wait_until(Duration::from_secs(10), "ovsdb-server's socket", || {
            sock.exists().then_some(())
        });
        let vsctl = |args: &[&str]| {
            run_ok(
                Command::new("ovs-vsctl")
                    .arg(format!("--db=unix:{d}/db.sock"))
                    .arg("--timeout=20")
                    .args(args),
            )
        };
        vsctl(&["--no-wait", "init"]);
        let vswitchd_cmd: Vec<String> = env
            .iter()
            .cloned()
            .chain([
                "ovs-vswitchd".into(),
                format!("unix:{d}/db.sock"),
                format!("--unixctl={d}/ovs-vswitchd.ctl"),
                format!("--log-file={d}/ovs-vswitchd.log"),
            ])
            .collect();
        let vswitchd = lab.spawn(&ovs, &as_strs(&vswitchd_cmd));
        let this = Ovs {
            lab,
            dir,
            n_hosts,
            _vswitchd: vswitchd,
            _ovsdb: ovsdb,
        };
        this.vsctl(&[
            "add-br",
            "br-tun",
            "--",
            "set",
            "bridge",
            "br-tun",
            "datapath_type=netdev",
        ]);
        this.vsctl(&["add-port", "br-tun", "up0"]);
        this.vsctl(&[
            "add-br",
            "br-mir",
            "--",
            "set",
            "bridge",
            "br-mir",
            "datapath_type=netdev",
        ]);
        for i in 1..=n_hosts {
            this.vsctl(&["add-port", "br-mir", &format!("p{i}")]);
        }
        // br-tun is a TAP device made by ovs-vswitchd: the tunnel endpoint's addresses live
        // there, so OVS's route table (read from the namespace) sends tunnels out of up0.
        let ns = this.lab.ns("ovs").to_string();
        this.lab.exec_ok(
            &ns,
            &["sysctl", "-qw", "net.ipv6.conf.br-tun.disable_ipv6=0"],
        );
        this.lab
            .exec_ok(&ns, &["ip", "link", "set", "br-tun", "mtu", "9000", "up"]);
        this.lab.addr(&ns, "br-tun", &format!("{OVS_V4}/24"));
        this.lab.addr(&ns, "br-tun", &format!("{OVS_V6}/64"));
        this.vsctl(&["set", "interface", "up0", "mtu_request=9000"]);
        for ip in [COL_V4, COL_V6] {
            this.appctl(&["tnl/neigh/set", "br-tun", ip, COL_MAC]);
        }
        wait_until(
            Duration::from_secs(10),
            "OVS routes to the collector",
            || {
                let routes = this.appctl(&["ovs/route/show"]);
                (routes.contains("10.77.0.0/24") && routes.contains("fd77::/64")).then_some(())
            },
        );
        this
    }

    pub fn ns(&self) -> &str {
        self.lab.ns("ovs")
    }

    pub fn col(&self) -> &str {
        self.lab.ns("col")
    }

    pub fn host(&self, i: usize) -> &str {
        assert!(i >= 1 && i <= self.n_hosts, "no host h{i}");
        self.lab.ns(&format!("h{i}"))
    }

    /// `ovs-vsctl` against this switch's database.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}/db.sock", self.dir.display()))
            .arg("--timeout=20")
            .args(args)
            .output()
            .expect("run ovs-vsctl");
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ovs-appctl` against this ovs-vswitchd.
    pub fn appctl(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("ovs-appctl")
                .arg("-t")
                .arg(self.dir.join("ovs-vswitchd.ctl"))
                .args(args),
        )
    }

    /// Adds tunnel port `port` with `tunnel`'s options and a mirror `port`-mirror that selects
    /// the packets received on and sent out of `select` (port names `p1`...).
    pub fn mirror(&self, port: &str, select: &[&str], tunnel: Tunnel) {
        let mut args: Vec<String> = vec![
            "add-port".into(),
            "br-mir".into(),
            port.into(),
            "--".into(),
            "set".into(),
            "interface".into(),
            port.into(),
        ];
        args.extend(tunnel.interface_options());
        args.extend([
            "--".into(),
            "--id=@out".into(),
            "get".into(),
            "port".into(),
            port.into(),
        ]);
        for (n, p) in select.iter().enumerate() {
            args.extend([
                "--".into(),
                format!("--id=@s{n}"),
                "get".into(),
                "port".into(),
                (*p).into(),
            ]);
        }
        let sel = (0..select.len())
            .map(|n| format!("@s{n}"))
            .collect::<Vec<_>>()
            .join(",");
        args.extend([
            "--".into(),
            "--id=@m".into(),
            "create".into(),
            "mirror".into(),
            format!("name={port}-mirror"),
            format!("select-src-port={sel}"),
            format!("select-dst-port={sel}"),
            "output-port=@out".into(),
            "--".into(),
            "add".into(),
            "bridge".into(),
            "br-mir".into(),
            "mirrors".into(),
            "@m".into(),
        ]);
        self.vsctl(&as_strs(&args));
    }

    /// ovs-vswitchd's log (the last 8 KiB).
    pub fn log(&self) -> String {
        let s = std::fs::read(self.dir.join("ovs-vswitchd.log")).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(8192)..]).into_owned()
    }
}

/// The address of host `i`.
pub fn host_ip(i: usize) -> String {
    format!("192.168.50.{i}")
}

/// The MAC address of host `i`'s eth0.
pub fn host_mac(i: usize) -> String {
    format!("02:50:00:00:00:{i:02x}")
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
