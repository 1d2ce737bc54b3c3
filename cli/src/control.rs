//! The control plane's command line: `tapwire session|flow|probe|audit|token ...` (clients of
//! the HTTP API, in the style of climc and openstack: a table by default, `--json` for
//! scripts) and the `collect` flags that turn the control plane on.
//!
//! Exit status: 0 done; 1 the controller refused or could not be reached (its message on
//! stderr); 2 a bad flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tapwire_api_types::Snapshot;
use tapwire_api_types::control::{
    AuditEntry, FlowCreate, FlowInfo, ProbeInfo, ProbeLimits, Role, SessionCreate, SessionInfo,
    SessionPatch, TokenCreate, TokenInfo, merge_patch,
};
use tapwire_api_types::probe::{Direction, Encapsulation};
use tapwire_client::{Client, HttpError, segment};
use tapwire_netio::outln;

use tapwire_collector::http::Listen;
use tapwire_collector::live::control_plane::SystemClock;
use tapwire_control::auth::Caller;
use tapwire_control::store::Location;
use tapwire_control::{Clock, ControllerOptions, Refused, tokens};

// ---------------------------------------------------------------------------------------------
// `tapwire collect` flags

#[derive(Args, Debug, Clone, Default)]
pub struct ControlArgs {
    /// Turn on the control plane: sessions and probe flows managed over the API, kept in
    /// this SQLite database (a path or sqlite:PATH, created with its schema when absent; at
    /// first start an admin token is written to PATH.admin-token), or in a PostgreSQL
    /// database shared by a fleet of collectors (postgres://USER:PASSWORD@HOST:PORT/DB, or
    /// "host=... dbname=..."; TLS with ?sslmode=require, verify-full, sslrootcert=FILE).
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<String>,
    /// This collector's name in its fleet, unique among live collectors [default: the host
    /// name].
    #[arg(long, value_name = "NAME", requires = "db")]
    pub name: Option<String>,
    /// Also serve the API here, for probes and remote clients (TLS with --tls-cert).
    #[arg(long, value_name = "ADDR:PORT", requires = "db")]
    pub listen: Option<SocketAddr>,
    /// The collector's address as probes should send mirrored traffic to it [default: the
    /// --listen address when it is not a wildcard].
    #[arg(long, value_name = "ADDR", requires = "db")]
    pub advertise: Option<IpAddr>,
    /// Certificate chain (PEM) for --listen: the API is then HTTPS (rustls) there.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs the fleet's collector certificates: this collector checks the
    /// others' HTTPS APIs with it when it asks them for query parts and live streams
    /// [default: the --tls-cert file].
    #[arg(long, value_name = "FILE", requires = "db")]
    pub peer_ca: Option<PathBuf>,
    /// Flows a probe may have, unless changed per probe (`tapwire probe set`).
    #[arg(long, value_name = "N", default_value_t = 64, requires = "db")]
    pub probe_max_flows: u32,
    /// Probes the controller knows at most (registered, or named by a flow); a new name past
    /// it is refused (409) until one is deleted.
    #[arg(long, value_name = "N", default_value_t = tapwire_control::controller::DEFAULT_MAX_PROBES, requires = "db")]
    pub max_probes: u32,
    /// Packets per second a probe may mirror in all (its enabled flows' rate_pps added up),
    /// unless changed per probe; without it, no limit.
    #[arg(long, value_name = "RATE", requires = "db")]
    pub probe_max_pps: Option<String>,
    /// How often probes report their stats.
    #[arg(long, value_name = "DURATION", default_value = "5s", requires = "db")]
    pub probe_report_interval: String,
}

/// The host's name, the default `--name`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tapwire".into())
}

/// Where the fleet and Prometheus reach this collector's API: `--listen` (https with a
/// certificate), its address or else `--advertise`; without `--listen`, `--api` when it is
/// not the loopback.
fn api_url(
    listen: Option<SocketAddr>,
    tls: bool,
    advertise: Option<IpAddr>,
    api: Option<SocketAddr>,
) -> Option<String> {
    let (addr, scheme) = match (listen, api) {
        (Some(l), _) => (l, if tls { "https" } else { "http" }),
        (None, Some(a)) if !a.ip().is_loopback() => (a, "http"),
        _ => return None,
    };
    let ip = if addr.ip().is_unspecified() {
        advertise?
    } else {
        addr.ip()
    };
    Some(format!("{scheme}://{}", SocketAddr::new(ip, addr.port())))
}

/// The control plane's options and its listener, from the flags; `None` without `--db`.
/// `api`: the `--api` address.
pub fn collect_options(
    a: &ControlArgs,
    api: Option<SocketAddr>,
) -> Result<(Option<ControllerOptions>, Option<Listen>), String> {
    let Some(db) = a.db.as_deref() else {
        return Ok((None, None));
    };
    let db = Location::parse(db)?;
    let name = a.name.clone().unwrap_or_else(host_name);
    tapwire_api_types::control::validate_name(&name)
        .map_err(|e| format!("--name {name:?}: {e}"))?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tapwire_collector::http::tls::server_config(c, k)?),
        _ => None,
    };
    let peers = match (&a.peer_ca, &a.tls_cert) {
        (Some(ca), _) => Some(tapwire_collector::http::tls::peer_client_config(
            ca,
            "--peer-ca",
        )?),
        (None, Some(cert)) => Some(tapwire_collector::http::tls::peer_client_config(
            cert,
            "--tls-cert",
        )?),
        (None, None) => None,
    };
    if let Some(ip) = a.advertise.filter(|ip| !tapwire_control::advertisable(*ip)) {
        return Err(format!(
            "--advertise: {ip} is not a unicast address probes can send to"
        ));
    }
    let advertise = a
        .advertise
        .or_else(|| a.listen.map(|l| l.ip()).filter(|ip| !ip.is_unspecified()));
    let max_pps = a
        .probe_max_pps
        .as_deref()
        .map(|v| {
            tapwire_api_types::flow::parse_rate(v).map_err(|e| format!("--probe-max-pps: {e}"))
        })
        .transpose()?;
    if a.probe_max_flows == 0 {
        return Err("--probe-max-flows: must be at least 1".into());
    }
    if a.max_probes == 0 {
        return Err("--max-probes: must be at least 1".into());
    }
    let report_interval = tapwire_collector::config::duration(&a.probe_report_interval)
        .map_err(|e| format!("--probe-report-interval: {e}"))?;
    Ok((
        Some(ControllerOptions {
            db,
            name,
            advertise,
            api_url: api_url(a.listen, tls.is_some(), advertise, api),
            max_probes: a.max_probes,
            max_flows_per_probe: a.probe_max_flows,
            max_pps_per_probe: max_pps,
            report_interval,
            lease: tapwire_control::fleet::LEASE,
            heartbeat: tapwire_control::fleet::HEARTBEAT,
        }),
        a.listen.map(|addr| Listen { addr, tls, peers }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Client commands

/// Which collector and how to authenticate: the flags of every command that talks to the API.
#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// The collector's API: ADDR:PORT or a URL (https:// with --listen and --tls-cert).
    #[arg(long, global = true, env = "TAPWIRE_CONTROLLER", default_value = tapwire_api_types::DEFAULT_ADDR)]
    pub controller: String,
    /// Bearer token (none is needed to read from the collector's own host).
    #[arg(long, global = true, env = "TAPWIRE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for https.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The endpoint and `--json`, for the commands that print the API's answers.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `tapwire session`: the subcommand and the client flags (accepted before or after it).
#[derive(Args, Debug)]
pub struct Sessions {
    #[command(subcommand)]
    pub cmd: SessionCmd,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct Flows {
    #[command(subcommand)]
    pub cmd: FlowCmd,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct Probes {
    #[command(subcommand)]
    pub cmd: ProbeCmd,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct Audit {
    #[command(flatten)]
    pub args: AuditArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tapwire collectors`: the fleet's collectors.
#[derive(Args, Debug)]
pub struct Collectors {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct Tokens {
    #[command(subcommand)]
    pub cmd: TokenCmd,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// Create a session fed by probe flows (it gets a mirror id).
    Create(Box<SessionCreateArgs>),
    /// Every session: the API's, the configuration file's and auto-discovered ones.
    List,
    /// A session's definition and its live counters.
    Show {
        name: String,
    },
    /// Change a session (JSON merge patch with --spec, or the flags).
    Update(SessionUpdateArgs),
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    /// Delete a session (refused while flows target it).
    Delete {
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct SessionCreateArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub encap: Option<EncapArg>,
    /// ERSPAN session id / GRE key, 1-1023 [default: the lowest free one].
    #[arg(long, value_name = "ID")]
    pub mirror_id: Option<u32>,
    /// tcpdump-syntax filter on the inner frames.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Directory of the session's files, relative to the collector's --out (and beneath it)
    /// [default: --out itself].
    #[arg(long, value_name = "DIR")]
    pub files_dir: Option<String>,
    /// Run this hook of the collector's configuration file ([hooks]) on each finished file.
    #[arg(long, value_name = "NAME", conflicts_with = "no_files")]
    pub hook: Option<String>,
    /// Write no files (with --tap: a monitor interface only).
    #[arg(long, conflicts_with = "files_dir")]
    pub no_files: bool,
    /// A monitor TAP interface of this name.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    /// The collector that runs it (a collector's --name), or auto: the least loaded live
    /// collector of the fleet, and another when that one dies [default: auto].
    #[arg(long, value_name = "NAME|auto")]
    pub collector: Option<String>,
    /// More fields, as JSON (the `files` and `tap` tables of a [[session]]).
    #[arg(long, value_name = "JSON")]
    pub spec: Option<String>,
}

#[derive(Args, Debug)]
pub struct SessionUpdateArgs {
    pub name: String,
    #[arg(long, value_name = "EXPR", conflicts_with = "no_filter")]
    pub filter: Option<String>,
    #[arg(long)]
    pub no_filter: bool,
    /// Pin it to this collector, or auto (placed by the fleet).
    #[arg(long, value_name = "NAME|auto")]
    pub collector: Option<String>,
    /// A JSON merge patch: {"files": {"rotate": {"size": "1GiB"}}, "tap": null}.
    #[arg(long, value_name = "JSON")]
    pub spec: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EncapArg {
    ErspanIi,
    ErspanIii,
    Gre,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DirectionArg {
    In,
    Out,
    Both,
}

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Mirror an interface of a probe into a session.
    Create(Box<FlowCreateArgs>),
    List {
        /// Only this probe's flows.
        #[arg(long)]
        probe: Option<String>,
    },
    /// A flow by id or PROBE/NAME.
    Show {
        flow: String,
    },
    Enable {
        flow: String,
    },
    Disable {
        flow: String,
    },
    Delete {
        flow: String,
    },
}

#[derive(Args, Debug)]
pub struct FlowCreateArgs {
    /// The probe (its --name).
    #[arg(long)]
    pub probe: String,
    /// The flow's name, unique on its probe [default: the interface].
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, alias = "iface", value_name = "IF")]
    pub interface: String,
    /// The target session.
    #[arg(long)]
    pub session: String,
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub vlan: Vec<u16>,
    #[arg(long)]
    pub untagged: bool,
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    #[arg(long, value_name = "BYTES")]
    pub snaplen: Option<u32>,
    /// One packet in N.
    #[arg(long, value_name = "N")]
    pub sample: Option<u32>,
    #[arg(long, value_name = "RATE")]
    pub rate_pps: Option<String>,
    #[arg(long, value_name = "RATE")]
    pub rate_bps: Option<String>,
    #[arg(long, value_name = "DURATION")]
    pub burst: Option<String>,
    #[arg(long)]
    pub promisc: bool,
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// Probes: online, last seen, version, flows, drops.
    List,
    Show {
        name: String,
    },
    /// Change a probe's limits.
    Set {
        name: String,
        #[arg(long, value_name = "N")]
        max_flows: Option<u32>,
        /// Packets per second over all its enabled flows (0: no limit).
        #[arg(long, value_name = "RATE")]
        max_pps: Option<String>,
    },
    /// Forget a probe that has no flows.
    Delete {
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Entries after this id.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// With --role probe: the probe it may act as [default: the token's name].
        #[arg(long, value_name = "NAME")]
        probe: Option<String>,
        /// Work on the database directly (no collector needed): how the first admin token can
        /// be made too (an SQLite path, or a fleet's postgres:// URL).
        #[arg(long, value_name = "PATH|URL")]
        db: Option<String>,
    },
    List {
        #[arg(long, value_name = "PATH|URL")]
        db: Option<String>,
    },
    /// Revoke a token: it is refused at once, a probe using it is disconnected.
    Revoke {
        name: String,
        #[arg(long, value_name = "PATH|URL")]
        db: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Read everything but tokens.
    Viewer,
    /// Read, and change sessions, flows and probe limits.
    Operator,
    /// Everything, and tokens.
    Admin,
    /// Only the probe protocol, only as its probe (--probe, or the token's name).
    Probe,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
            RoleArg::Probe => Role::Probe,
        }
    }
}

struct Cx {
    client: Client,
    json: bool,
    what: &'static str,
}

impl Cx {
    fn new(args: &ClientArgs, what: &'static str) -> Result<Cx, ExitCode> {
        let client = Client::new(
            &args.endpoint.controller,
            args.endpoint.token.clone(),
            args.endpoint.ca.as_deref(),
            Duration::from_secs(15),
        )
        .map_err(|e| {
            eprintln!("tapwire {what}: {e}");
            ExitCode::from(2)
        })?;
        Ok(Cx {
            client,
            json: args.json,
            what,
        })
    }

    fn fail(&self, e: HttpError) -> ExitCode {
        eprintln!("tapwire {}: {e}", self.what);
        ExitCode::FAILURE
    }

    fn call<B: Serialize, T: DeserializeOwned + Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ExitCode> {
        self.client
            .call(method, path, body)
            .map_err(|e| self.fail(e))
    }

    fn get<T: DeserializeOwned + Serialize>(&self, path: &str) -> Result<T, ExitCode> {
        self.call("GET", path, None::<&()>)
    }

    /// Prints `v` as JSON with --json, else with `table`.
    fn show<T: Serialize>(&self, v: &T, table: impl FnOnce(&T)) -> ExitCode {
        if self.json {
            match serde_json::to_string_pretty(v) {
                Ok(s) => outln!("{s}"),
                Err(e) => {
                    eprintln!("tapwire {}: {e}", self.what);
                    return ExitCode::FAILURE;
                }
            }
        } else {
            table(v);
        }
        ExitCode::SUCCESS
    }
}

fn done(r: Result<ExitCode, ExitCode>) -> ExitCode {
    r.unwrap_or_else(|code| code)
}

/// A typed request as JSON, for merging the operator's `--spec` over it.
fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn json_arg(what: &str, flag: &str, v: &str) -> Result<Value, ExitCode> {
    serde_json::from_str(v).map_err(|e| {
        eprintln!("tapwire {what}: {flag}: not JSON: {e}");
        ExitCode::from(2)
    })
}

/// `tapwire session ...`
pub fn session(Sessions { cmd, client }: Sessions) -> ExitCode {
    let args = &client;
    let cx = match Cx::new(args, "session") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        Ok(match cmd {
            SessionCmd::Create(a) => {
                let req = SessionCreate {
                    name: a.name.clone(),
                    encap: a.encap.map(encap),
                    mirror_id: a.mirror_id,
                    enabled: a.disabled.then_some(false),
                    filter: a.filter.clone(),
                    files: if a.no_files {
                        Some(Value::Bool(false))
                    } else {
                        let mut f = serde_json::Map::new();
                        if let Some(d) = &a.files_dir {
                            f.insert("dir".into(), json!(d));
                        }
                        if let Some(h) = &a.hook {
                            f.insert("hook".into(), json!(h));
                        }
                        (!f.is_empty()).then_some(Value::Object(f))
                    },
                    tap: a.tap.clone().map(Value::String),
                    collector: a.collector.clone(),
                };
                // --spec is the operator's own JSON, merged over the flags' typed request.
                let body = match &a.spec {
                    Some(s) => merge_patch(Some(to_json(&req)), &json_arg("session", "--spec", s)?),
                    None => to_json(&req),
                };
                let s: SessionInfo = cx.call("POST", "/api/v1/sessions", Some(&body))?;
                cx.show(&s, |s| {
                    outln!(
                        "session {} created: {} mirror id {} (flows to it send {} session {})",
                        s.name,
                        s.encap.name(),
                        s.mirror_id,
                        s.encap.name(),
                        s.mirror_id
                    )
                })
            }
            SessionCmd::List => {
                let defs: Vec<SessionInfo> = cx.get("/api/v1/definitions")?;
                let snap: Snapshot = cx.get(tapwire_api_types::SESSIONS_PATH)?;
                let mut rows = Vec::new();
                for s in &snap.sessions {
                    let def = defs.iter().find(|d| d.name == s.name);
                    rows.push(json!({
                        "name": s.name,
                        "origin": if def.is_some() { "api" } else if s.auto { "auto" } else { "file" },
                        "state": s.state,
                        "mirror": def.map(|d| format!("{} {}", d.encap.name(), d.mirror_id)),
                        "flows": def.map_or(0, |d| d.flows.len()),
                        "packets": s.packets,
                        "written": s.written,
                        "lost": s.lost,
                        "dropped": s.drops.total(),
                        "file": s.files.as_ref().and_then(|f| f.current.clone()),
                        "collector": def.and_then(|d| d.owner.clone()).or_else(|| snap.control.as_ref().map(|c| c.collector.clone())),
                    }));
                }
                // Defined but not (yet) in the engine's snapshot (published once a second).
                for d in defs
                    .iter()
                    .filter(|d| !snap.sessions.iter().any(|s| s.name == d.name))
                {
                    rows.push(json!({
                        "name": d.name, "origin": "api", "state": if d.enabled { "idle" } else { "disabled" },
                        "mirror": format!("{} {}", d.encap.name(), d.mirror_id), "flows": d.flows.len(),
                        "packets": 0, "written": 0, "lost": 0, "dropped": 0, "file": null,
                        "collector": d.owner,
                    }));
                }
                cx.show(&rows, |rows| {
                    table(
                        &[
                            "NAME",
                            "ORIGIN",
                            "STATE",
                            "COLLECTOR",
                            "MIRROR",
                            "FLOWS",
                            "PACKETS",
                            "WRITTEN",
                            "LOST",
                            "DROPPED",
                            "FILE",
                        ],
                        rows.iter().map(|r| {
                            [
                                "name",
                                "origin",
                                "state",
                                "collector",
                                "mirror",
                                "flows",
                                "packets",
                                "written",
                                "lost",
                                "dropped",
                                "file",
                            ]
                            .iter()
                            .map(|k| cell(&r[*k]))
                            .collect()
                        }),
                    )
                })
            }
            SessionCmd::Show { name } => {
                let path = format!("/api/v1/sessions/{}", segment(&name));
                let def = match cx.client.get::<SessionInfo>(&format!("{path}/definition")) {
                    Ok(d) => Some(d),
                    Err(e) if e.status == 404 || e.status == 409 => None,
                    Err(e) => return Err(cx.fail(e)),
                };
                let stats: Option<Value> = match cx.client.get::<Value>(&path) {
                    Ok(v) => Some(v),
                    Err(e) if e.status == 404 && def.is_some() => None,
                    Err(e) => return Err(cx.fail(e)),
                };
                let both = json!({ "definition": def, "stats": stats });
                cx.show(&both, |b| {
                    if let Some(d) = &def {
                        outln!("name:      {}", d.name);
                        outln!("origin:    api");
                        outln!("enabled:   {}", d.enabled);
                        outln!("mirror:    {} id {}", d.encap.name(), d.mirror_id);
                        outln!("filter:    {}", d.filter.as_deref().unwrap_or("-"));
                        outln!(
                            "files:     {}",
                            d.files.as_ref().map_or("defaults".into(), Value::to_string)
                        );
                        outln!(
                            "tap:       {}",
                            d.tap.as_ref().map_or("-".into(), Value::to_string)
                        );
                        outln!(
                            "flows:     {}",
                            if d.flows.is_empty() {
                                "-".into()
                            } else {
                                d.flows.join(", ")
                            }
                        );
                        outln!("created:   {}", d.created);
                        outln!("updated:   {}", d.updated);
                    } else {
                        outln!("name:      {name}");
                        outln!(
                            "origin:    {}",
                            if b["stats"]["auto"] == true {
                                "auto"
                            } else {
                                "file"
                            }
                        );
                    }
                    let s = &b["stats"];
                    if !s.is_null() {
                        outln!("state:     {}", cell(&s["state"]));
                        outln!(
                            "packets:   {}  written {}  lost {}",
                            cell(&s["packets"]),
                            cell(&s["written"]),
                            cell(&s["lost"])
                        );
                        outln!("file:      {}", cell(&s["files"]["current"]));
                    }
                })
            }
            SessionCmd::Update(a) => {
                let typed = SessionPatch {
                    filter: match (&a.filter, a.no_filter) {
                        (_, true) => Some(None),
                        (Some(f), false) => Some(Some(f.clone())),
                        (None, false) => None,
                    },
                    collector: a.collector.clone(),
                    ..SessionPatch::default()
                };
                let mut patch = to_json(&typed);
                if let Some(s) = &a.spec {
                    // Top-level keys replace the flags' (a null stays: it removes the field).
                    match json_arg("session", "--spec", s)? {
                        Value::Object(o) => {
                            for (k, v) in o {
                                patch[k] = v;
                            }
                        }
                        _ => {
                            eprintln!("tapwire session: --spec: a JSON object is expected");
                            return Err(ExitCode::from(2));
                        }
                    }
                }
                let s: SessionInfo = cx.call(
                    "PATCH",
                    &format!("/api/v1/sessions/{}", segment(&a.name)),
                    Some(&patch),
                )?;
                cx.show(&s, |s| outln!("session {} updated", s.name))
            }
            SessionCmd::Enable { name } => session_action(&cx, &name, "enable")?,
            SessionCmd::Disable { name } => session_action(&cx, &name, "disable")?,
            SessionCmd::Delete { name } => {
                let m: tapwire_api_types::Message = cx.call(
                    "DELETE",
                    &format!("/api/v1/sessions/{}", segment(&name)),
                    None::<&()>,
                )?;
                cx.show(&m, |m| outln!("{}", m.message))
            }
        })
    })())
}

fn session_action(cx: &Cx, name: &str, verb: &str) -> Result<ExitCode, ExitCode> {
    let m: tapwire_api_types::Message = cx.call(
        "POST",
        &format!("/api/v1/sessions/{}/{verb}", segment(name)),
        None::<&()>,
    )?;
    Ok(cx.show(&m, |m| outln!("{}", m.message)))
}

fn encap(e: EncapArg) -> Encapsulation {
    match e {
        EncapArg::ErspanIi => Encapsulation::ErspanIi,
        EncapArg::ErspanIii => Encapsulation::ErspanIii,
        EncapArg::Gre => Encapsulation::Gre,
    }
}

/// A flow's id from `ID` or `PROBE/NAME`.
fn flow_id(cx: &Cx, flow: &str) -> Result<i64, ExitCode> {
    if let Ok(id) = flow.parse::<i64>() {
        return Ok(id);
    }
    let Some((probe, name)) = flow.split_once('/') else {
        eprintln!("tapwire flow: {flow:?}: give a flow id or PROBE/NAME");
        return Err(ExitCode::from(2));
    };
    let flows: Vec<FlowInfo> = cx.get("/api/v1/flows")?;
    flows
        .iter()
        .find(|f| f.probe == probe && f.name == name)
        .map(|f| f.id)
        .ok_or_else(|| {
            eprintln!("tapwire flow: no flow {name:?} on probe {probe:?}");
            ExitCode::FAILURE
        })
}

/// `tapwire flow ...`
pub fn flow(Flows { cmd, client }: Flows) -> ExitCode {
    let args = &client;
    let cx = match Cx::new(args, "flow") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        Ok(match cmd {
            FlowCmd::Create(a) => {
                let text = |v: &Option<String>| v.clone().map(Value::String);
                let body = FlowCreate {
                    probe: a.probe.clone(),
                    name: a.name.clone().unwrap_or_else(|| a.interface.clone()),
                    interface: a.interface.clone(),
                    session: a.session.clone(),
                    direction: a.direction.map(|d| match d {
                        DirectionArg::In => Direction::In,
                        DirectionArg::Out => Direction::Out,
                        DirectionArg::Both => Direction::Both,
                    }),
                    vlans: (!a.vlan.is_empty()).then(|| a.vlan.clone()),
                    untagged: a.untagged.then_some(true),
                    filter: a.filter.clone(),
                    snaplen: a.snaplen,
                    sample: a.sample,
                    rate_pps: text(&a.rate_pps),
                    rate_bps: text(&a.rate_bps),
                    burst: a.burst.clone(),
                    promiscuous: a.promisc.then_some(true),
                    enabled: a.disabled.then_some(false),
                };
                let f: FlowInfo = cx.call("POST", "/api/v1/flows", Some(&body))?;
                cx.show(&f, |f| {
                    outln!(
                        "flow {} created: {}/{} -> session {}",
                        f.id,
                        f.probe,
                        f.name,
                        f.session
                    )
                })
            }
            FlowCmd::List { probe } => {
                let mut flows: Vec<FlowInfo> = cx.get("/api/v1/flows")?;
                if let Some(p) = &probe {
                    flows.retain(|f| &f.probe == p);
                }
                cx.show(&flows, |flows| flow_table(flows))
            }
            FlowCmd::Show { flow } => {
                let id = flow_id(&cx, &flow)?;
                let f: FlowInfo = cx.get(&format!("/api/v1/flows/{id}"))?;
                cx.show(&f, |f| flow_table(std::slice::from_ref(f)))
            }
            FlowCmd::Enable { flow } => flow_action(&cx, &flow, "enable")?,
            FlowCmd::Disable { flow } => flow_action(&cx, &flow, "disable")?,
            FlowCmd::Delete { flow } => {
                let id = flow_id(&cx, &flow)?;
                let m: tapwire_api_types::Message =
                    cx.call("DELETE", &format!("/api/v1/flows/{id}"), None::<&()>)?;
                cx.show(&m, |m| outln!("{}", m.message))
            }
        })
    })())
}

fn flow_action(cx: &Cx, flow: &str, verb: &str) -> Result<ExitCode, ExitCode> {
    let id = flow_id(cx, flow)?;
    let f: FlowInfo = cx.call("POST", &format!("/api/v1/flows/{id}/{verb}"), None::<&()>)?;
    Ok(cx.show(&f, |f| {
        outln!("flow {} ({}/{}) {verb}d", f.id, f.probe, f.name)
    }))
}

fn flow_table(flows: &[FlowInfo]) {
    table(
        &[
            "ID",
            "PROBE",
            "NAME",
            "INTERFACE",
            "SESSION",
            "STATUS",
            "SENT",
            "DROPS",
            "ERROR",
        ],
        flows.iter().map(|f| {
            let c = f.stats.as_ref().map(|s| &s.counters);
            vec![
                f.id.to_string(),
                f.probe.clone(),
                f.name.clone(),
                cell(&f.spec["interface"]),
                f.session.clone(),
                cell(&json!(f.status)),
                c.map_or("-".into(), |c| c.sent.to_string()),
                c.map_or("-".into(), |c| (c.kernel_drops + c.send_errors).to_string()),
                f.error.clone().unwrap_or_default(),
            ]
        }),
    );
}

/// `tapwire probe ...`
pub fn probe(Probes { cmd, client }: Probes) -> ExitCode {
    let args = &client;
    let cx = match Cx::new(args, "probe") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        Ok(match cmd {
            ProbeCmd::List => {
                let probes: Vec<ProbeInfo> = cx.get("/api/v1/probes")?;
                cx.show(&probes, |p| probe_table(p))
            }
            ProbeCmd::Show { name } => {
                let p: ProbeInfo = cx.get(&format!("/api/v1/probes/{}", segment(&name)))?;
                cx.show(&p, |p| probe_table(std::slice::from_ref(p)))
            }
            ProbeCmd::Set {
                name,
                max_flows,
                max_pps,
            } => {
                let body = ProbeLimits {
                    max_flows,
                    max_pps: max_pps.map(Value::String),
                };
                let p: ProbeInfo = cx.call(
                    "PATCH",
                    &format!("/api/v1/probes/{}", segment(&name)),
                    Some(&body),
                )?;
                cx.show(&p, |p| probe_table(std::slice::from_ref(p)))
            }
            ProbeCmd::Delete { name } => {
                let m: tapwire_api_types::Message = cx.call(
                    "DELETE",
                    &format!("/api/v1/probes/{}", segment(&name)),
                    None::<&()>,
                )?;
                cx.show(&m, |m| outln!("{}", m.message))
            }
        })
    })())
}

fn probe_table(probes: &[ProbeInfo]) {
    table(
        &[
            "NAME",
            "ONLINE",
            "LAST SEEN",
            "VERSION",
            "FLOWS",
            "APPLIED",
            "SENT",
            "DROPS",
            "LIMITS",
        ],
        probes.iter().map(|p| {
            vec![
                p.name.clone(),
                if p.online { "yes" } else { "no" }.into(),
                p.last_seen.clone().unwrap_or_else(|| "never".into()),
                p.version.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", p.flows_enabled, p.flows),
                match p.applied_version {
                    Some(v) if v == p.flows_version => format!("v{v}"),
                    Some(v) => format!("v{v} (want v{})", p.flows_version),
                    None => "-".into(),
                },
                p.sent.to_string(),
                p.drops.to_string(),
                format!(
                    "{} flows{}",
                    p.max_flows,
                    p.max_pps.map_or(String::new(), |n| format!(", {n} pps"))
                ),
            ]
        }),
    );
}

/// `tapwire audit`
pub fn audit(Audit { args: a, client }: Audit) -> ExitCode {
    let args = &client;
    let cx = match Cx::new(args, "audit") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        let entries: Vec<AuditEntry> = cx.get(&format!(
            "/api/v1/audit?after={}&limit={}",
            a.after, a.limit
        ))?;
        Ok(cx.show(&entries, |e| {
            table(
                &["ID", "AT", "TOKEN", "ROLE", "ACTION", "TARGET", "DETAIL"],
                e.iter().map(|e| {
                    vec![
                        e.id.to_string(),
                        e.at.clone(),
                        e.token.clone(),
                        e.role.name().into(),
                        e.action.clone(),
                        e.target.clone(),
                        if e.detail.is_null() {
                            String::new()
                        } else {
                            e.detail.to_string()
                        },
                    ]
                }),
            )
        }))
    })())
}

/// `tapwire collectors`
pub fn collectors(Collectors { client }: Collectors) -> ExitCode {
    let cx = match Cx::new(&client, "collectors") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        let fleet: tapwire_api_types::control::Fleet = cx.get("/api/v1/fleet")?;
        Ok(cx.show(&fleet, |f| {
            if f.control == tapwire_api_types::control::ControlState::Disconnected {
                outln!(
                    "control: disconnected ({} cannot reach the database; as last read)",
                    f.collector
                );
            }
            table(
                &[
                    "NAME",
                    "STATE",
                    "LEASE",
                    "SESSIONS",
                    "PPS",
                    "LOST",
                    "ADVERTISE",
                    "API",
                ],
                f.collectors.iter().map(|c| {
                    let me = if c.name == f.collector { " *" } else { "" };
                    vec![
                        format!("{}{me}", c.name),
                        cell(&json!(c.state)),
                        format!("{:.1}s ago", c.lease_age_s),
                        if c.sessions.is_empty() {
                            "-".into()
                        } else {
                            c.sessions.join(",")
                        },
                        format!("{:.0}", c.pps),
                        c.lost.to_string(),
                        c.advertise.clone().unwrap_or_else(|| "-".into()),
                        c.api_url.clone().unwrap_or_else(|| "-".into()),
                    ]
                }),
            )
        }))
    })())
}

/// `tapwire token ...`: through the API, or with `--db` on the database itself.
pub fn token(Tokens { cmd, client }: Tokens) -> ExitCode {
    let args = &client;
    let db = match &cmd {
        TokenCmd::Create { db, .. } | TokenCmd::List { db } | TokenCmd::Revoke { db, .. } => {
            db.clone()
        }
    };
    if let Some(db) = db {
        return token_offline(cmd, &db, args.json);
    }
    let cx = match Cx::new(args, "token") {
        Ok(c) => c,
        Err(code) => return code,
    };
    done((|| {
        Ok(match cmd {
            TokenCmd::Create {
                name, role, probe, ..
            } => {
                let t: TokenInfo = cx.call(
                    "POST",
                    "/api/v1/tokens",
                    Some(&TokenCreate {
                        name,
                        role: role.role(),
                        probe,
                    }),
                )?;
                cx.show(&t, print_new_token)
            }
            TokenCmd::List { .. } => {
                let t: Vec<TokenInfo> = cx.get("/api/v1/tokens")?;
                cx.show(&t, |t| token_table(t))
            }
            TokenCmd::Revoke { name, .. } => {
                let m: tapwire_api_types::Message = cx.call(
                    "DELETE",
                    &format!("/api/v1/tokens/{}", segment(&name)),
                    None::<&()>,
                )?;
                cx.show(&m, |m| outln!("{}", m.message))
            }
        })
    })())
}

fn print_new_token(t: &TokenInfo) {
    let of = t
        .probe
        .as_deref()
        .map(|p| format!(", probe {p}"))
        .unwrap_or_default();
    outln!(
        "token {} ({}{of}) created; its secret, shown this once:",
        t.name,
        t.role.name()
    );
    outln!("{}", t.token.as_deref().unwrap_or(""));
}

fn token_table(t: &[TokenInfo]) {
    table(
        &["NAME", "ROLE", "PROBE", "CREATED", "BY", "REVOKED"],
        t.iter().map(|t| {
            vec![
                t.name.clone(),
                t.role.name().into(),
                t.probe.clone().unwrap_or_default(),
                t.created.clone(),
                t.created_by.clone(),
                t.revoked.clone().unwrap_or_default(),
            ]
        }),
    );
}

fn token_offline(cmd: TokenCmd, db: &str, json: bool) -> ExitCode {
    let fail = |e: String| {
        eprintln!("tapwire token: {e}");
        ExitCode::FAILURE
    };
    let at = match Location::parse(db) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tapwire token: {e}");
            return ExitCode::from(2);
        }
    };
    // A database that cannot be opened is a bad --db, as for `collect`: exit 2.
    let bad_db = |e: String| {
        eprintln!("tapwire token: {e}");
        ExitCode::from(2)
    };
    if let Location::Sqlite(path) = &at
        && !path.exists()
    {
        return bad_db(format!(
            "{}: no such database (the collector creates it at its first start with --db)",
            path.display()
        ));
    }
    let mut store = match tapwire_control::store::open(&at) {
        Ok(s) => s,
        Err(e) => return bad_db(format!("--db {}: {e}", at.display())),
    };
    let who = Caller::system("offline (--db)");
    let now_ns = SystemClock.now_ns();
    let result: Result<Value, Refused> = match cmd {
        TokenCmd::Create {
            name, role, probe, ..
        } => {
            let req = TokenCreate {
                name,
                role: role.role(),
                probe,
            };
            tokens::create_offline(&mut *store, &who, &req, now_ns).map(|t| json!(t))
        }
        TokenCmd::List { .. } => tokens::list_offline(&mut *store).map(|t| json!(t)),
        TokenCmd::Revoke { name, .. } => tokens::revoke_offline(&mut *store, &who, &name, now_ns)
            .map(|()| json!({ "ok": true, "message": format!("token {name} revoked") })),
    };
    let v = match result {
        Ok(v) => v,
        Err(e) => return fail(e.to_string()),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if let Ok(t) = serde_json::from_value::<TokenInfo>(v.clone()) {
        print_new_token(&t);
    } else if let Ok(t) = serde_json::from_value::<Vec<TokenInfo>>(v.clone()) {
        token_table(&t);
    } else {
        outln!("{}", v["message"].as_str().unwrap_or(""));
    }
    ExitCode::SUCCESS
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Left-aligned columns two spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in &all {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_must_be_an_address_probes_can_send_to() {
        let args = |advertise: &str| ControlArgs {
            db: Some("/nonexistent/c.db".into()),
            advertise: Some(advertise.parse().expect("address")),
            probe_report_interval: "5s".into(),
            probe_max_flows: 64,
            max_probes: 1024,
            ..ControlArgs::default()
        };
        for bad in ["0.0.0.0", "::", "239.1.2.3", "ff02::1"] {
            let e = collect_options(&args(bad), None)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(
                e,
                format!("--advertise: {bad} is not a unicast address probes can send to")
            );
        }
        let (opts, _) = collect_options(&args("192.0.2.10"), None).expect("unicast");
        assert_eq!(
            opts.and_then(|o| o.advertise),
            Some("192.0.2.10".parse().expect("address"))
        );
    }
}
