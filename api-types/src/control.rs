//! The control plane's shapes (`tapwire collect --db`): session and flow definitions, probes,
//! tokens, the audit log, and the probe sync protocol.
//!
//! Requests refuse unknown fields, so a misspelt field is a 400 that names it rather than a
//! setting silently ignored. Answers are plain data for the CLI's tables and `--json`.

use serde::{Deserialize, Serialize};

use crate::probe::{Direction, Encapsulation, FlowSpec, FlowStats, ProbeStats};

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
pub const REGISTER_PATH: &str = "/api/v1/probes/register";
/// The longest a probe's long-poll for its flows is held open.
pub const MAX_WAIT_S: u64 = 60;
/// The default wait of a long-poll.
pub const DEFAULT_WAIT_S: u64 = 25;
/// The largest body of a probe's registration or stats report: a flow's stats take about
/// 330 bytes (64 flows, the default limit of a probe, about 21 KB), so this holds some 390
/// flows; what the controller keeps per probe is bounded by it.
pub const MAX_PROBE_BODY_BYTES: usize = 128 << 10;
/// Interfaces a probe names when it registers (a hypervisor's VM taps); it sends no more.
pub const MAX_INTERFACES: usize = 4096;

/// What a token may do. Each role includes the ones before it, except `probe`, which may only
/// speak the probe protocol (register, fetch its flows, report stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Probe,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Probe => "probe",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "probe" => Some(Role::Probe),
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The names of sessions, probes and tokens: session names become file names, so all keep to
/// a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err("use letters, digits, '-', '_', '.', ':' and do not start with '.'".into());
    }
    Ok(())
}

/// `POST /api/v1/sessions`: a session managed through the API. Its one source rule is
/// "kind `encap`, id `mirror_id`, from any address": what the flows that target it send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    pub name: String,
    /// How probes encapsulate traffic for this session [default: erspan-ii].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<Encapsulation>,
    /// ERSPAN session id / GRE key, 1 to 1023 [default: the lowest free one].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// tcpdump syntax on the inner frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The `files` of a configuration file's `[[session]]` (a table, or `false` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<serde_json::Value>,
    /// The `tap` of a `[[session]]`: a name, or a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<serde_json::Value>,
    /// The collector that runs it (`--name` of a collector of the fleet), or `auto` (the
    /// default): the least loaded live collector, and another when that one dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
}

/// The `collector` of a session that is placed by the fleet rather than pinned.
pub const AUTO: &str = "auto";

/// `PATCH /api/v1/sessions/{name}`: a JSON merge patch (RFC 7386) of the definition. A field
/// left out stays as it is; `filter: Some(None)` (`null`) removes the filter, and a `null`
/// `files` or `tap` removes those.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap: Option<Encapsulation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Option<String>>,
    /// Merged into the stored `files` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap: Option<serde_json::Value>,
    /// A collector's name, or `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(
    target: Option<serde_json::Value>,
    patch: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            let mut t = match target {
                Some(Value::Object(t)) => t,
                _ => serde_json::Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    let merged = merge_patch(t.remove(k), v);
                    t.insert(k.clone(), merged);
                }
            }
            Value::Object(t)
        }
        other => other.clone(),
    }
}

/// A stored session definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: String,
    pub encap: Encapsulation,
    pub mirror_id: u32,
    pub enabled: bool,
    pub filter: Option<String>,
    pub files: Option<serde_json::Value>,
    pub tap: Option<serde_json::Value>,
    /// Flows that target it.
    pub flows: Vec<String>,
    pub created: String,
    pub updated: String,
    /// The collector it is pinned to, or `auto`.
    #[serde(default = "auto")]
    pub collector: String,
    /// The collector that runs it now (`None`: not placed yet, no collector is live).
    #[serde(default)]
    pub owner: Option<String>,
}

fn auto() -> String {
    AUTO.to_string()
}

/// `POST /api/v1/flows`: mirror an interface of a named probe into a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowCreate {
    pub probe: String,
    /// Unique on its probe.
    pub name: String,
    pub interface: String,
    /// The session the flow's traffic goes to (its encapsulation and mirror id).
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlans: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
    /// 1 in N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
    /// Packets per second, a number or text like `"10k"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_pps: Option<serde_json::Value>,
    /// Bits per second, a number or text like `"100M"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<serde_json::Value>,
    /// Token bucket depth, like `"100ms"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promiscuous: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A flow's state as the controller knows it: from the definition and the probe's last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Disabled,
    /// Not yet applied by its probe (or the probe never reported).
    Pending,
    Running,
    /// The interface does not exist on the probe; retried every second.
    Waiting,
    Down,
    Error,
    /// The probe refused the definition.
    Refused,
    /// Its probe has not been heard from lately.
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub id: i64,
    pub probe: String,
    pub name: String,
    pub session: String,
    pub enabled: bool,
    /// The definition as given (what `FlowCreate` held, less probe, name and session).
    pub spec: serde_json::Value,
    pub status: FlowStatus,
    /// The probe's last word on it (interface missing, refused because ...).
    pub error: Option<String>,
    /// The probe's counters, from its last report.
    pub stats: Option<FlowStats>,
    pub created: String,
    pub updated: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub name: String,
    pub online: bool,
    pub version: Option<String>,
    pub interfaces: Vec<String>,
    pub registered: Option<String>,
    pub last_seen: Option<String>,
    /// Flows defined for it, and how many are enabled.
    pub flows: u32,
    pub flows_enabled: u32,
    /// Its flow set's version, and the one it last said it applied.
    pub flows_version: u64,
    pub applied_version: Option<u64>,
    /// Kernel drops and send errors over its flows, from its last report.
    pub drops: u64,
    pub sent: u64,
    pub max_flows: u32,
    pub max_pps: Option<u64>,
}

/// `PATCH /api/v1/probes/{name}`: the probe's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_flows: Option<u32>,
    /// The sum of the enabled flows' `rate_pps` may not exceed it; `0` removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pps: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    pub role: Role,
    /// The probe a `probe` token is bound to [default: the token's name]; it may register,
    /// fetch flows and report as that probe only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// A probe token's probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    pub created: String,
    pub created_by: String,
    pub revoked: Option<String>,
    /// Only in the answer to its creation: the secret is not stored and cannot be shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// The name of the token that made the change (`localhost` never changes anything).
    pub token: String,
    pub role: Role,
    /// `session.create`, `flow.disable`, `token.revoke`, ...
    pub action: String,
    /// What it acted on: a session, `probe/flow`, a token's name.
    pub target: String,
    pub detail: serde_json::Value,
    /// The collector that served the change (`None`: made offline, `tapwire token --db`).
    #[serde(default)]
    pub collector: Option<String>,
}

/// Whether a collector's lease is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorState {
    /// It renewed its lease in time.
    Live,
    /// Its lease ran out: its auto sessions are moved to live collectors.
    Dead,
}

/// The control plane's link to its database, as the collector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlState {
    /// No `--db`: no control plane.
    Off,
    Connected,
    /// The database cannot be reached: capture goes on with the last state, changes wait.
    Disconnected,
}

/// `GET /api/v1/health`: answered from memory, without the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub control: ControlState,
    /// This collector's name in its fleet (with `--db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The catalog of capture files' backlog (with `--db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogBacklog>,
}

/// What the catalog of capture files has not written to the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogBacklog {
    /// Files whose latest change waits for the database.
    pub pending: u64,
    /// Changes dropped since the start (too many waiting): reconciled with the output
    /// directory once the database answers.
    pub overflowed: u64,
}

/// One collector of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetMember {
    pub name: String,
    pub state: CollectorState,
    /// Seconds since it last renewed its lease.
    pub lease_age_s: f64,
    /// Where probes send it mirrored traffic (`--advertise`).
    pub advertise: Option<String>,
    /// Its API (`--listen`, as URL).
    pub api_url: Option<String>,
    pub version: String,
    pub started: String,
    /// The sessions it runs (owns), by name.
    pub sessions: Vec<String>,
    /// Packets per second received over the last 10 s, as it last reported.
    pub pps: f64,
    /// Packets lost (sequence gaps) since it started, as it last reported.
    pub lost: u64,
    /// Packets received since it started, as it last reported.
    pub packets: u64,
}

/// `GET /api/v1/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// The collector that answered.
    pub collector: String,
    pub control: ControlState,
    pub collectors: Vec<FleetMember>,
}

/// One capture file of the catalog (`GET /api/v1/files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFile {
    /// The collector that wrote it (its fleet name).
    pub collector: String,
    pub session: String,
    /// Relative to that collector's output directory (`--out`).
    pub path: String,
    /// Capture time of its earliest and latest packet, nanoseconds since the epoch.
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub packets: u64,
    /// Size of the file at `path` (compressed, for a `.gz`).
    pub bytes: u64,
    /// `open` (being written), `closed` or `deleted`.
    pub state: String,
    /// When the row last changed, nanoseconds since the epoch.
    pub updated_ns: i64,
}

/// `GET /api/v1/files`: a session's files whose packets overlap `from..=to`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFiles {
    pub files: Vec<CaptureFile>,
    /// More files matched than one answer holds ([`MAX_CATALOG_FILES`]): narrow the range.
    pub truncated: bool,
}

/// The most files one `GET /api/v1/files` answer lists.
pub const MAX_CATALOG_FILES: usize = 10_000;

/// One entry of `GET /api/v1/fleet/sd` (Prometheus `http_sd_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdTarget {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/probes/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub interfaces: Vec<String>,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub flows_version: u64,
    /// How often the controller wants a stats report.
    pub report_interval_s: u64,
}

/// `GET /api/v1/probes/{name}/flows`: every enabled flow of the probe, complete, and the
/// version of that set. The version changes whenever the set does, and only then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSet {
    pub version: u64,
    pub flows: Vec<FlowSpec>,
}

/// A flow the probe could not start, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub name: String,
    pub error: String,
}

/// `POST /api/v1/probes/{name}/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReport {
    /// The flow set version the probe runs.
    pub applied_version: u64,
    pub stats: ProbeStats,
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Probe, Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.name()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).expect("json"),
                format!("\"{}\"", r.name())
            );
        }
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let e = serde_json::from_str::<SessionCreate>(r#"{"name":"a","filtr":"tcp"}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `filtr`"), "{e}");
        let f: FlowCreate = serde_json::from_str(
            r#"{"probe":"h1","name":"vm","interface":"tap1","session":"web","rate_pps":"10k"}"#,
        )
        .expect("minimal flow");
        assert_eq!(f.rate_pps, Some(serde_json::json!("10k")));
    }

    #[test]
    fn typed_requests_send_only_what_is_set() {
        let req = SessionCreate {
            name: "web".into(),
            encap: None,
            mirror_id: Some(12),
            enabled: None,
            filter: None,
            files: Some(serde_json::Value::Bool(false)),
            tap: None,
            collector: None,
        };
        assert_eq!(
            serde_json::to_value(&req).expect("json"),
            serde_json::json!({ "name": "web", "mirror_id": 12, "files": false })
        );
        let patch = SessionPatch {
            filter: Some(None),
            ..SessionPatch::default()
        };
        assert_eq!(
            serde_json::to_value(&patch).expect("json"),
            serde_json::json!({ "filter": null })
        );
    }

    #[test]
    fn merge_patches_merge_objects_and_remove_nulls() {
        let t = serde_json::json!({ "a": 1, "b": { "c": 2, "d": 3 } });
        let p = serde_json::json!({ "a": null, "b": { "c": 4 }, "e": [1] });
        assert_eq!(
            merge_patch(Some(t), &p),
            serde_json::json!({ "b": { "c": 4, "d": 3 }, "e": [1] })
        );
        assert_eq!(
            merge_patch(None, &serde_json::json!(false)),
            serde_json::json!(false)
        );
    }
}
