//! The shapes of tapwire's HTTP APIs, shared by the collector (which serves them), the terminal
//! UI, the probe and the command line (which read them): plain serde types. Beside them, the few
//! pure rules both ends apply: a flow's fields ([`flow`]), names ([`control::validate_name`]),
//! merge patches, timestamps ([`time`]) and the Prometheus text ([`metrics`]).
//!
//! `GET /api/v1/sessions` returns a [`Snapshot`], one [`Page`] of its sessions at a time;
//! counters are totals since the collector started, `rates` are measured over the last 1 and
//! 10 seconds.

pub mod control;
pub mod flow;
pub mod metrics;
pub mod probe;
pub mod time;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const DEFAULT_ADDR: &str = "127.0.0.1:9750";
pub const SESSIONS_PATH: &str = "/api/v1/sessions";
/// How the `opt_comment` of a live stream's last statistics blocks starts; the rest says why
/// the collector ended it ("the session was deleted", "the collector is stopping").
pub const STREAM_END_COMMENT: &str = "tapwire: the stream ended: ";
/// Sessions in a page of `GET /api/v1/sessions` when the request names no `limit`.
pub const DEFAULT_PAGE_SESSIONS: usize = 100;
/// Sources listed per session when the request names no `sources` (`GET /api/v1/sessions`)
/// or no `limit` (`GET /api/v1/sessions/{name}`).
pub const DEFAULT_PAGE_SOURCES: usize = 100;
/// The largest `limit` and `sources` a request may ask for; larger values are cut to it.
pub const MAX_PAGE: usize = 1000;

/// Packets and bits per second over the last 1 and 10 seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub pps_1s: f64,
    pub bps_1s: f64,
    pub pps_10s: f64,
    pub bps_10s: f64,
}

/// Packets tapwire itself did not write, by reason. Each is its own counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// The session is disabled.
    pub disabled: u64,
    /// The session's inner filter did not match.
    pub filter: u64,
    /// The minimum-free-disk guard was holding writes.
    pub disk_guard: u64,
    /// Encoded, but the file system was full when their buffer was written.
    #[serde(default)]
    pub disk_full: u64,
    /// The output could not be opened or written (directory gone, read-only, not a directory).
    pub write_error: u64,
    /// The disk thread was too far behind; buffered data would have exceeded the bound.
    pub backlog: u64,
    /// No session took the source and auto-discovery is off.
    pub no_session: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.disabled
            + self.filter
            + self.disk_guard
            + self.disk_full
            + self.write_error
            + self.backlog
            + self.no_session
    }
}

/// Packets refused before a source was made for them, by reason: nothing of them is kept, and
/// no session, file or table entry exists for them. Per input and in the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// The outer source is outside the allow-list (`--allow`); by address in
    /// [`Totals::refused`].
    pub not_allowed: u64,
    /// No session takes the source and auto-discovery is off (also in [`Drops::no_session`]
    /// of the totals).
    pub no_session: u64,
    /// Auto-discovery would have made a session past `--max-auto-sessions`.
    pub auto_session_cap: u64,
    /// The source table was full (`--max-sources`) with no entry that could give way.
    pub source_table_full: u64,
}

impl Refusals {
    pub fn total(&self) -> u64 {
        self.not_allowed + self.no_session + self.auto_session_cap + self.source_table_full
    }

    /// Each counter with its reason's name, as `/metrics` labels it.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("not_allowed", self.not_allowed),
            ("no_session", self.no_session),
            ("auto_session_cap", self.auto_session_cap),
            ("source_table_full", self.source_table_full),
        ]
    }

    pub fn add(&mut self, o: &Refusals) {
        self.not_allowed += o.not_allowed;
        self.no_session += o.no_session;
        self.auto_session_cap += o.auto_session_cap;
        self.source_table_full += o.source_table_full;
    }
}

/// Sources and auto-discovered sessions removed after `--idle-timeout` without a packet (or,
/// for sources, to make room in a full table). Their counters stay in the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    pub sources: u64,
    /// Sources removed from a full table to make room for a new one.
    pub sources_evicted: u64,
    pub auto_sessions: u64,
}

/// How a source's sequence numbers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sequence {
    None,
    PerSource,
    SharedBySender,
}

/// ERSPAN header fields seen on a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErspanSeen {
    /// VLANs carried in the header, with packet counts (bounded list).
    pub vlans: BTreeMap<u16, u64>,
    pub ingress: u64,
    pub egress: u64,
    pub hardware_ids: BTreeMap<u8, u64>,
}

/// The inner protocol mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolMix {
    pub ipv4: u64,
    pub ipv6: u64,
    pub arp: u64,
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub src: String,
    pub kind: String,
    pub id: u32,
    /// `10.0.0.5 erspan-ii session 42`.
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub truncated: u64,
    /// Frames kept although their GRE checksum did not verify (`collect --strict-gre-checksum`
    /// drops them instead, as malformed `gre_checksum`).
    #[serde(default)]
    pub gre_checksum_bad: u64,
    pub sequence: Sequence,
    pub drops: Drops,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub rates: Rates,
    #[serde(default)]
    pub erspan: Option<ErspanSeen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Packets arrived in the last 5 seconds.
    Receiving,
    Idle,
    Disabled,
    /// An output cannot be written.
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    pub dir: String,
    pub format: String,
    /// The file being written, if one is open.
    pub current: Option<String>,
    pub current_bytes: u64,
    pub files_finished: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub name: String,
    pub state: SessionState,
    pub enabled: bool,
    /// Created for a source no configured session took.
    pub auto: bool,
    pub filter: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Packets on disk: counted when the disk thread has written the block holding them.
    pub written: u64,
    /// Packets accepted for the session's file but not yet on disk (buffered, or queued for
    /// the disk thread). `packets = written + pending + drops.total()`.
    #[serde(default)]
    pub pending: u64,
    pub lost: u64,
    pub truncated: u64,
    /// Over the session's sources: frames kept although their GRE checksum did not verify.
    #[serde(default)]
    pub gre_checksum_bad: u64,
    pub drops: Drops,
    pub rates: Rates,
    pub last_seen: Option<String>,
    pub files: Option<FileStats>,
    /// Its sources, ordered by `<src>_<kind>_<id>`; a page of them (see [`Page`]).
    pub sources: Vec<SourceStats>,
    /// How many sources the session has, listed or not.
    #[serde(default)]
    pub n_sources: u64,
    /// Over HTTP: where the page of `sources` stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources_page: Option<Page>,
    #[serde(default)]
    pub protocols: ProtocolMix,
    /// Inner IP addresses with the most bytes, largest first.
    #[serde(default)]
    pub top_talkers: Vec<Talker>,
    /// The session's monitor interface, if it has one.
    #[serde(default)]
    pub tap: Option<TapStats>,
    /// Its live streams (`GET /api/v1/sessions/{name}/stream`).
    #[serde(default)]
    pub streams: StreamStats,
}

/// A session's live streams. Their drops are their own: files are unaffected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Packets queued for subscribers since the collector started, each subscriber counted.
    pub delivered: u64,
    /// Packets dropped for subscribers that read too slowly, each subscriber counted.
    pub dropped: u64,
    /// The subscribers now.
    pub subscribers: Vec<StreamSubscriber>,
}

/// One live stream of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSubscriber {
    /// The client's address.
    pub peer: String,
    /// Its capture filter.
    pub filter: Option<String>,
    /// When it started (RFC 3339).
    pub since: String,
    /// Packets queued for it (before its filter).
    pub delivered: u64,
    /// Packets dropped because it read too slowly.
    pub dropped: u64,
    /// What it has queued and not yet read.
    pub queued_bytes: u64,
}

impl SessionStats {
    /// How many sources the session has: `n_sources`, or the list's length from a collector
    /// that does not say.
    pub fn source_count(&self) -> u64 {
        self.n_sources.max(self.sources.len() as u64)
    }
}

/// A session's TAP output. Its drops are its own: files are unaffected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapStats {
    pub name: String,
    pub netns: Option<String>,
    pub written: u64,
    /// Frames dropped because the TAP's queue was full.
    pub tap_dropped: u64,
    /// Writes the kernel refused.
    pub errors: u64,
    /// Frames the TAP's own filter (or a non-Ethernet link type) kept off the TAP.
    pub filtered: u64,
    /// Why the TAP could not be created, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Talker {
    pub addr: String,
    pub bytes: u64,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputStats {
    /// `gre-v4 0.0.0.0`, `udp 4789 [::]`, `af_packet eth1 #0`.
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// Dropped by the kernel before tapwire read them (SO_RXQ_OVFL, PACKET_STATISTICS).
    /// tapwire itself never drops what an input read: a thread whose batches the engine has
    /// not returned stops reading, and the kernel's queue takes the overflow.
    pub kernel_drops: u64,
    /// What this input read that was refused before a source was made.
    #[serde(default)]
    pub refusals: Refusals,
    pub error: Option<String>,
    pub rates: Rates,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub decapsulated: u64,
    pub written: u64,
    #[serde(default)]
    pub pending: u64,
    pub lost: u64,
    pub kernel_drops: u64,
    pub drops: Drops,
    /// Over all inputs: packets refused before a source was made, by reason.
    #[serde(default)]
    pub refusals: Refusals,
    /// Sources and auto-discovered sessions removed so far.
    #[serde(default)]
    pub expired: Expired,
    pub not_mirror: BTreeMap<String, u64>,
    pub malformed: BTreeMap<String, u64>,
    /// Packets refused by the source allow-list, by outer address (bounded; the rest under
    /// `other`).
    pub refused: BTreeMap<String, u64>,
    /// Sources in the table now.
    pub sources: u64,
    /// Sessions now: configured and auto-discovered (all of them, whatever the page holds).
    #[serde(default)]
    pub sessions: u64,
    pub rates: Rates,
    /// Outer IP fragment reassembly (AF_PACKET inputs; raw sockets get datagrams whole).
    #[serde(default)]
    pub defrag: Defrag,
}

/// What outer fragment reassembly did since the collector started; each its own counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defrag {
    /// Fragments received.
    pub fragments: u64,
    /// Fragments that did not complete a datagram: stored until the rest arrives (or an
    /// identical repeat of one stored).
    pub held: u64,
    /// Datagrams completed and decapsulated.
    pub reassembled: u64,
    /// Incomplete datagrams dropped because they timed out.
    pub evicted_timeout: u64,
    /// Incomplete datagrams dropped to stay within the memory or count bound.
    pub evicted_memory: u64,
    /// Fragments refused: overlapping with different bytes, or past the maximum size.
    pub invalid: u64,
    /// Datagrams waiting for fragments now.
    pub pending_datagrams: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub started: String,
    pub uptime_s: f64,
    pub totals: Totals,
    pub inputs: Vec<InputStats>,
    /// Ordered by name; over HTTP, one page of them.
    pub sessions: Vec<SessionStats>,
    /// The control plane (`collect --db`): this collector's name in its fleet and whether its
    /// database answers. Absent without `--db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlInfo>,
    /// Over HTTP: where this page of sessions stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
}

/// The control plane as a snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlInfo {
    pub state: control::ControlState,
    /// This collector's `--name`.
    pub collector: String,
}

/// A page of a list: `next` is the cursor to pass as `after` for the following page (the last
/// name or source on this one), `None` on the last page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Entries in the whole list.
    pub total: u64,
    pub limit: u64,
    pub next: Option<String>,
}

/// The cursor of a source in its session's list (its file stem): `<src>_<kind>_<id>`.
pub fn source_cursor(s: &SourceStats) -> String {
    format!("{}_{}_{}", s.src, s.kind, s.id)
}

/// What `POST /api/v1/sessions/{name}/{action}` may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Enable,
    Disable,
    Rotate,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "enable" => Some(Action::Enable),
            "disable" => Some(Action::Disable),
            "rotate" => Some(Action::Rotate),
            _ => None,
        }
    }
}

/// The answer to an action or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub ok: bool,
    pub message: String,
}
