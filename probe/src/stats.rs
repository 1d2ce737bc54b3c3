//! Counters shared between a capture thread and the rest of the probe, and their renderings:
//! the periodic stats line and Prometheus text.
//!
//! A capture thread counts in plain integers and adds them to its [`SharedCounters`] once per
//! block (relaxed atomics: they are statistics, read at any time, never used to synchronise).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tapwire_api_types::metrics::{Kind, Text};
use tapwire_api_types::probe::{FlowCounters, FlowState, FlowStats, ProbeStats, SendPathStats};

#[derive(Debug, Default)]
pub struct SharedCounters {
    captured: AtomicU64,
    captured_bytes: AtomicU64,
    filtered_out: AtomicU64,
    sampled_out: AtomicU64,
    rate_limited: AtomicU64,
    kernel_drops: AtomicU64,
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    send_errors: AtomicU64,
    truncated: AtomicU64,
    reopened: AtomicU64,
    sent_fast: AtomicU64,
    path_changes: AtomicU64,
}

macro_rules! each_counter {
    ($m:ident) => {
        $m!(
            captured,
            captured_bytes,
            filtered_out,
            sampled_out,
            rate_limited,
            kernel_drops,
            sent,
            sent_bytes,
            send_errors,
            truncated,
            reopened,
            sent_fast,
            path_changes
        )
    };
}

impl SharedCounters {
    /// Adds `c` to the totals.
    pub fn add(&self, c: &FlowCounters) {
        macro_rules! add {
            ($($f:ident),*) => { $( if c.$f != 0 { self.$f.fetch_add(c.$f, Ordering::Relaxed); } )* };
        }
        each_counter!(add);
    }

    pub fn load(&self) -> FlowCounters {
        macro_rules! load {
            ($($f:ident),*) => { FlowCounters { $( $f: self.$f.load(Ordering::Relaxed) ),* } };
        }
        each_counter!(load)
    }
}

/// Sums counters of several threads.
pub fn sum(a: &FlowCounters, b: &FlowCounters) -> FlowCounters {
    macro_rules! add {
        ($($f:ident),*) => { FlowCounters { $( $f: a.$f + b.$f ),* } };
    }
    each_counter!(add)
}

/// A capture thread's state, as the rest of the probe sees it.
#[derive(Debug)]
pub struct Status {
    inner: Mutex<(FlowState, Option<String>, u32)>,
    send: Mutex<SendPathStats>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            inner: Mutex::new((FlowState::Starting, None, 0)),
            send: Mutex::new(SendPathStats::default()),
        }
    }
}

impl Status {
    pub fn set(&self, state: FlowState, error: Option<String>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = state;
        // The last problem stays visible after recovery, until another replaces it.
        if error.is_some() {
            g.1 = error;
        }
    }

    pub fn set_max_payload(&self, bytes: u32) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).2 = bytes;
    }

    pub fn get(&self) -> (FlowState, Option<String>, u32) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How the thread's datagrams leave now.
    pub fn set_send(&self, send: SendPathStats) {
        *self.send.lock().unwrap_or_else(|p| p.into_inner()) = send;
    }

    pub fn send(&self) -> SendPathStats {
        self.send.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The send path in a few words: `fast via up0 to 10.0.0.1 (02:..)`, `raw (reason)`.
pub fn send_path_text(s: &SendPathStats) -> String {
    match s.path.as_str() {
        "fast" => format!(
            "fast via {} to {} ({})",
            s.interface.as_deref().unwrap_or("?"),
            s.next_hop.as_deref().unwrap_or("?"),
            s.next_hop_mac.as_deref().unwrap_or("?")
        ),
        "raw" => format!("raw ({})", s.reason.as_deref().unwrap_or("no reason given")),
        _ => "not sending yet".into(),
    }
}

/// The state of a flow from its threads' states: the least healthy one wins.
pub fn worst(states: impl IntoIterator<Item = FlowState>) -> FlowState {
    let rank = |s: FlowState| match s {
        FlowState::Running => 0,
        FlowState::Stopped => 1,
        FlowState::Starting => 2,
        FlowState::Down => 3,
        FlowState::Waiting => 4,
        FlowState::Error => 5,
    };
    states
        .into_iter()
        .max_by_key(|s| rank(*s))
        .unwrap_or(FlowState::Stopped)
}

/// One line per flow: the totals and the rates since `prev` (the totals `secs` ago).
pub fn line(f: &FlowStats, prev: Option<&FlowCounters>, secs: f64) -> String {
    let c = &f.counters;
    let rate = |now: u64, then: Option<u64>| match then {
        Some(t) if secs > 0.0 => (now.saturating_sub(t)) as f64 / secs,
        _ => 0.0,
    };
    let mut s = format!(
        "flow {} on {} -> {} {} session {}: {:?}; captured {} sent {} ({:.0} pps, {:.1} Mbit/s)",
        f.name,
        f.interface,
        f.collector,
        f.encap.name(),
        f.session,
        f.state,
        c.captured,
        c.sent,
        rate(c.sent, prev.map(|p| p.sent)),
        rate(c.sent_bytes, prev.map(|p| p.sent_bytes)) * 8.0 / 1e6,
    );
    let _ = write!(
        s,
        "; filtered {} sampled-out {} rate-limited {} kernel-drops {} send-errors {} truncated {}",
        c.filtered_out, c.sampled_out, c.rate_limited, c.kernel_drops, c.send_errors, c.truncated
    );
    let _ = write!(
        s,
        "; path {}, {} of the sent fast",
        send_path_text(&f.send),
        c.sent_fast
    );
    if let Some(e) = &f.error {
        let _ = write!(s, "; last error: {e}");
    }
    s
}

/// A counter series: name, help, and how to read it from a flow's counters.
type Series = (&'static str, &'static str, fn(&FlowCounters) -> u64);

/// Prometheus text exposition. Labels: the flow name (chosen by the operator) and, on the info
/// series, its interface, collector and encapsulation.
pub fn prometheus(p: &ProbeStats) -> String {
    let mut t = Text::new();
    t.family(
        "tapwire_probe_uptime_seconds",
        Kind::Gauge,
        "Seconds since the probe started.",
    )
    .sample("tapwire_probe_uptime_seconds", &[], p.uptime_s);
    t.family(
        "tapwire_probe_flow_info",
        Kind::Gauge,
        "A flow and where it sends; the value is 1 while it runs.",
    );
    for f in &p.flows {
        t.sample(
            "tapwire_probe_flow_info",
            &[
                ("flow", &f.name),
                ("interface", &f.interface),
                ("collector", &f.collector),
                ("encap", f.encap.name()),
                ("session", &f.session.to_string()),
            ],
            u8::from(f.state == FlowState::Running),
        );
    }
    t.family(
        "tapwire_probe_send_path_info",
        Kind::Gauge,
        "How a flow's datagrams leave: path fast (transmit ring) or raw (raw socket), and why raw.",
    );
    for f in &p.flows {
        t.sample(
            "tapwire_probe_send_path_info",
            &[
                ("flow", &f.name),
                ("mode", &f.send.mode),
                ("path", &f.send.path),
                ("reason", f.send.reason_code.as_deref().unwrap_or("")),
                ("interface", f.send.interface.as_deref().unwrap_or("")),
            ],
            1,
        );
    }
    let series: [Series; 13] = [
        (
            "captured_packets_total",
            "Packets that passed the kernel filter.",
            |c| c.captured,
        ),
        (
            "captured_bytes_total",
            "Wire bytes of the captured packets.",
            |c| c.captured_bytes,
        ),
        (
            "filtered_out_packets_total",
            "Dropped in user space for their direction or VLAN.",
            |c| c.filtered_out,
        ),
        (
            "sampled_out_packets_total",
            "Not taken by 1-in-N sampling.",
            |c| c.sampled_out,
        ),
        (
            "rate_limited_packets_total",
            "Over the flow's rate limit.",
            |c| c.rate_limited,
        ),
        (
            "kernel_drops_total",
            "Dropped by the kernel: the capture ring was full.",
            |c| c.kernel_drops,
        ),
        ("sent_packets_total", "Encapsulated datagrams sent.", |c| {
            c.sent
        }),
        (
            "sent_bytes_total",
            "Encapsulated bytes sent (GRE header onwards).",
            |c| c.sent_bytes,
        ),
        (
            "send_errors_total",
            "Datagrams the kernel refused to send.",
            |c| c.send_errors,
        ),
        (
            "truncated_packets_total",
            "Frames sent cut (snaplen or path MTU).",
            |c| c.truncated,
        ),
        (
            "ring_reopened_total",
            "Capture rings opened again after the interface disappeared.",
            |c| c.reopened,
        ),
        (
            "sent_fast_packets_total",
            "Of the datagrams sent, those sent as complete frames through the transmit ring.",
            |c| c.sent_fast,
        ),
        (
            "path_changes_total",
            "Times the way to the collector changed (path, interface, next hop, MAC, source).",
            |c| c.path_changes,
        ),
    ];
    for (name, help, get) in series {
        let name = format!("tapwire_probe_{name}");
        t.family(&name, Kind::Counter, help);
        for f in &p.flows {
            t.sample(&name, &[("flow", &f.name)], get(&f.counters));
        }
    }
    t.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_api_types::probe::Encapsulation;

    fn flow(name: &str, captured: u64) -> FlowStats {
        FlowStats {
            name: name.into(),
            interface: "tap0".into(),
            collector: "192.0.2.9".into(),
            encap: Encapsulation::ErspanIii,
            session: 7,
            state: FlowState::Running,
            error: None,
            max_payload_bytes: 1480,
            counters: FlowCounters {
                captured,
                sent: captured,
                sent_bytes: captured * 100,
                sent_fast: captured / 2,
                ..FlowCounters::default()
            },
            send: SendPathStats {
                mode: "auto".into(),
                path: "raw".into(),
                reason_code: Some("next_hop_unresolved".into()),
                reason: Some("next hop 192.0.2.1 unresolved (INCOMPLETE)".into()),
                ..SendPathStats::default()
            },
        }
    }

    #[test]
    fn shared_counters_add_up() {
        let s = SharedCounters::default();
        let c = FlowCounters {
            captured: 3,
            sent: 2,
            rate_limited: 1,
            ..FlowCounters::default()
        };
        s.add(&c);
        s.add(&c);
        let t = s.load();
        assert_eq!((t.captured, t.sent, t.rate_limited), (6, 4, 2));
        assert_eq!(sum(&t, &c).captured, 9);
    }

    #[test]
    fn worst_state_wins() {
        use FlowState::*;
        assert_eq!(worst([Running, Down, Running]), Down);
        assert_eq!(worst([Running, Error, Waiting]), Error);
        assert_eq!(worst([]), Stopped);
    }

    #[test]
    fn line_and_metrics() {
        let f = flow("vm\"1", 1000);
        let prev = FlowCounters {
            sent: 500,
            sent_bytes: 50_000,
            ..FlowCounters::default()
        };
        let l = line(&f, Some(&prev), 10.0);
        assert!(
            l.contains("captured 1000 sent 1000 (50 pps, 0.0 Mbit/s)"),
            "{l}"
        );
        assert!(!l.contains('\n'));
        assert!(
            l.contains(
                "path raw (next hop 192.0.2.1 unresolved (INCOMPLETE)), 500 of the sent fast"
            ),
            "{l}"
        );
        let p = ProbeStats {
            version: "0".into(),
            started: "now".into(),
            uptime_s: 1.5,
            flows: vec![f, flow("b", 2)],
        };
        let m = prometheus(&p);
        assert!(
            m.contains("tapwire_probe_sent_packets_total{flow=\"vm\\\"1\"} 1000"),
            "{m}"
        );
        assert!(m.contains("tapwire_probe_captured_packets_total{flow=\"b\"} 2"));
        assert!(m.contains("encap=\"erspan-iii\""));
        assert!(
            m.contains("tapwire_probe_send_path_info{flow=\"b\",mode=\"auto\",path=\"raw\",reason=\"next_hop_unresolved\",interface=\"\"} 1"),
            "{m}"
        );
        assert!(m.contains("tapwire_probe_sent_fast_packets_total{flow=\"b\"} 1"));
        // Every sample line is `name{labels} value` or `name value`.
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().expect("value");
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
