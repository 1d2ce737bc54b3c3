//! The lab as data: every namespace, link, address, session, probe flow and traffic generator.
//! Pure: nothing here touches the system. [`crate::up`] carries a [`Plan`] out, [`crate::down`]
//! undoes it by its namespace prefix and recorded processes.
//!
//! ```text
//!               host1                                            host2
//!   vm1 ─ tap-vm1 ┐                                        ┌ tap-vm3 ─ vm3
//!   vm2 ─ tap-vm2 ┴─ br0 ───────────── trunk0 ───────── br0 ┴ tap-vm4 ─ vm4
//!        tapwire-probe: br0, tap-vm2          tapwire-probe: br0, tap-vm3
//!        up0 10.99.0.1                        up0 10.99.0.2
//!            │                                    │
//!            └──────────── underlay: sw0 ─────────┘     the mirror network, MTU 9000
//!            ┌──────────────┘      └───────────────┐
//!   host3: Open vSwitch                         col 10.99.0.10: tapwire collect ── TAP mirror0 ──▶ mon
//!   vm5, vm6 ─ br-int ─ mirror ─ erspan0
//!   br-tun 10.99.0.3 ─ up0
//! ```
//!
//! The VM network 10.10.0.0/24 spans host1 and host2 (their bridges joined by `trunk0`); the
//! mirror network 10.99.0.0/24 joins the hosts' uplinks and the collector. Only addresses in
//! the lab's own namespaces are used; nothing is made in the caller's namespace.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where every lab keeps its state: `/run/tapwire-lab/<name>/`.
pub const STATE_ROOT: &str = "/run/tapwire-lab";
/// The lab's name when none is given.
pub const DEFAULT_NAME: &str = "lab";

/// The collector's address on the mirror network, and its stats API inside its namespace.
pub const COLLECTOR_IP: &str = "10.99.0.10";
pub const COLLECTOR_MAC: &str = "02:99:00:00:00:10";
pub const API: &str = "127.0.0.1:9750";
/// The mirror network: every sender's outer source address is in it (the collector's allow-list).
pub const MIRROR_NET: &str = "10.99.0.0/24";
/// Every mirror-network link: an ERSPAN III copy of a 1514-byte frame needs 1562 bytes.
pub const UNDERLAY_MTU: u32 = 9000;

/// A collector of the fleet lab (`lab up --fleet`): its `--name`, which is also its
/// namespace's role and its port on the mirror network's switch, and its address there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetCollector {
    pub name: &'static str,
    pub ip: &'static str,
    pub mac: &'static str,
}

/// The fleet lab's collectors, all on one PostgreSQL.
pub const COLLECTORS: [FleetCollector; 3] = [
    FleetCollector {
        name: "col1",
        ip: "10.99.0.11",
        mac: "02:99:00:00:00:11",
    },
    FleetCollector {
        name: "col2",
        ip: "10.99.0.12",
        mac: "02:99:00:00:00:12",
    },
    FleetCollector {
        name: "col3",
        ip: "10.99.0.13",
        mac: "02:99:00:00:00:13",
    },
];

/// Where the fleet's collectors serve their API (`--listen`) to probes, each other and
/// `top --fleet`.
pub const FLEET_API_PORT: u16 = 9760;
/// The PostgreSQL role and database of the fleet lab.
pub const FLEET_DB: &str = "tapwire";

/// The fleet lab's collector named `name`.
pub fn fleet_collector(name: &str) -> Option<&'static FleetCollector> {
    COLLECTORS.iter().find(|c| c.name == name)
}

/// The VM network on host1 and host2.
pub const VM_NET: &str = "10.10.0.0/24";
pub const VM_BROADCAST: &str = "10.10.0.255";
/// host1's address on its bridge: the VMs' gateway.
pub const GATEWAY: &str = "10.10.0.1";
/// An address outside the VM network (on host1's loopback), reached through the gateway.
pub const OUTSIDE: &str = "10.10.1.1";
/// A multicast group no host joins.
pub const GROUP: &str = "239.1.1.1";
/// The monitoring VM's NIC: the TAP the collector makes in the `mon` namespace.
pub const MONITOR_TAP: &str = "mirror0";
pub const HTTP_PORT: u16 = 8080;

/// One "VM": a namespace whose `eth0` is a veth to `port` on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vm {
    pub role: &'static str,
    pub host: &'static str,
    pub port: &'static str,
    pub ip: &'static str,
    pub mac: &'static str,
}

pub const VMS: [Vm; 6] = [
    vm("vm1", "host1", "10.10.0.11", "02:10:00:00:00:11"),
    vm("vm2", "host1", "10.10.0.12", "02:10:00:00:00:12"),
    vm("vm3", "host2", "10.10.0.13", "02:10:00:00:00:13"),
    vm("vm4", "host2", "10.10.0.14", "02:10:00:00:00:14"),
    vm("vm5", "host3", "10.30.0.15", "02:30:00:00:00:15"),
    vm("vm6", "host3", "10.30.0.16", "02:30:00:00:00:16"),
];

const fn vm(role: &'static str, host: &'static str, ip: &'static str, mac: &'static str) -> Vm {
    let port = match role.as_bytes()[2] {
        b'1' => "tap-vm1",
        b'2' => "tap-vm2",
        b'3' => "tap-vm3",
        b'4' => "tap-vm4",
        b'5' => "tap-vm5",
        _ => "tap-vm6",
    };
    Vm {
        role,
        host,
        port,
        ip,
        mac,
    }
}

/// The VM named `role`.
pub fn vm_named(role: &str) -> &'static Vm {
    VMS.iter()
        .find(|v| v.role == role)
        .unwrap_or_else(|| panic!("no VM {role} in the lab"))
}

/// A hypervisor host: its address on the mirror network (the outer source of its mirrors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub role: &'static str,
    pub underlay_ip: &'static str,
    /// The mirror network switch's port for it.
    pub switch_port: &'static str,
    /// ERSPAN III hardware id of its probe.
    pub hardware_id: u8,
}

pub const HOSTS: [Host; 3] = [
    Host {
        role: "host1",
        underlay_ip: "10.99.0.1",
        switch_port: "h1",
        hardware_id: 1,
    },
    Host {
        role: "host2",
        underlay_ip: "10.99.0.2",
        switch_port: "h2",
        hardware_id: 2,
    },
    // Open vSwitch's host: its tunnel endpoint is the address on OVS's br-tun.
    Host {
        role: "host3",
        underlay_ip: "10.99.0.3",
        switch_port: "h3",
        hardware_id: 3,
    },
];

pub fn host_named(role: &str) -> &'static Host {
    HOSTS
        .iter()
        .find(|h| h.role == role)
        .unwrap_or_else(|| panic!("no host {role} in the lab"))
}

/// Where a session's packets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A flow of the `tapwire-probe` running on a host.
    Probe(Flow),
    /// Open vSwitch's mirror of every port of `br-int` on host3 to an ERSPAN II port.
    Ovs,
}

/// One `[[flow]]` of a host's probe: its name is the session's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub host: &'static str,
    pub interface: &'static str,
    /// The host's view of the interface: `in` = received on it, `out` = sent on it.
    pub direction: &'static str,
    pub promiscuous: bool,
    pub filter: Option<&'static str>,
    pub encap: &'static str,
}

/// A named collector session, one per workflow the lab reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub name: &'static str,
    /// The port-mirroring system whose workflow it reproduces.
    pub workflow: &'static str,
    pub what: &'static str,
    pub sender: Sender,
    /// The outer source address, kind and id the collector sees.
    pub src: &'static str,
    pub kind: &'static str,
    pub id: u16,
    /// Also delivered to the monitoring VM's NIC.
    pub tap: bool,
}

/// The MidoNet session's match: IPv4 between addresses of the VM network.
pub const LOCAL_IP_FILTER: &str = "ip and src net 10.10.0.0/24 and dst net 10.10.0.0/24";
/// The AHV session's filter.
pub const BCAST_FILTER: &str = "ether broadcast or ether multicast";

pub const SESSIONS: [Session; 7] = [
    Session {
        name: "ovirt-host1",
        workflow: "oVirt port mirroring",
        what: "the whole VM network on host1 (its bridge, both directions) to the monitoring VM's NIC and to files",
        sender: Sender::Probe(Flow {
            host: "host1",
            interface: "br0",
            direction: "both",
            promiscuous: true,
            filter: None,
            encap: "erspan-iii",
        }),
        src: "10.99.0.1",
        kind: "erspan-iii",
        id: 10,
        tap: true,
    },
    Session {
        name: "midonet-vm2",
        workflow: "MidoNet inbound mirror with a match",
        what: "what enters the bridge from vm2's port, IPv4 local to 10.10.0.0/24 only",
        sender: Sender::Probe(Flow {
            host: "host1",
            interface: "tap-vm2",
            direction: "in",
            promiscuous: false,
            filter: Some(LOCAL_IP_FILTER),
            encap: "erspan-ii",
        }),
        src: "10.99.0.1",
        kind: "erspan-ii",
        id: 11,
        tap: false,
    },
    Session {
        name: "vm3-ingress",
        workflow: "Cloudpods tap flow / ZStack port mirror, ingress",
        what: "traffic into vm3 (its port's outbound side on host2)",
        sender: Sender::Probe(Flow {
            host: "host2",
            interface: "tap-vm3",
            direction: "out",
            promiscuous: false,
            filter: None,
            encap: "erspan-iii",
        }),
        src: "10.99.0.2",
        kind: "erspan-iii",
        id: 21,
        tap: false,
    },
    Session {
        name: "vm3-egress",
        workflow: "Cloudpods tap flow / ZStack port mirror, egress",
        what: "traffic out of vm3 (its port's inbound side on host2)",
        sender: Sender::Probe(Flow {
            host: "host2",
            interface: "tap-vm3",
            direction: "in",
            promiscuous: false,
            filter: None,
            encap: "erspan-iii",
        }),
        src: "10.99.0.2",
        kind: "erspan-iii",
        id: 22,
        tap: false,
    },
    Session {
        name: "vm3-both",
        workflow: "Cloudpods tap flow / ZStack port mirror, both",
        what: "traffic into and out of vm3",
        sender: Sender::Probe(Flow {
            host: "host2",
            interface: "tap-vm3",
            direction: "both",
            promiscuous: false,
            filter: None,
            encap: "erspan-iii",
        }),
        src: "10.99.0.2",
        kind: "erspan-iii",
        id: 23,
        tap: false,
    },
    Session {
        name: "ahv-host2",
        workflow: "Nutanix AHV promiscuous broadcast/multicast capture",
        what: "broadcast and multicast frames on host2's bridge, promiscuous, over GRE",
        sender: Sender::Probe(Flow {
            host: "host2",
            interface: "br0",
            direction: "both",
            promiscuous: true,
            filter: Some(BCAST_FILTER),
            encap: "gre",
        }),
        src: "10.99.0.2",
        kind: "gre",
        id: 30,
        tap: false,
    },
    Session {
        name: "ovs-host3",
        workflow: "Open vSwitch mirror to an ERSPAN port",
        what: "every port of OVS's br-int on host3, sent by OVS itself (ERSPAN II)",
        sender: Sender::Ovs,
        src: "10.99.0.3",
        kind: "erspan-ii",
        id: 40,
        tap: false,
    },
];

/// A veth pair `a_role:a_if` <-> `b_role:b_if`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub a_role: &'static str,
    pub a_if: &'static str,
    pub a_mac: Option<&'static str>,
    pub b_role: &'static str,
    pub b_if: &'static str,
    pub b_mac: Option<&'static str>,
    pub mtu: u32,
}

/// A long-running process of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub role: &'static str,
    pub name: &'static str,
    pub argv: Vec<String>,
}

/// One lab: its name, where its captures go, and whether it has the Open vSwitch host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub out: PathBuf,
    pub ovs: bool,
    /// A fleet: PostgreSQL in namespace `db`, the [`COLLECTORS`] instead of `col`, sessions
    /// placed `auto`, probes that take their flows from the fleet (no OVS host, no monitor).
    pub fleet: bool,
}

impl Plan {
    /// A lab named `name` (1 to 10 lower-case letters and digits: it prefixes every namespace).
    pub fn new(name: &str, out: PathBuf, ovs: bool) -> Result<Plan, String> {
        validate_name(name)?;
        Ok(Plan {
            name: name.to_string(),
            out,
            ovs,
            fleet: false,
        })
    }

    /// A fleet lab named `name` (see [`Plan::fleet`]).
    pub fn new_fleet(name: &str, out: PathBuf) -> Result<Plan, String> {
        let mut p = Plan::new(name, out, false)?;
        p.fleet = true;
        Ok(p)
    }

    /// Every namespace of the lab starts with this.
    pub fn prefix(&self) -> String {
        prefix(&self.name)
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix())
    }

    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    /// Every namespace role, in creation order.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut roles = if self.fleet {
            let mut r = vec!["underlay", "db"];
            r.extend(COLLECTORS.iter().map(|c| c.name));
            r.extend(["host1", "host2"]);
            r
        } else {
            vec!["underlay", "col", "mon", "host1", "host2"]
        };
        if self.ovs {
            roles.push("host3");
        }
        roles.extend(self.vms().map(|v| v.role));
        roles
    }

    /// The VMs of this lab (vm5 and vm6 live on the OVS host).
    pub fn vms(&self) -> impl Iterator<Item = &'static Vm> + '_ {
        VMS.iter().filter(|v| self.ovs || v.host != "host3")
    }

    /// The hosts whose mirrors reach the collector.
    pub fn hosts(&self) -> impl Iterator<Item = &'static Host> + '_ {
        HOSTS.iter().filter(|h| self.ovs || h.role != "host3")
    }

    /// The sessions of this lab.
    pub fn sessions(&self) -> Vec<&'static Session> {
        SESSIONS
            .iter()
            .filter(|s| self.ovs || s.sender != Sender::Ovs)
            .collect()
    }

    /// Every veth pair.
    pub fn links(&self) -> Vec<Link> {
        let mut links: Vec<Link> = self
            .vms()
            .map(|v| Link {
                a_role: v.role,
                a_if: "eth0",
                a_mac: Some(v.mac),
                b_role: v.host,
                b_if: v.port,
                b_mac: None,
                mtu: 1500,
            })
            .collect();
        links.push(Link {
            a_role: "host1",
            a_if: "trunk0",
            a_mac: None,
            b_role: "host2",
            b_if: "trunk0",
            b_mac: None,
            mtu: 1500,
        });
        for h in self.hosts() {
            links.push(Link {
                a_role: h.role,
                a_if: "up0",
                a_mac: None,
                b_role: "underlay",
                b_if: h.switch_port,
                b_mac: None,
                mtu: UNDERLAY_MTU,
            });
        }
        if self.fleet {
            links.extend(COLLECTORS.iter().map(|c| Link {
                a_role: c.name,
                a_if: "eth0",
                a_mac: Some(c.mac),
                b_role: "underlay",
                b_if: c.name,
                b_mac: None,
                mtu: UNDERLAY_MTU,
            }));
        } else {
            links.push(Link {
                a_role: "col",
                a_if: "eth0",
                a_mac: Some(COLLECTOR_MAC),
                b_role: "underlay",
                b_if: "col",
                b_mac: None,
                mtu: UNDERLAY_MTU,
            });
        }
        links
    }

    /// The namespace where the lab's keeper runs and `top` reads the collector's API.
    pub fn home_role(&self) -> &'static str {
        if self.fleet {
            COLLECTORS[0].name
        } else {
            "col"
        }
    }

    /// `ip -batch` lines (run in the caller's namespace) that make every Linux bridge and veth
    /// pair directly inside the lab's namespaces.
    pub fn link_batch(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (role, bridge) in [("underlay", "sw0"), ("host1", "br0"), ("host2", "br0")] {
            lines.push(format!(
                "link add {bridge} netns {} type bridge",
                self.ns(role)
            ));
        }
        for l in self.links() {
            let mac = |m: Option<&str>| m.map(|m| format!(" address {m}")).unwrap_or_default();
            lines.push(format!(
                "link add {} netns {}{} mtu {} type veth peer name {} netns {}{} mtu {}",
                l.a_if,
                self.ns(l.a_role),
                mac(l.a_mac),
                l.mtu,
                l.b_if,
                self.ns(l.b_role),
                mac(l.b_mac),
                l.mtu
            ));
        }
        lines
    }

    /// The shell script (`sh -e`) run inside `role`'s namespace once its links exist:
    /// IPv6 off (only the lab's own traffic), offloads off on every veth (what a capture sees
    /// is what crosses the link), bridge ports, addresses, routes, links up.
    pub fn setup_script(&self, role: &str) -> String {
        let mut s = String::new();
        let line = |s: &mut String, l: &str| {
            s.push_str(l);
            s.push('\n');
        };
        line(
            &mut s,
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
        );
        line(&mut s, "ip link set lo up");
        let veths: Vec<&'static str> = self
            .links()
            .iter()
            .flat_map(|l| [(l.a_role, l.a_if), (l.b_role, l.b_if)])
            .filter(|(r, _)| *r == role)
            .map(|(_, i)| i)
            .collect();
        for i in &veths {
            // Best effort: a fixed feature is not an error worth stopping the lab for.
            line(
                &mut s,
                &format!(
                    "ethtool -K {i} tx off rx off tso off gso off gro off >/dev/null 2>&1 || true"
                ),
            );
        }
        let ports = |s: &mut String, bridge: &str, ports: &[&str]| {
            for p in ports {
                line(s, &format!("ip link set {p} master {bridge}"));
            }
            line(s, &format!("ip link set {bridge} up"));
        };
        match role {
            "underlay" => {
                let cols: Vec<&str> = if self.fleet {
                    COLLECTORS.iter().map(|c| c.name).collect()
                } else {
                    vec!["col"]
                };
                let sw: Vec<&str> = self.hosts().map(|h| h.switch_port).chain(cols).collect();
                ports(&mut s, "sw0", &sw);
            }
            "host1" | "host2" => {
                let mut p: Vec<&str> = self
                    .vms()
                    .filter(|v| v.host == role)
                    .map(|v| v.port)
                    .collect();
                p.push("trunk0");
                ports(&mut s, "br0", &p);
                let h = host_named(role);
                line(&mut s, &format!("ip addr add {}/24 dev up0", h.underlay_ip));
                if role == "host1" {
                    // The VMs' gateway, and an address outside their network behind it.
                    line(&mut s, &format!("ip addr add {GATEWAY}/24 dev br0"));
                    line(&mut s, &format!("ip addr add {OUTSIDE}/32 dev lo"));
                }
            }
            "col" => {
                line(&mut s, &format!("ip addr add {COLLECTOR_IP}/24 dev eth0"));
            }
            r if fleet_collector(r).is_some() => {
                let ip = fleet_collector(r).map_or("", |c| c.ip);
                line(&mut s, &format!("ip addr add {ip}/24 dev eth0"));
            }
            r if r.starts_with("vm") => {
                let v = vm_named(r);
                line(&mut s, &format!("ip addr add {}/24 dev eth0", v.ip));
            }
            _ => {}
        }
        for i in &veths {
            line(&mut s, &format!("ip link set {i} up"));
        }
        if role.starts_with("vm") && vm_named(role).host != "host3" {
            line(&mut s, &format!("ip route add default via {GATEWAY}"));
        }
        s
    }

    /// The collector's configuration: one named session per workflow.
    pub fn collector_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# tapwire collect in lab {:?}: written by `tapwire lab up`. One session per workflow.",
            self.name
        );
        t.push_str("[collector]\n");
        let _ = writeln!(t, "out = {}", toml_str(&self.out.to_string_lossy()));
        t.push_str(
            "auto_discover = true          # anything unexpected shows up as its own session\n",
        );
        let _ = writeln!(
            t,
            "allow = [{}]     # mirror protocols carry no authentication",
            toml_str(MIRROR_NET)
        );
        t.push_str("\n[defaults.files]\n");
        t.push_str("rotate = { size = \"32MiB\" }\nmax_files = 8                 # a running lab keeps at most 256 MiB per session\n");
        for s in self.sessions() {
            t.push('\n');
            let _ = writeln!(t, "# {}: {}", s.workflow, s.what);
            t.push_str("[[session]]\n");
            let _ = writeln!(t, "name = {}", toml_str(s.name));
            let _ = writeln!(
                t,
                "sources = [{{ src = {}, kind = {}, id = {} }}]",
                toml_str(&format!("{}/32", s.src)),
                toml_str(s.kind),
                s.id
            );
            if s.tap {
                let _ = writeln!(
                    t,
                    "tap = {{ name = {}, netns = {} }}",
                    toml_str(MONITOR_TAP),
                    toml_str(&self.ns("mon"))
                );
            }
        }
        t
    }

    /// The probe configuration of `host`: one flow per session it feeds.
    pub fn probe_toml(&self, host: &str) -> String {
        let h = host_named(host);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# tapwire-probe on {host} of lab {:?}: written by `tapwire lab up`.",
            self.name
        );
        t.push_str("[probe]\nstats = \"127.0.0.1:9751\"\nstats_interval = \"60s\"\n\n");
        let _ = writeln!(t, "[defaults]\ncollector = {}", toml_str(COLLECTOR_IP));
        for (s, f) in self.flows(host) {
            t.push('\n');
            let _ = writeln!(t, "# {}: {}", s.workflow, s.what);
            t.push_str("[[flow]]\n");
            let _ = writeln!(t, "name = {}", toml_str(s.name));
            let _ = writeln!(t, "interface = {}", toml_str(f.interface));
            let _ = writeln!(t, "direction = {}", toml_str(f.direction));
            if f.promiscuous {
                t.push_str("promiscuous = true\n");
            }
            if let Some(filter) = f.filter {
                let _ = writeln!(t, "filter = {}", toml_str(filter));
            }
            let _ = writeln!(t, "session = {}", s.id);
            let _ = writeln!(t, "encap = {}", toml_str(f.encap));
            if f.encap == "erspan-iii" {
                let _ = writeln!(t, "hardware_id = {}", h.hardware_id);
            }
        }
        t
    }

    /// The fleet lab's `tapwire collect` of collector `c`: on PostgreSQL at `db`, its API on
    /// its mirror-network address (probes and the other collectors reach it there) and on
    /// the loopback, files under `<out>/<name>/`.
    pub fn fleet_collector_argv(
        &self,
        tapwire: &Path,
        c: &FleetCollector,
        db: &str,
    ) -> Vec<String> {
        let logs = self.state_dir().join("logs");
        [
            tapwire.display().to_string().as_str(),
            "collect",
            "--db",
            db,
            "--name",
            c.name,
            "--advertise",
            c.ip,
            "--listen",
            &format!("{}:{FLEET_API_PORT}", c.ip),
            "--api",
            API,
            "--out",
            &self.out.join(c.name).display().to_string(),
            "--allow",
            MIRROR_NET,
            "--no-tui",
            "--log-file",
            &logs.join(format!("{}.log", c.name)).display().to_string(),
            "--probe-report-interval",
            "1s",
            "--gre-v6",
            "off",
            "--vxlan",
            "off",
            "--geneve",
            "off",
            "--tzsp",
            "off",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Every collector's API, as probes are given it (`--controller`, comma-separated).
    pub fn fleet_controllers(&self) -> String {
        COLLECTORS
            .iter()
            .map(|c| format!("http://{}:{FLEET_API_PORT}", c.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `tapwire session create ...` of `s` on the fleet: placed `auto`, the lab's mirror id
    /// and encapsulation.
    pub fn fleet_session_args(s: &Session) -> Vec<String> {
        let encap = match s.sender {
            Sender::Probe(f) => f.encap,
            Sender::Ovs => s.kind,
        };
        [
            "session",
            "create",
            s.name,
            "--encap",
            encap,
            "--mirror-id",
            &s.id.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `tapwire flow create ...` of `s`'s probe flow `f`: the flow is named after its session.
    pub fn fleet_flow_args(s: &Session, f: &Flow) -> Vec<String> {
        let mut a: Vec<String> = [
            "flow",
            "create",
            "--probe",
            f.host,
            "--name",
            s.name,
            "--interface",
            f.interface,
            "--session",
            s.name,
            "--direction",
            f.direction,
        ]
        .map(String::from)
        .to_vec();
        if f.promiscuous {
            a.push("--promisc".into());
        }
        if let Some(filter) = f.filter {
            a.extend(["--filter".into(), filter.into()]);
        }
        a
    }

    /// The fleet lab's `tapwire-probe` on `host`: its flows come from any live collector.
    pub fn fleet_probe_argv(&self, probe: &Path, host: &str, token: &str) -> Vec<String> {
        let state = self.state_dir().join(format!("probe-{host}.state.json"));
        [
            probe.display().to_string().as_str(),
            "--controller",
            &self.fleet_controllers(),
            "--token",
            token,
            "--name",
            host,
            "--state",
            &state.display().to_string(),
            "--stats",
            "127.0.0.1:9751",
            "--stats-interval",
            "off",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The probe flows on `host`, with their sessions.
    pub fn flows(&self, host: &str) -> Vec<(&'static Session, Flow)> {
        self.sessions()
            .into_iter()
            .filter_map(|s| match s.sender {
                Sender::Probe(f) if f.host == host => Some((s, f)),
                _ => None,
            })
            .collect()
    }

    /// The steady traffic between the VMs: light enough for two cores.
    pub fn traffic(&self, www: &Path) -> Vec<Task> {
        let ip = |r: &str| vm_named(r).ip.to_string();
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut t = vec![
            task(
                "vm1",
                "ping-vm2",
                argv(&["ping", "-q", "-i", "0.5", &ip("vm2")]),
            ),
            task(
                "vm3",
                "ping-vm1",
                argv(&["ping", "-q", "-i", "0.5", &ip("vm1")]),
            ),
            task(
                "vm2",
                "ping-outside",
                argv(&["ping", "-q", "-i", "1", OUTSIDE]),
            ),
            task(
                "vm1",
                "broadcast",
                argv(&["ping", "-q", "-b", "-i", "1", VM_BROADCAST]),
            ),
            task(
                "vm4",
                "multicast",
                argv(&["ping", "-q", "-i", "1", "-t", "1", GROUP]),
            ),
            task(
                "vm2",
                "http-server",
                argv(&[
                    "python3",
                    "-c",
                    HTTP_SERVER,
                    &ip("vm2"),
                    &HTTP_PORT.to_string(),
                    &www.to_string_lossy(),
                ]),
            ),
            task(
                "vm3",
                "http-client",
                argv(&[
                    "sh",
                    "-c",
                    &format!(
                        "while :; do curl -s -o /dev/null --max-time 2 http://{}:{HTTP_PORT}/; sleep 1; done",
                        ip("vm2")
                    ),
                ]),
            ),
            task(
                "vm1",
                "iperf3-server",
                argv(&["iperf3", "-s", "-B", &ip("vm1")]),
            ),
            task(
                "vm4",
                "iperf3-client",
                argv(&[
                    "sh",
                    "-c",
                    // TCP bulk at 1 Mbit/s, started again if the server was not up yet. In
                    // writes of 1400 bytes: with iperf3's default 128 KiB, one write every
                    // 1.05 s, one second in 23 carried nothing and the rate charts had gaps.
                    &format!(
                        "while :; do iperf3 -c {} -b 1M -l 1400 -t 86400 -i 0 >/dev/null 2>&1; sleep 1; done",
                        ip("vm1")
                    ),
                ]),
            ),
        ];
        if self.ovs {
            t.push(task(
                "vm5",
                "ping-vm6",
                argv(&["ping", "-q", "-i", "0.5", &ip("vm6")]),
            ));
        }
        t
    }

    /// The IDS stand-in on the monitoring VM: reports each new TCP connection it sees on its
    /// NIC (the session's TAP).
    pub fn ids(&self) -> Task {
        task(
            "mon",
            "ids",
            [
                "tcpdump",
                "-i",
                MONITOR_TAP,
                "-nn",
                "-l",
                "-q",
                "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )
    }
}

/// vm2's web server (`python3 -c HTTP_SERVER ADDR PORT DIR`): Python's `http.server`, whose
/// `HTTPServer.server_bind` looks its own address up in DNS (`getfqdn`) before it listens;
/// inside the lab no name server answers, and the first requests were reset for 10 s. This
/// one binds and listens at once and never resolves a name (its log shows client addresses).
const HTTP_SERVER: &str = "\
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
";

fn task(role: &'static str, name: &'static str, argv: Vec<String>) -> Task {
    Task { role, name, argv }
}

pub fn prefix(name: &str) -> String {
    format!("tw-{name}-")
}

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 10
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "lab name {name:?}: use 1 to 10 lower-case letters and digits"
        ));
    }
    Ok(())
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ovs: bool) -> Plan {
        Plan::new("t1", PathBuf::from("/tmp/cap \"x\""), ovs).unwrap()
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("lab").is_ok());
        assert!(validate_name("e2e12345").is_ok());
        for bad in ["", "Lab", "a-b", "elevenchars", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_namespace_and_interface_name_fits() {
        let p = Plan::new("abcdefghij", PathBuf::from("/x"), true).unwrap();
        for r in p.roles() {
            assert!(p.ns(r).starts_with("tw-abcdefghij-"));
        }
        for l in p.links() {
            assert!(l.a_if.len() <= 15 && l.b_if.len() <= 15, "{l:?}");
        }
        assert!(MONITOR_TAP.len() <= 15);
    }

    #[test]
    fn without_ovs_there_is_no_host3() {
        let p = plan(false);
        assert!(!p.roles().contains(&"host3"));
        assert!(!p.roles().contains(&"vm5"));
        assert_eq!(p.sessions().len(), 6);
        assert!(
            p.links()
                .iter()
                .all(|l| l.a_role != "host3" && l.b_role != "host3")
        );
        assert!(p.traffic(Path::new("/w")).iter().all(|t| t.role != "vm5"));
        let p = plan(true);
        assert_eq!(p.sessions().len(), 7);
        assert!(p.roles().contains(&"host3"));
    }

    #[test]
    fn every_role_of_a_link_or_task_is_a_namespace() {
        let p = plan(true);
        let roles = p.roles();
        for l in p.links() {
            assert!(
                roles.contains(&l.a_role) && roles.contains(&l.b_role),
                "{l:?}"
            );
        }
        for t in p.traffic(Path::new("/w")).iter().chain([&p.ids()]) {
            assert!(roles.contains(&t.role), "{t:?}");
        }
        assert_eq!(
            roles.len(),
            roles
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }

    #[test]
    fn sessions_are_told_apart_by_source_and_id() {
        let mut keys: Vec<_> = SESSIONS.iter().map(|s| (s.src, s.kind, s.id)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), SESSIONS.len());
        for s in &SESSIONS {
            if let Sender::Probe(f) = s.sender {
                // The collector's rule matches what the probe sends.
                assert_eq!(host_named(f.host).underlay_ip, s.src, "{}", s.name);
                assert_eq!(f.encap, s.kind, "{}", s.name);
            }
        }
    }

    #[test]
    fn collector_toml_has_every_session_with_its_rule() {
        let p = plan(true);
        let text = p.collector_toml();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["collector"]["out"].as_str(), Some("/tmp/cap \"x\""));
        let sessions = v["session"].as_array().unwrap();
        assert_eq!(sessions.len(), 7);
        let ovirt = &sessions[0];
        assert_eq!(ovirt["name"].as_str(), Some("ovirt-host1"));
        assert_eq!(ovirt["sources"][0]["src"].as_str(), Some("10.99.0.1/32"));
        assert_eq!(ovirt["sources"][0]["kind"].as_str(), Some("erspan-iii"));
        assert_eq!(ovirt["sources"][0]["id"].as_integer(), Some(10));
        assert_eq!(ovirt["tap"]["netns"].as_str(), Some("tw-t1-mon"));
        assert_eq!(ovirt["tap"]["name"].as_str(), Some("mirror0"));
        assert!(sessions[1..].iter().all(|s| s.get("tap").is_none()));
        assert_eq!(
            sessions[6]["sources"][0]["kind"].as_str(),
            Some("erspan-ii")
        );
    }

    #[test]
    fn probe_toml_has_the_hosts_flows() {
        let p = plan(true);
        let v: toml::Value = toml::from_str(&p.probe_toml("host2")).unwrap();
        assert_eq!(v["defaults"]["collector"].as_str(), Some(COLLECTOR_IP));
        let flows = v["flow"].as_array().unwrap();
        let names: Vec<&str> = flows.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["vm3-ingress", "vm3-egress", "vm3-both", "ahv-host2"]
        );
        assert_eq!(flows[0]["direction"].as_str(), Some("out"));
        assert_eq!(flows[1]["direction"].as_str(), Some("in"));
        assert_eq!(flows[0]["hardware_id"].as_integer(), Some(2));
        assert_eq!(flows[3]["promiscuous"].as_bool(), Some(true));
        assert_eq!(flows[3]["filter"].as_str(), Some(BCAST_FILTER));
        assert!(flows[3].get("hardware_id").is_none());
        let v: toml::Value = toml::from_str(&p.probe_toml("host1")).unwrap();
        let flows = v["flow"].as_array().unwrap();
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[1]["filter"].as_str(), Some(LOCAL_IP_FILTER));
    }

    #[test]
    fn links_are_made_inside_the_lab_only() {
        let p = plan(true);
        for l in p.link_batch() {
            // Both ends (or the bridge) name a lab namespace.
            let n = l.matches(" netns tw-t1-").count();
            assert!(n == 2 || (n == 1 && l.ends_with("type bridge")), "{l}");
        }
    }

    #[test]
    fn setup_scripts_address_what_the_plan_says() {
        let p = plan(true);
        let h1 = p.setup_script("host1");
        assert!(h1.contains("ip link set tap-vm1 master br0"));
        assert!(h1.contains("ip link set trunk0 master br0"));
        assert!(h1.contains("ip addr add 10.99.0.1/24 dev up0"));
        assert!(h1.contains("ip addr add 10.10.0.1/24 dev br0"));
        let h2 = p.setup_script("host2");
        assert!(
            !h2.contains("dev br0\n"),
            "host2 has no address on the VM network"
        );
        assert!(
            p.setup_script("vm3")
                .contains("ip addr add 10.10.0.13/24 dev eth0")
        );
        assert!(!p.setup_script("vm5").contains("route add default"));
        assert!(
            p.setup_script("vm4")
                .contains("ip route add default via 10.10.0.1")
        );
        assert!(
            p.setup_script("underlay")
                .contains("ip link set h3 master sw0")
        );
        assert!(!plan(false).setup_script("underlay").contains("h3"));
    }

    #[test]
    fn a_fleet_has_three_collectors_on_the_mirror_network_and_no_single_one() {
        let p = Plan::new_fleet("f", PathBuf::from("/cap")).unwrap();
        let roles = p.roles();
        for r in ["db", "col1", "col2", "col3", "host1", "host2", "vm4"] {
            assert!(roles.contains(&r), "{r} in {roles:?}");
        }
        for r in ["col", "mon", "host3", "vm5"] {
            assert!(!roles.contains(&r), "{r} in {roles:?}");
        }
        let under = p.setup_script("underlay");
        for c in &COLLECTORS {
            assert!(
                under.contains(&format!("ip link set {} master sw0", c.name)),
                "{under}"
            );
            assert!(
                p.setup_script(c.name)
                    .contains(&format!("ip addr add {}/24 dev eth0", c.ip))
            );
        }
        assert!(!p.sessions().iter().any(|s| s.sender == Sender::Ovs));
        let argv =
            p.fleet_collector_argv(Path::new("/bin/tapwire"), &COLLECTORS[1], "postgres://x");
        let flag = |f: &str| argv[argv.iter().position(|a| a == f).unwrap() + 1].clone();
        assert_eq!(flag("--name"), "col2");
        assert_eq!(flag("--advertise"), "10.99.0.12");
        assert_eq!(flag("--listen"), "10.99.0.12:9760");
        assert_eq!(flag("--out"), "/cap/col2");
        assert_eq!(flag("--db"), "postgres://x");
        assert_eq!(
            p.fleet_controllers(),
            "http://10.99.0.11:9760,http://10.99.0.12:9760,http://10.99.0.13:9760"
        );
    }

    #[test]
    fn fleet_sessions_and_flows_carry_the_lab_s_encapsulation_direction_and_filter() {
        let midonet = SESSIONS.iter().find(|s| s.name == "midonet-vm2").unwrap();
        assert_eq!(
            Plan::fleet_session_args(midonet).join(" "),
            "session create midonet-vm2 --encap erspan-ii --mirror-id 11"
        );
        let Sender::Probe(f) = midonet.sender else {
            panic!("a probe's session")
        };
        let a = Plan::fleet_flow_args(midonet, &f);
        assert_eq!(
            a[..12].join(" "),
            "flow create --probe host1 --name midonet-vm2 --interface tap-vm2 --session midonet-vm2 --direction in"
        );
        assert_eq!(a[12..], ["--filter", LOCAL_IP_FILTER]);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
