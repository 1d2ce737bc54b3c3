//! The probe's shapes: the definition of one mirroring flow (what a configuration file or, later,
//! a controller hands a probe) and the stats a probe serves on `GET /api/v1/flows`.
//!
//! A [`FlowSpec`] is complete: every field has its value, no defaults are inherited. The probe
//! validates it (ranges, filter syntax) before starting the flow; flows are started and stopped
//! one by one, so a controller can add or remove one without disturbing the others.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the probe's stats API listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9751";
pub const FLOWS_PATH: &str = "/api/v1/flows";

/// Which packets of an interface a flow takes, seen from the host that owns the interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received on the interface (ERSPAN ingress).
    In,
    /// Sent on the interface (ERSPAN egress).
    Out,
    #[default]
    Both,
}

/// The encapsulation towards the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encapsulation {
    #[default]
    ErspanIi,
    ErspanIii,
    /// GRE transparent Ethernet bridging, key = session id, with a sequence number.
    Gre,
}

impl Encapsulation {
    /// The name used on the command line, in files and in the collector's source keys.
    pub fn name(self) -> &'static str {
        match self {
            Encapsulation::ErspanIi => "erspan-ii",
            Encapsulation::ErspanIii => "erspan-iii",
            Encapsulation::Gre => "gre",
        }
    }
}

/// How ERSPAN Type III carries the capture time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErspanTime {
    /// 100 ns ticks since the epoch (granularity 1, platform sub-header 3 holds the upper bits).
    #[default]
    #[serde(rename = "100ns")]
    Nanos100,
    /// IEEE 1588: nanoseconds in the header, seconds in platform sub-header 5.
    #[serde(rename = "ieee1588")]
    Ieee1588,
}

/// One mirroring flow: an interface, what to take from it, and where to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Unique among the probe's flows; names the flow in logs, stats and metrics.
    pub name: String,
    /// A VM tap, a bridge, a physical NIC.
    pub interface: String,
    pub direction: Direction,
    /// Only frames whose outermost 802.1Q tag carries one of these VLAN ids; empty: every frame.
    pub vlans: Vec<u16>,
    /// With `vlans`: also frames without a tag.
    pub untagged: bool,
    /// tcpdump syntax, compiled by libpcap and run in the kernel.
    pub filter: Option<String>,
    /// Keep at most this many bytes of each frame (the ERSPAN T bit is set on cut frames).
    pub snaplen: Option<u32>,
    /// Mirror one packet in `sample` (1: every packet).
    pub sample: u32,
    /// Packets per second sent at most (token bucket); the excess is counted and dropped.
    pub rate_pps: Option<u64>,
    /// Bits per second sent at most, counting the whole encapsulated IP datagram.
    pub rate_bps: Option<u64>,
    /// Depth of the token buckets, as time at the configured rate.
    pub burst_ms: u32,
    /// ERSPAN session id, or the GRE key (0 to 1023).
    pub session: u16,
    pub collector: IpAddr,
    pub encap: Encapsulation,
    /// ERSPAN Type III hardware id (0 to 63).
    pub hardware_id: u8,
    pub erspan_time: ErspanTime,
    /// Put the interface in promiscuous mode while the flow runs (other stations' traffic on
    /// a bridge or a physical NIC).
    pub promiscuous: bool,
    /// Capture threads sharing the interface through PACKET_FANOUT.
    pub threads: u16,
    /// TPACKET_V3 block size (a power of two, a multiple of the page size).
    pub block_size_bytes: u32,
    pub block_count: u32,
    /// A block is handed to the probe at the latest this long after its first packet: the
    /// bound on added latency at low rates.
    pub block_timeout_ms: u32,
    /// The path MTU towards the collector; `None`: learnt from the route.
    pub mtu: Option<u32>,
}

/// What a flow is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// Opening its capture ring.
    Starting,
    Running,
    /// The interface does not exist (yet, or any more); retried every second.
    Waiting,
    /// The interface is down; capture resumes when it comes up.
    Down,
    /// Opening the ring failed for another reason; retried every second.
    Error,
    Stopped,
}

/// Counters of one flow since it started. Each packet the ring hands over is counted as
/// `captured` and then in exactly one of `filtered_out`, `sampled_out`, `rate_limited`,
/// `sent` and `send_errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    /// Packets that passed the kernel filter and reached the probe.
    pub captured: u64,
    /// Their length on the wire.
    pub captured_bytes: u64,
    /// Dropped in user space because of their direction or VLAN.
    pub filtered_out: u64,
    /// Not taken by 1-in-N sampling.
    pub sampled_out: u64,
    /// Over the rate limit.
    pub rate_limited: u64,
    /// Dropped by the kernel because the ring was full (PACKET_STATISTICS).
    pub kernel_drops: u64,
    /// Encapsulated datagrams the kernel accepted.
    pub sent: u64,
    /// Encapsulated bytes sent (GRE header onwards; the outer IP header is not counted).
    pub sent_bytes: u64,
    /// Datagrams the kernel refused (no route, message too long, ...).
    pub send_errors: u64,
    /// Frames sent cut (snaplen or path MTU), with the ERSPAN T bit.
    pub truncated: u64,
    /// Times the capture ring was opened again after the interface disappeared.
    pub reopened: u64,
    /// Of `sent`: datagrams sent as complete frames through the transmit ring (the fast path);
    /// the rest went through the raw socket.
    #[serde(default)]
    pub sent_fast: u64,
    /// Times the way to the collector changed (path, interface, next hop or its MAC, source).
    #[serde(default)]
    pub path_changes: u64,
}

/// How a flow's datagrams leave the host now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendPathStats {
    /// As configured: `auto`, `fast` or `raw`.
    pub mode: String,
    /// In use: `fast` (complete frames through an AF_PACKET transmit ring) or `raw` (the raw
    /// GRE socket, the kernel's IP output).
    pub path: String,
    /// Why the raw socket is used, as a stable code (`next_hop_unresolved`, `link_down`,
    /// `forced`, ...), when it is.
    pub reason_code: Option<String>,
    /// The same in words.
    pub reason: Option<String>,
    /// The egress interface, next hop and its MAC, outer source address and path MTU, when
    /// the fast path is in use.
    pub interface: Option<String>,
    pub next_hop: Option<String>,
    pub next_hop_mac: Option<String>,
    pub source: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStats {
    pub name: String,
    pub interface: String,
    pub collector: String,
    pub encap: Encapsulation,
    pub session: u16,
    pub state: FlowState,
    /// The last problem (interface gone, send error), if any.
    pub error: Option<String>,
    /// The largest GRE payload sent: path MTU less the outer IP header.
    pub max_payload_bytes: u32,
    pub counters: FlowCounters,
    #[serde(default)]
    pub send: SendPathStats,
}

/// `GET /api/v1/flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStats {
    pub version: String,
    pub started: String,
    pub uptime_s: f64,
    pub flows: Vec<FlowStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire() {
        let e: Encapsulation = serde_json::from_str("\"erspan-iii\"").expect("kebab");
        assert_eq!(e, Encapsulation::ErspanIii);
        assert_eq!(e.name(), "erspan-iii");
        assert_eq!(
            serde_json::to_string(&ErspanTime::Nanos100).expect("json"),
            "\"100ns\""
        );
        assert_eq!(
            serde_json::to_string(&FlowState::Waiting).expect("json"),
            "\"waiting\""
        );
    }
}
