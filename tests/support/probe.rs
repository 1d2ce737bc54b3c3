//! `tapwire-probe` under test: started in a lab namespace with its stats API on that
//! namespace's loopback, read through the API, stopped with SIGTERM.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{Lab, Proc, poll_until, wait_until};
use crate::{bin, require};

pub const PROBE_API: &str = "127.0.0.1:9751";
/// SIGTERM must end the probe cleanly; it notices within 100 ms and joins its threads.
pub const STOP_WITHIN: Duration = Duration::from_millis(2500);

/// How the probe under test sends, and what [`Probe::stop`] checks about it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SendPath {
    /// The default (`auto`), expected to end on the fast path (the transmit ring).
    Fast,
    /// `--send-path raw`.
    Raw,
    /// The default (`auto`); the test checks the path itself.
    Auto,
}

impl SendPath {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            SendPath::Fast | SendPath::Auto => &[],
            SendPath::Raw => &["--send-path", "raw"],
        }
    }
}

/// A running `tapwire-probe` with its stats API on the namespace's loopback.
pub struct Probe<'l> {
    lab: &'l Lab,
    ns: String,
    pub proc: Proc,
    path: SendPath,
}

impl<'l> Probe<'l> {
    /// Starts the probe sending on `path` and waits until every flow is running.
    pub fn start(lab: &'l Lab, ns: &str, path: SendPath, args: &[&str]) -> Probe<'l> {
        require("curl");
        let exe = bin("tapwire-probe");
        let mut cmd = vec![
            exe.to_str().unwrap(),
            "--stats",
            PROBE_API,
            "--stats-interval",
            "1s",
        ];
        cmd.extend_from_slice(path.args());
        cmd.extend_from_slice(args);
        Probe::spawned(lab, ns, path, lab.spawn(ns, &cmd))
    }

    pub fn spawned(lab: &'l Lab, ns: &str, path: SendPath, proc: Proc) -> Probe<'l> {
        let mut p = Probe {
            lab,
            ns: ns.to_string(),
            proc,
            path,
        };
        let running = poll_until(Duration::from_secs(15), || {
            if let Some(status) = p.proc.try_wait() {
                panic!(
                    "tapwire-probe exited at start ({status}):\n{}",
                    p.proc.stderr()
                );
            }
            let flows = p.try_flows()?;
            let all = flows["flows"].as_array()?;
            (!all.is_empty() && all.iter().all(|f| f["state"] == "running")).then_some(())
        });
        assert!(
            running.is_some(),
            "tapwire-probe's flows are not running after 15 s:\n{}",
            p.proc.stderr()
        );
        p
    }

    pub fn try_flows(&self) -> Option<Value> {
        let out = self.lab.exec(
            &self.ns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "3",
                &format!("http://{PROBE_API}/api/v1/flows"),
            ],
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The one flow's stats object.
    pub fn flow(&self) -> Value {
        let flows = self
            .try_flows()
            .unwrap_or_else(|| panic!("probe API does not answer:\n{}", self.proc.stderr()));
        flows["flows"][0].clone()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.flow()["counters"][name].as_u64().unwrap()
    }

    /// Waits until the flow's counter `name` holds still at a value for 300 ms.
    pub fn settled(&self, name: &str) -> u64 {
        let mut last = (u64::MAX, Instant::now());
        wait_until(
            Duration::from_secs(10),
            &format!("{name} to settle"),
            || {
                let v = self.counter(name);
                if v != last.0 {
                    last = (v, Instant::now());
                    None
                } else {
                    (last.1.elapsed() >= Duration::from_millis(300)).then_some(v)
                }
            },
        )
    }

    pub fn metrics(&self) -> String {
        let out = self.lab.exec(
            &self.ns,
            &["curl", "-sSf", &format!("http://{PROBE_API}/metrics")],
        );
        assert!(out.status.success(), "GET /metrics");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The flow sent on the path it was started for: with the fast path, through the transmit
    /// ring (all but the datagrams that confirm a stale neighbour entry); with the raw socket
    /// forced, nothing through the ring. Shown in the API and in Prometheus.
    pub fn assert_send_path(&self) {
        let flow = self.flow();
        let (sent, fast) = (
            flow["counters"]["sent"].as_u64().unwrap(),
            flow["counters"]["sent_fast"].as_u64().unwrap(),
        );
        let send = &flow["send"];
        let metrics = self.metrics();
        let name = flow["name"].as_str().unwrap();
        match self.path {
            SendPath::Fast => {
                assert_eq!(send["path"], "fast", "{flow}");
                assert!(
                    sent == 0 || fast > 0,
                    "sent {sent}, {fast} of them fast: {flow}"
                );
                assert!(
                    metrics.contains(&format!(
                        "tapwire_probe_sent_fast_packets_total{{flow=\"{name}\"}} {fast}"
                    )),
                    "{metrics}"
                );
            }
            SendPath::Raw => {
                assert_eq!(send["path"], "raw", "{flow}");
                assert_eq!(send["reason_code"], "forced", "{flow}");
                assert_eq!(fast, 0, "{flow}");
                assert!(
                    metrics.contains(&format!(
                        "tapwire_probe_send_path_info{{flow=\"{name}\",mode=\"raw\",path=\"raw\",reason=\"forced\""
                    )),
                    "{metrics}"
                );
            }
            SendPath::Auto => {}
        }
    }

    /// Checks the send path ([`Probe::assert_send_path`]), then SIGTERM; it must exit
    /// successfully within [`STOP_WITHIN`]. Returns its stderr.
    pub fn stop(mut self) -> String {
        self.assert_send_path();
        self.proc.signal("TERM");
        let status = self.proc.wait_timeout(STOP_WITHIN).unwrap_or_else(|| {
            panic!(
                "tapwire-probe still running {STOP_WITHIN:?} after SIGTERM:\n{}",
                self.proc.stderr()
            )
        });
        assert!(
            status.success(),
            "tapwire-probe exited with {status}:\n{}",
            self.proc.stderr()
        );
        self.proc.stderr()
    }
}
