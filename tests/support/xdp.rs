//! What the AF_XDP tests look at: whether an interface has an XDP program, the namespace's
//! SNMP counters, an input of the API, and whether the collector's host is still reachable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{COL_V4, COL_V6, Lab};

/// Whether `ip link show IF` in `ns` shows an XDP program; with bpftool, it must agree.
pub fn xdp_on(lab: &Lab, ns: &str, ifname: &str) -> bool {
    let link = lab.exec_ok(ns, &["ip", "link", "show", ifname]);
    let on = link.contains(" xdp");
    let bpftool = std::process::Command::new("sh")
        .args(["-c", "command -v bpftool"])
        .output()
        .is_ok_and(|o| o.status.success());
    if bpftool {
        let net = lab.exec_ok(ns, &["bpftool", "net", "show", "dev", ifname]);
        // "xdp:\n col0(2) driver id 42\n\ntc:..." (generic mode says "generic").
        let prog = net
            .split("xdp:")
            .nth(1)
            .and_then(|rest| rest.split("tc:").next())
            .is_some_and(|x| x.contains(&format!("{ifname}(")) && x.contains(" id "));
        assert_eq!(on, prog, "ip link and bpftool disagree:\n{link}\n{net}");
    }
    on
}

/// `nstat -asz` in `ns`: the namespace's absolute SNMP counters, zeros included.
pub fn nstat(lab: &Lab, ns: &str) -> BTreeMap<String, u64> {
    lab.exec_ok(ns, &["nstat", "-asz"])
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, key: &str) -> u64 {
    b.get(key).copied().unwrap_or(0) - a.get(key).copied().unwrap_or(0)
}

/// The API's input named `name`.
pub fn input(api: &Value, name: &str) -> Value {
    api["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no input {name}: {}", api["inputs"]))
        .clone()
}

/// ping (IPv4 and IPv6) and a TCP connection from `snd` to the collector's namespace.
pub fn host_reachable(lab: &Lab, snd: &str, col: &str) {
    lab.exec_ok(snd, &["ping", "-c", "2", "-W", "2", "-i", "0.2", COL_V4]);
    lab.exec_ok(
        snd,
        &["ping", "-6", "-c", "2", "-W", "2", "-i", "0.2", COL_V6],
    );
    let server = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{COL_V4}', 7777))\ns.listen(1)\nc, _ = s.accept()\nc.sendall(c.recv(16))\n"
    );
    let mut srv = lab.spawn(col, &["/usr/bin/python3", "-c", &server]);
    let client = format!(
        "import socket, time\nfor _ in range(50):\n    try:\n        c = socket.create_connection(('{COL_V4}', 7777), timeout=2)\n        break\n    except OSError:\n        time.sleep(0.1)\n\
         c.sendall(b'tapwire')\nprint(c.recv(16).decode())\n"
    );
    let echoed = lab.exec_ok(snd, &["/usr/bin/python3", "-c", &client]);
    assert_eq!(echoed.trim(), "tapwire", "TCP echo through col0");
    srv.wait_ok(Duration::from_secs(5));
}
