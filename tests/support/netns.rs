//! A network-namespace lab for end-to-end tests.
//!
//! [`Lab::new`] makes two namespaces of its own, `snd` (the sender) and `col` (the collector),
//! joined by a veth pair with IPv4 and IPv6 addresses ([`SND_V4`]/[`COL_V4`],
//! [`SND_V6`]/[`COL_V6`]). [`Lab::empty`] makes none, for labs that build their own topology
//! with [`Lab::add_ns`], [`Lab::veth`] and [`Lab::addr`]. Links are created directly inside the
//! namespaces (`ip link add ... netns A type veth peer ... netns B`), so nothing ever appears in
//! the test's own namespace.
//!
//! Everything the lab made is removed in `Drop`, also when the test panics: spawned processes
//! (each is its own process group, killed whole), anything else still running inside the
//! namespaces, tmpfs mounts, the namespaces and with them their links. A lab left behind by a
//! test process that was itself killed is removed by the next [`Lab`] made. On a panic, `Drop`
//! prints what helps: every spawned process's stderr and `ip -s link` of every namespace.
//!
//! Tests send only to addresses inside namespaces they made (and to loopback).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::unix::process::{CommandExt, ExitStatusExt};

use crate::{TempDir, run};

/// The sender's end of the default link (`snd0`).
pub const SND_V4: &str = "10.77.0.1";
pub const SND_V6: &str = "fd77::1";
/// The collector's end of the default link (`col0`).
pub const COL_V4: &str = "10.77.0.2";
pub const COL_V6: &str = "fd77::2";
pub const SND_MAC: &str = "02:77:00:00:00:01";
pub const COL_MAC: &str = "02:77:00:00:00:02";

/// Prefix of every namespace a lab makes: `twlab-<pid>-<n>-<tag>-<role>`.
const PREFIX: &str = "twlab-";

/// Namespaces, links, processes and mounts of one test; all removed on drop.
pub struct Lab {
    id: String,
    /// (role, full name), in creation order.
    namespaces: Vec<(String, String)>,
    procs: Arc<Mutex<Vec<ProcInfo>>>,
    mounts: Vec<PathBuf>,
    logs: TempDir,
    next_mac: u32,
}

#[derive(Clone)]
struct ProcInfo {
    pgid: u32,
    name: String,
    stderr: PathBuf,
    alive: bool,
}

impl Lab {
    /// A lab with namespaces `snd` and `col` joined by `snd0` <-> `col0` (MTU 1500, offloads
    /// off), addressed with [`SND_V4`]/[`SND_V6`] and [`COL_V4`]/[`COL_V6`].
    pub fn new(tag: &str) -> Lab {
        let mut lab = Lab::empty(tag);
        let snd = lab.add_ns("snd");
        let col = lab.add_ns("col");
        lab.veth(&snd, "snd0", SND_MAC, &col, "col0", COL_MAC);
        lab.addr(&snd, "snd0", &format!("{SND_V4}/24"));
        lab.addr(&snd, "snd0", &format!("{SND_V6}/64"));
        lab.addr(&col, "col0", &format!("{COL_V4}/24"));
        lab.addr(&col, "col0", &format!("{COL_V6}/64"));
        lab
    }

    /// Raises the MTU of the default link (`snd0`/`col0`) to 9500: some public captures
    /// carry 9100-byte frames.
    pub fn jumbo(&self) {
        self.exec_ok(
            self.ns("snd"),
            &["ip", "link", "set", "snd0", "mtu", "9500"],
        );
        self.exec_ok(
            self.ns("col"),
            &["ip", "link", "set", "col0", "mtu", "9500"],
        );
    }

    /// A lab with no namespace yet.
    pub fn empty(tag: &str) -> Lab {
        for tool in ["ip", "sysctl", "kill", "mount", "umount"] {
            crate::require(tool);
        }
        let uid = crate::run_ok(Command::new("id").arg("-u"));
        assert_eq!(
            uid.trim(),
            "0",
            "end-to-end tests build network namespaces: run them as root (sudo -E cargo test)"
        );
        remove_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Lab {
            logs: TempDir::new(&format!("lab-{tag}")),
            id,
            namespaces: Vec::new(),
            procs: Arc::new(Mutex::new(Vec::new())),
            mounts: Vec::new(),
            next_mac: 0x10,
        }
    }

    /// Makes a namespace for `role` with `lo` up, IPv6 on and DAD off (addresses are usable at
    /// once), router solicitations off; returns its full name.
    pub fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{PREFIX}{}-{role}", self.id);
        crate::run_ok(Command::new("ip").args(["netns", "add", &name]));
        self.namespaces.push((role.to_string(), name.clone()));
        self.exec_ok(&name, &["ip", "link", "set", "lo", "up"]);
        for (key, value) in [
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            self.exec_ok(&name, &["sysctl", "-qw", &format!("{key}={value}")]);
        }
        name
    }

    /// The full name of the namespace made for `role`.
    pub fn ns(&self, role: &str) -> &str {
        self.namespaces
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, n)| n.as_str())
            .unwrap_or_else(|| panic!("lab {} has no namespace {role}", self.id))
    }

    /// A veth pair `a_if` (in `a_ns`) <-> `b_if` (in `b_ns`) with the given MAC addresses (or
    /// generated ones when empty), both up, with TSO/GSO/GRO and checksum offload off so that
    /// what a capture sees is what goes on the link.
    pub fn veth(
        &mut self,
        a_ns: &str,
        a_if: &str,
        a_mac: &str,
        b_ns: &str,
        b_if: &str,
        b_mac: &str,
    ) {
        let a_mac = self.mac_or_next(a_mac);
        let b_mac = self.mac_or_next(b_mac);
        crate::run_ok(Command::new("ip").args([
            "link", "add", "name", a_if, "netns", a_ns, "address", &a_mac, "type", "veth", "peer",
            "name", b_if, "netns", b_ns, "address", &b_mac,
        ]));
        for (ns, ifname) in [(a_ns, a_if), (b_ns, b_if)] {
            self.offloads_off(ns, ifname);
            self.exec_ok(ns, &["ip", "link", "set", ifname, "up"]);
        }
    }

    /// Turns off segmentation, receive and checksum offloads on `ifname`.
    pub fn offloads_off(&self, ns: &str, ifname: &str) {
        crate::require("ethtool");
        let out = self.exec(
            ns,
            &[
                "ethtool", "-K", ifname, "tx", "off", "rx", "off", "tso", "off", "gso", "off",
                "gro", "off",
            ],
        );
        // ethtool exits non-zero when a feature cannot change ("fixed"); the rest still apply.
        if !out.status.success()
            && !String::from_utf8_lossy(&out.stderr).contains("Could not change")
        {
            panic!(
                "ethtool -K {ifname} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn mac_or_next(&mut self, mac: &str) -> String {
        if !mac.is_empty() {
            return mac.to_string();
        }
        self.next_mac += 1;
        let n = self.next_mac.to_be_bytes();
        format!("02:77:01:{:02x}:{:02x}:{:02x}", n[1], n[2], n[3])
    }

    /// Adds an address (`10.77.0.1/24`, `fd77::1/64`) to `ifname`; IPv6 ones with `nodad`.
    pub fn addr(&self, ns: &str, ifname: &str, cidr: &str) {
        let mut cmd = vec!["ip", "addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            cmd.push("nodad");
        }
        self.exec_ok(ns, &cmd);
    }

    /// The MAC address of `ifname` in `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> String {
        let out = self.exec_ok(ns, &["cat", &format!("/sys/class/net/{ifname}/address")]);
        out.trim().to_string()
    }

    /// `ip netns exec ns cmd...`, waited for.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Output {
        run(netns_cmd(ns, cmd).stdin(Stdio::null()))
    }

    /// `ip netns exec ns cmd...`, which must succeed; returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> String {
        crate::run_ok(netns_cmd(ns, cmd).stdin(Stdio::null()))
    }

    /// Starts `cmd` in `ns` as its own process group, stdout and stderr to log files. The guard
    /// kills the whole group when dropped; the lab kills it too if the guard was leaked.
    pub fn spawn(&self, ns: &str, cmd: &[&str]) -> Proc {
        let name = cmd
            .first()
            .map(|c| {
                Path::new(c)
                    .file_name()
                    .map_or(*c, |f| f.to_str().unwrap_or(c))
            })
            .unwrap_or("proc")
            .to_string();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stdout = self.logs.join(format!("{name}-{n}.out"));
        let stderr = self.logs.join(format!("{name}-{n}.err"));
        let child = netns_cmd(ns, cmd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("log file"))
            .stderr(File::create(&stderr).expect("log file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {ns}: {e}"));
        let info = ProcInfo {
            pgid: child.id(),
            name: format!("{name} (pid {}, in {ns})", child.id()),
            stderr: stderr.clone(),
            alive: true,
        };
        self.procs.lock().expect("lab lock").push(info);
        Proc {
            child,
            name,
            stdout,
            stderr,
            procs: Arc::clone(&self.procs),
            reaped: None,
        }
    }

    /// A tmpfs of `size` (`20m`) mounted on a fresh directory, unmounted when the lab drops.
    pub fn mount_tmpfs(&mut self, size: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "twlab-tmpfs-{}-{}",
            self.id,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("tmpfs mount point");
        crate::run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&dir),
        );
        self.mounts.push(dir.clone());
        dir
    }

    /// A directory for the test's own files, removed with the lab.
    pub fn dir(&self) -> &Path {
        self.logs.path()
    }

    /// `ip -s link` of every namespace and the tail of every spawned process's stderr.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for (_, ns) in &self.namespaces {
            let out = run(Command::new("ip").args(["-n", ns, "-s", "link"]));
            s += &format!(
                "--- ip -n {ns} -s link\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for p in self.procs.lock().map(|p| p.clone()).unwrap_or_default() {
            s += &format!("--- stderr of {}\n{}\n", p.name, tail(&p.stderr, 4000));
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== lab {} diagnostics\n{}", self.id, self.diagnostics());
        }
        let procs = self.procs.lock().map(|p| p.clone()).unwrap_or_default();
        for p in procs.iter().filter(|p| p.alive) {
            kill_group(p.pgid);
        }
        for (_, ns) in &self.namespaces {
            kill_all_in(ns);
        }
        for m in &self.mounts {
            unmount(m);
        }
        for (_, ns) in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A process started by [`Lab::spawn`]; its whole process group is killed on drop.
pub struct Proc {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
    procs: Arc<Mutex<Vec<ProcInfo>>>,
    reaped: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the process itself, unless it was reaped.
    pub fn signal(&self, signal: &str) {
        if self.reaped.is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }

    /// The exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().expect("try_wait");
            if self.reaped.is_some() {
                self.mark_dead();
            }
        }
        self.reaped
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for it to exit; it must succeed within `timeout`. Returns stdout.
    pub fn wait_ok(&mut self, timeout: Duration) -> String {
        let status = self.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{} still running after {timeout:?}:\n{}",
                self.name,
                self.stderr()
            )
        });
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            self.name,
            self.stderr()
        );
        self.stdout()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        tail(&self.stderr, 8000)
    }

    /// Kills the whole process group and reaps the process. Only while the leader is not
    /// reaped (so its id cannot have been reused); whatever it left behind once reaped is still
    /// inside the lab's namespaces, which the lab empties when it drops.
    pub fn kill(&mut self) {
        if self.reaped.is_none() {
            kill_group(self.child.id());
            self.reaped = self.child.wait().ok();
            self.mark_dead();
        }
    }

    fn mark_dead(&self) {
        if let Ok(mut procs) = self.procs.lock() {
            for p in procs.iter_mut().filter(|p| p.pgid == self.child.id()) {
                p.alive = false;
            }
        }
    }

    /// How it ended when killed by a signal.
    pub fn signaled(&self) -> Option<i32> {
        self.reaped.and_then(|s| s.signal())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_until`], but returns `None` at the deadline instead of panicking.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn netns_cmd(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

fn kill_group(pgid: u32) {
    if pgid > 1 {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills every process still inside `ns` (daemons that left their process group).
fn kill_all_in(ns: &str) {
    for _ in 0..50 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unmount(dir: &Path) {
    for _ in 0..50 {
        let ok = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok || !is_mounted(dir) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_mounted(dir) {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
    let _ = std::fs::remove_dir(dir);
}

fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == dir.to_str())
}

/// Removes namespaces and mounts left by lab processes that died before their `Drop` ran.
fn remove_stale() {
    let dead = |name: &str| {
        name.split('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let p = Path::new(m);
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with("twlab-tmpfs-") && dead(n.trim_start_matches("twlab-tmpfs"))
        }) {
            unmount(p);
        }
    }
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && dead(&name) {
            kill_all_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let from = s.len().saturating_sub(max);
    String::from_utf8_lossy(&s[from..]).into_owned()
}
