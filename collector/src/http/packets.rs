//! `GET /api/v1/packets?session=&source=&from=&to=&filter=`: a query's pcapng, streamed.
//!
//! The request is checked here; the query (reading indexes, then the captures) runs on a
//! thread of its own, never on the engine or the API's runtime, and hands its output over a
//! small bounded channel: it goes at the reader's speed, with a few MiB in flight at most.
//! A refusal comes before the first byte: 400 (request, filter: libpcap's message), 422 (over
//! the limit, with the index's estimate), 503 (too many queries at once). Sessions are named,
//! never given as paths: only files of the collector's output directories are read.
//!
//! `POST /api/v1/packets/save?session=&minutes=[&filter=]` (operator and up: it writes a file)
//! runs the same query over the session's last N minutes into a file the collector names,
//! under `<--out>/saved/`, and answers with its path (the TUI's "save last N minutes"). It
//! takes one of the same query slots, at most [`MAX_SAVE_MINUTES`], the same byte limit
//! (or [`SAVE_MAX_BYTES`] without one) and at most [`MAX_SAVED_FILES`] files in that folder.

use std::collections::HashSet;
use std::future::Future;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::auth::{Authed, Change, ReadPart};
use super::{ApiState, parts, reply};
use crate::live::engine::now_ns;
use crate::query::catalog::{FileRef, LocalDirs, WithCatalog, confined};
use crate::query::fleet::{Missing, Part};
use crate::query::{self, QueryError, Request};

/// Queries running at once; more are refused with 503.
pub const MAX_QUERIES: usize = 4;
/// Pieces of output in flight between the query's thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;
/// The longest "last N minutes" a save takes.
pub const MAX_SAVE_MINUTES: u32 = 24 * 60;
/// A save's byte limit when queries have none.
pub const SAVE_MAX_BYTES: u64 = 4 << 30;
/// Files kept in the saved folder; a save beyond them is refused.
pub const MAX_SAVED_FILES: usize = 100;
/// The folder under `--out` that saves go to (not a session's: no query reads it).
pub const SAVED_DIR: &str = "saved";

/// What the API needs to answer queries.
#[derive(Debug)]
pub struct QueryState {
    /// The collector's output directory (auto-discovered sessions, and sessions without their
    /// own directory); the snapshot adds the directories sessions are configured with.
    pub out: PathBuf,
    /// A query whose estimate exceeds this is refused.
    pub max_bytes: Option<u64>,
    running: AtomicUsize,
}

impl QueryState {
    pub fn new(out: PathBuf, max_bytes: Option<u64>) -> QueryState {
        QueryState {
            out,
            max_bytes,
            running: AtomicUsize::new(0),
        }
    }
}

/// Holds one of the [`MAX_QUERIES`] slots until dropped.
struct Slot(Arc<QueryState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request's parameters, each at most once; unknown ones are refused. `local=1`: this
/// collector's own files only (what the fleet's other collectors ask for: their part).
fn parse(q: Option<&str>, now: u64) -> Result<(Request, bool), String> {
    let mut req = Request {
        to_ns: now,
        ..Request::default()
    };
    let mut local = false;
    let (mut from, mut to) = (None, None);
    let mut seen = HashSet::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: not percent-encoded UTF-8"))?;
        if !seen.insert(k.to_string()) {
            return Err(format!("{k}: given twice"));
        }
        match k {
            "session" => req.session = Some(v),
            "source" => {
                req.source = Some(
                    v.parse::<IpAddr>()
                        .map_err(|_| format!("source: {v:?} is not an IP address"))?,
                )
            }
            "from" => from = Some(v),
            "to" => to = Some(v),
            "filter" => req.filter = Some(v).filter(|f| !f.trim().is_empty()),
            "local" => {
                local = match v.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("local: {v:?} is not 1 or 0")),
                }
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let from = from.ok_or("from: required (RFC 3339, -15m, or seconds since the epoch)")?;
    req.from_ns =
        tapwire_api_types::time::parse_time(&from, now).map_err(|e| format!("from: {e}"))?;
    if let Some(t) = to {
        req.to_ns = tapwire_api_types::time::parse_time(&t, now).map_err(|e| format!("to: {e}"))?;
    }
    Ok((req, local))
}

/// `%XX` and `+` (a space, as forms send it) decoded.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The local files' catalog: the output directory and every session's, with the files the
/// engine writes now marked live.
fn catalog(s: &ApiState, q: &QueryState) -> LocalDirs {
    let snap = s.snapshot.load();
    let mut dirs = vec![q.out.clone()];
    let mut live = HashSet::new();
    for x in &snap.sessions {
        if let Some(f) = &x.files {
            let d = PathBuf::from(&f.dir);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
            if let Some(c) = &f.current {
                live.insert(PathBuf::from(c));
            }
        }
    }
    LocalDirs {
        dirs,
        live,
        any_name: false,
    }
}

/// Output handed to the connection in pieces; blocks while the reader is behind.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Vec<u8>, io::Error>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receiving end as a body stream.
struct Chunks(mpsc::Receiver<Result<Vec<u8>, io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Vec<u8>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Takes one of the [`MAX_QUERIES`] slots, if one is free.
fn take_slot(qs: &Arc<QueryState>) -> Option<Slot> {
    if qs.running.fetch_add(1, Ordering::AcqRel) >= MAX_QUERIES {
        qs.running.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(Arc::clone(qs)))
}

fn busy() -> Response {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{MAX_QUERIES} queries are running: try again when one is done"),
    )
}

/// Why a save failed.
enum SaveFailed {
    Refused(QueryError),
    Status(StatusCode, String),
}

impl SaveFailed {
    fn answer(self) -> Response {
        match self {
            SaveFailed::Refused(e) => refusal(e),
            SaveFailed::Status(code, m) => reply(code, m),
        }
    }
}

/// The refusal of a query as its HTTP answer.
fn refusal(e: QueryError) -> Response {
    match e {
        QueryError::TooLarge {
            estimate,
            limit_bytes,
        } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "ok": false,
                "message": QueryError::TooLarge { estimate, limit_bytes }.to_string(),
                "estimate": estimate,
                "limit_bytes": limit_bytes,
            })),
        )
            .into_response(),
        e @ (QueryError::BadRequest(_) | QueryError::Filter(_)) => {
            reply(StatusCode::BAD_REQUEST, e.to_string())
        }
        e => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A save's parameters: `session` (required), `minutes` (1 to [`MAX_SAVE_MINUTES`]),
/// `filter`; the request is the last `minutes` before `now`.
fn parse_save(q: Option<&str>, now: u64) -> Result<(Request, u32), String> {
    let mut req = Request {
        to_ns: now,
        ..Request::default()
    };
    let mut minutes = None;
    let mut seen = HashSet::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: not percent-encoded UTF-8"))?;
        if !seen.insert(k.to_string()) {
            return Err(format!("{k}: given twice"));
        }
        match k {
            "session" => req.session = Some(v),
            "minutes" => minutes = Some(v),
            "filter" => req.filter = Some(v).filter(|f| !f.trim().is_empty()),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if req.session.is_none() {
        return Err("session: required (a session's name)".into());
    }
    let minutes = minutes
        .ok_or("minutes: required")?
        .parse::<u32>()
        .ok()
        .filter(|m| (1..=MAX_SAVE_MINUTES).contains(m))
        .ok_or(format!(
            "minutes: a whole number from 1 to {MAX_SAVE_MINUTES}"
        ))?;
    req.from_ns = now.saturating_sub(u64::from(minutes) * 60_000_000_000);
    Ok((req, minutes))
}

/// The file a save goes to: `<dir>/<session>_last<N>m_<time>Z.pcapng`, a new name (`-2`, ...
/// when taken); refused when the folder holds [`MAX_SAVED_FILES`] already.
fn save_path(
    dir: &std::path::Path,
    session: &str,
    minutes: u32,
    now: u64,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let n = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pcapng"))
        .count();
    if n >= MAX_SAVED_FILES {
        return Err(format!(
            "{} holds {n} saved files, the most kept: remove some first",
            dir.display()
        ));
    }
    let stamp = crate::live::output::compact_utc(now);
    let base = format!("{session}_last{minutes}m_{stamp}");
    for k in 1..=MAX_SAVED_FILES {
        let name = if k == 1 {
            format!("{base}.pcapng")
        } else {
            format!("{base}-{k}.pcapng")
        };
        let p = dir.join(name);
        if !p.exists() {
            return Ok(p);
        }
    }
    Err(format!("no free name for {base} in {}", dir.display()))
}

/// Runs `req` into `path` (written beside it under a hidden name, renamed when whole).
fn save_to(
    local: &LocalDirs,
    req: &Request,
    max_bytes: u64,
    path: &std::path::Path,
) -> Result<query::Summary, SaveFailed> {
    let prepared = query::prepare(local, req, Some(max_bytes)).map_err(SaveFailed::Refused)?;
    let tmp = path.with_file_name(format!(
        ".{}.part",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = io::BufWriter::new(f);
        let sum = prepared.write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(sum)
    });
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SaveFailed::Status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        )
    })
}

pub(super) async fn save(
    State(s): State<ApiState>,
    Authed(caller, ..): Authed<Change>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(qs) = s.query.clone() else {
        return reply(StatusCode::NOT_FOUND, "queries are not served here".into());
    };
    let now = now_ns();
    let (req, minutes) = match parse_save(q.as_deref(), now) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
    };
    let session = req.session.clone().unwrap_or_default();
    if let Err(e) = crate::config::validate_name(&session) {
        return reply(StatusCode::BAD_REQUEST, format!("session {session:?}: {e}"));
    }
    if !s.snapshot.load().sessions.iter().any(|x| x.name == session) {
        return reply(StatusCode::NOT_FOUND, format!("no session {session:?}"));
    }
    let Some(slot) = take_slot(&qs) else {
        return busy();
    };
    let local = catalog(&s, &qs);
    let dir = qs.out.join(SAVED_DIR);
    let max_bytes = qs.max_bytes.unwrap_or(SAVE_MAX_BYTES);
    let by = caller.name.clone();
    let done = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let path = save_path(&dir, &session, minutes, now)
            .map_err(|e| SaveFailed::Status(StatusCode::CONFLICT, e))?;
        let sum = save_to(&local, &req, max_bytes, &path)?;
        tracing::info!(
            session,
            minutes,
            by,
            path = %path.display(),
            packets = sum.packets,
            bytes = sum.bytes,
            "last minutes saved"
        );
        let message = format!(
            "saved {} packets of the last {minutes} min of {session} to {}",
            sum.packets,
            path.display()
        );
        Ok::<_, SaveFailed>(axum::Json(json!({
            "ok": true,
            "message": message,
            "path": path.display().to_string(),
            "packets": sum.packets,
            "bytes": sum.bytes,
            "notes": sum.notes,
        })))
    })
    .await;
    match done {
        Ok(Ok(answer)) => answer.into_response(),
        Ok(Err(e)) => e.answer(),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn packets(
    State(s): State<ApiState>,
    Authed(caller, ..): Authed<ReadPart>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(qs) = s.query.clone() else {
        return reply(StatusCode::NOT_FOUND, "queries are not served here".into());
    };
    let (req, local_only) = match parse(q.as_deref(), now_ns()) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
    };
    let Some(slot) = take_slot(&qs) else {
        return busy();
    };
    // Another collector asking for its part gets this one's files only (never a fan-out).
    let fleet = match (&s.controller, local_only || caller.peer.is_some()) {
        (Some(ctl), false) => Some(plan_fleet(Arc::clone(ctl), &qs.out, &req).await),
        _ => None,
    };
    let local = WithCatalog {
        local: catalog(&s, &qs),
        extra: fleet.as_ref().map(|f| f.mine.clone()).unwrap_or_default(),
    };
    if let Some(f) = fleet
        && !(f.others.is_empty() && f.missing.is_empty())
    {
        return fleet_query(&s, f, local, req, qs, slot, caller).await;
    }
    let (planned_tx, planned) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let by = caller.name.clone();
    let spawned = std::thread::Builder::new()
        .name("tapwire-query".into())
        .spawn(move || {
            let _slot = slot;
            let prepared = match query::prepare(&local, &req, qs.max_bytes) {
                Ok(p) => p,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            if planned_tx.send(Ok(prepared.estimate())).is_err() {
                return;
            }
            let mut w = ChannelWriter { tx: tx.clone() };
            match prepared.write(&mut w) {
                Ok(sum) => tracing::info!(
                    session = req.session.as_deref().unwrap_or("*"),
                    by,
                    local_only,
                    packets = sum.packets,
                    bytes = sum.bytes,
                    bytes_read = sum.bytes_read,
                    "query served"
                ),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::debug!("query: the client went away")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "query failed while writing");
                    // The body ends with an error: the client sees a broken transfer, not a
                    // short but valid file.
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
    if let Err(e) = spawned {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot start a query: {e}"),
        );
    }
    match planned.await {
        Ok(Ok(estimate)) => (
            answer_headers(estimate.bytes, estimate.packets),
            Body::from_stream(Chunks(rx)),
        )
            .into_response(),
        Ok(Err(e)) => refusal(e),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the query stopped".into(),
        ),
    }
}

/// The head of a query's answer.
fn answer_headers(bytes: u64, packets: u64) -> [(header::HeaderName, String); 4] {
    [
        (header::CONTENT_TYPE, "application/x-pcapng".to_string()),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"tapwire-query.pcapng\"".to_string(),
        ),
        (
            header::HeaderName::from_static("x-tapwire-estimate-bytes"),
            bytes.to_string(),
        ),
        (
            header::HeaderName::from_static("x-tapwire-estimate-packets"),
            packets.to_string(),
        ),
    ]
}

/// The header (and trailer) naming the collectors a fleet query left out.
pub const UNREACHABLE: &str = "x-tapwire-unreachable";

/// What the fleet's catalog says of a query: this collector's files it names, the other
/// collectors that hold some (name, API URL, live), and what could not be known.
struct FleetPlan {
    mine: Vec<FileRef>,
    others: Vec<(String, Option<String>, bool)>,
    missing: Vec<Missing>,
}

/// Reads the catalog for `req` (every session's rows when it names none).
async fn plan_fleet(ctl: Arc<super::Ctl>, out: &std::path::Path, req: &Request) -> FleetPlan {
    let (out, req) = (out.to_path_buf(), req.clone());
    let planned = tokio::task::spawn_blocking(move || {
        let me = ctl.name().to_string();
        let sessions = match &req.session {
            Some(s) => vec![s.clone()],
            None => ctl.sessions()?.into_iter().map(|s| s.name).collect(),
        };
        let mut rows = Vec::new();
        for s in &sessions {
            rows.extend(ctl.catalog_range(s, req.from_ns, req.to_ns)?);
        }
        let peers = ctl.peers();
        let mut mine = Vec::new();
        let mut others = std::collections::BTreeSet::new();
        for r in rows {
            if r.collector != me {
                others.insert(r.collector);
                continue;
            }
            // What the catalog says is confined to the output root; anything else is left.
            match confined(&out, &r.path) {
                Some(path) => mine.push(FileRef {
                    collector: None,
                    session: Some(r.session),
                    path,
                    first_ns: r.first_ns.map(|t| t.max(0) as u64),
                    last_ns: r.last_ns.map(|t| t.max(0) as u64),
                    live: r.state == tapwire_control::store::FileState::Open,
                }),
                None => tracing::debug!(
                    path = r.path,
                    "catalog: a path outside the output root, or gone"
                ),
            }
        }
        let others = others
            .into_iter()
            .map(|c| {
                let (url, live) = peers.get(&c).cloned().unwrap_or((None, false));
                (c, url, live)
            })
            .collect();
        Ok::<_, tapwire_control::Refused>(FleetPlan {
            mine,
            others,
            missing: Vec::new(),
        })
    })
    .await;
    let why = match planned {
        Ok(Ok(p)) => return p,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    FleetPlan {
        mine: Vec::new(),
        others: Vec::new(),
        missing: vec![Missing {
            collector: "(the fleet's catalog)".into(),
            why: format!(
                "the catalog could not be read ({why}); only this collector's files are in the answer"
            ),
        }],
    }
}

/// A part request for `req`: this collector's files only, times to the nanosecond.
fn part_path(req: &Request) -> String {
    let mut q = vec![
        format!(
            "from={}",
            enc(&tapwire_api_types::time::rfc3339_ns(req.from_ns))
        ),
        format!(
            "to={}",
            enc(&tapwire_api_types::time::rfc3339_ns(req.to_ns))
        ),
        "local=1".to_string(),
    ];
    if let Some(s) = &req.session {
        q.push(format!("session={}", enc(s)));
    }
    if let Some(s) = &req.source {
        q.push(format!("source={}", enc(&s.to_string())));
    }
    if let Some(f) = &req.filter {
        q.push(format!("filter={}", enc(f)));
    }
    format!("/api/v1/packets?{}", q.join("&"))
}

/// Percent-encoding of everything but unreserved characters.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header value naming the collectors left out: `A (why); B (why)`, visible ASCII only.
fn unreachable_value(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("{} ({})", m.collector, m.why))
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(4000)
        .collect()
}

/// A fleet query: asks every other collector that holds files of the range for its part,
/// reads this one's, merges them by timestamp and streams the result; collectors that could
/// not be read are named in the output, in the `x-tapwire-unreachable` header (those known
/// before the first byte) and in the trailer of that name (all of them).
async fn fleet_query(
    s: &ApiState,
    plan: FleetPlan,
    local: WithCatalog,
    req: Request,
    qs: Arc<QueryState>,
    slot: Slot,
    caller: tapwire_control::auth::Caller,
) -> Response {
    let Some(ctl) = s.controller.clone() else {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "no control plane".into());
    };
    let peer_tls = s.peer_tls.clone();
    let me = ctl.name().to_string();
    let mut missing = plan.missing;
    let path = part_path(&req);
    let mut asked = Vec::new();
    for (name, url, live) in plan.others {
        match (url, live) {
            (_, false) => missing.push(Missing {
                collector: name,
                why: "its lease ran out (it is not live)".into(),
            }),
            (None, true) => missing.push(Missing {
                collector: name,
                why: "it registered no API URL (--api-url)".into(),
            }),
            (Some(url), true) => {
                let (path, token, tls) = (path.clone(), ctl.peer_token(), peer_tls.clone());
                asked.push((
                    name,
                    tokio::spawn(
                        async move { parts::ask(&url, &path, &token, tls.as_ref()).await },
                    ),
                ));
            }
        }
    }
    let mut remote = Vec::new();
    let (mut est_bytes, mut est_packets) = (0u64, 0u64);
    for (name, task) in asked {
        match task.await {
            Ok(Ok(a)) => {
                est_bytes = est_bytes.saturating_add(a.estimate_bytes);
                est_packets = est_packets.saturating_add(a.estimate_packets);
                remote.push(Part {
                    collector: name,
                    chunks: a.chunks,
                });
            }
            Ok(Err(parts::Failed::Refused(code, m))) if code != StatusCode::NOT_FOUND => {
                return reply(code, format!("collector {name}: {m}"));
            }
            Ok(Err(parts::Failed::Refused(code, m))) => missing.push(Missing {
                collector: name,
                why: format!("it answered {}: {m}", code.as_u16()),
            }),
            Ok(Err(parts::Failed::Unreachable(why))) => missing.push(Missing {
                collector: name,
                why,
            }),
            Err(e) => missing.push(Missing {
                collector: name,
                why: e.to_string(),
            }),
        }
    }
    for m in &missing {
        tracing::warn!(
            collector = m.collector,
            why = m.why,
            "fleet query: a collector left out"
        );
    }
    let (planned_tx, planned) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (trailer_tx, trailer_rx) = oneshot::channel::<String>();
    let head_missing = unreachable_value(&missing);
    let by = caller.name.clone();
    let spawned = std::thread::Builder::new()
        .name("tapwire-query".into())
        .spawn(move || {
            let _slot = slot;
            let prepared = match query::prepare(&local, &req, None) {
                Ok(p) => p,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            let mut estimate = prepared.estimate();
            estimate.bytes = estimate.bytes.saturating_add(est_bytes);
            estimate.packets = estimate.packets.saturating_add(est_packets);
            if let Some(limit) = qs.max_bytes
                && estimate.bytes > limit
            {
                let _ = planned_tx.send(Err(QueryError::TooLarge {
                    estimate,
                    limit_bytes: limit,
                }));
                return;
            }
            if planned_tx.send(Ok(estimate)).is_err() {
                return;
            }
            // This collector's part, on a thread of its own, into the merge like the others.
            let (part_tx, part_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
            let local_part = std::thread::Builder::new()
                .name("tapwire-query-part".into())
                .spawn(move || {
                    let mut w = PartWriter { tx: part_tx.clone() };
                    if let Err(e) = prepared.write(&mut w)
                        && e.kind() != io::ErrorKind::BrokenPipe
                    {
                        let _ = part_tx.blocking_send(Err(e.to_string()));
                    }
                });
            let mut parts = remote;
            match local_part {
                Ok(_) => parts.push(Part {
                    collector: me.clone(),
                    chunks: part_rx,
                }),
                Err(e) => missing.push(Missing {
                    collector: me.clone(),
                    why: format!("cannot start its part: {e}"),
                }),
            }
            parts.sort_by(|a, b| a.collector.cmp(&b.collector));
            let mut w = ChannelWriter { tx: tx.clone() };
            match query::fleet::merge(parts, missing, query::describe(&req), &mut w) {
                Ok(m) => {
                    tracing::info!(
                        session = req.session.as_deref().unwrap_or("*"),
                        by,
                        packets = m.packets,
                        bytes = m.bytes,
                        parts = ?m.by_collector,
                        missing = ?m.missing.iter().map(|x| x.collector.as_str()).collect::<Vec<_>>(),
                        "fleet query served"
                    );
                    let _ = trailer_tx.send(unreachable_value(&m.missing));
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::debug!("query: the client went away")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet query failed while writing");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
    if let Err(e) = spawned {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot start a query: {e}"),
        );
    }
    match planned.await {
        Ok(Ok(estimate)) => {
            let mut resp = (
                answer_headers(estimate.bytes, estimate.packets),
                Body::new(WithTrailer {
                    chunks: rx,
                    trailer: Some(trailer_rx),
                }),
            )
                .into_response();
            let h = resp.headers_mut();
            h.insert(
                header::TRAILER,
                header::HeaderValue::from_static(UNREACHABLE),
            );
            if !head_missing.is_empty()
                && let Ok(v) = header::HeaderValue::from_str(&head_missing)
            {
                h.insert(UNREACHABLE, v);
            }
            resp
        }
        Ok(Err(e)) => refusal(e),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the query stopped".into(),
        ),
    }
}

/// This collector's part, handed to the merge in pieces.
struct PartWriter {
    tx: mpsc::Sender<query::fleet::Chunk>,
}

impl Write for PartWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the merge stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A fleet query's body: its pieces, then the trailer naming the collectors left out (sent
/// when the client asked for trailers with `TE: trailers`).
struct WithTrailer {
    chunks: mpsc::Receiver<Result<Vec<u8>, io::Error>>,
    trailer: Option<oneshot::Receiver<String>>,
}

impl hyper::body::Body for WithTrailer {
    type Data = axum::body::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(b.into()))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        let Some(rx) = self.trailer.as_mut() else {
            return Poll::Ready(None);
        };
        let value = match Pin::new(rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(v) => v.unwrap_or_default(),
        };
        self.trailer = None;
        let mut t = header::HeaderMap::new();
        // Always sent: empty means nobody was left out.
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            t.insert(UNREACHABLE, v);
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::trailers(t))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::{Peer, router};
    use arc_swap::ArcSwap;
    use axum::extract::ConnectInfo;
    use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo};
    use tower::ServiceExt;

    /// A router serving queries over `dir`, holding one session's file of 100 packets (hosts
    /// 10.0.0.1 and 10.0.0.2 in turn, at 1000 + i ns).
    fn app(dir: &std::path::Path, max_bytes: Option<u64>) -> axum::Router {
        app_at(dir, max_bytes, 1000, None)
    }

    /// [`app`] with the packets from `t0_ns` on, the session `web` in the snapshot, and the
    /// API token `token` (actions without it need the loopback).
    fn app_at(
        dir: &std::path::Path,
        max_bytes: Option<u64>,
        t0_ns: u64,
        token: Option<&str>,
    ) -> axum::Router {
        let mut enc = Encoder::new(Format::Pcapng);
        enc.add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "10.0.0.5 erspan-ii session 1".into(),
            description: String::new(),
            snaplen: 65535,
        })
        .unwrap();
        for i in 0..100u8 {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[
                8,
                0,
                0x45,
                0,
                0,
                20,
                0,
                0,
                0,
                0,
                64,
                17,
                0,
                0,
                10,
                0,
                0,
                1 + i % 2,
                10,
                9,
                9,
                9,
            ]);
            f.extend_from_slice(&[i; 20]);
            enc.packet(
                0,
                &PacketInfo {
                    ts_ns: t0_ns + u64::from(i),
                    orig_len: 56,
                    data: &f,
                    direction: None,
                    comment: None,
                },
            )
            .unwrap();
        }
        std::fs::write(dir.join("web_20260101T000000Z.pcapng"), enc.take_bytes()).unwrap();
        let (control, _) = crossbeam_channel::unbounded();
        let snapshot = Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
            version: "t".into(),
            started: String::new(),
            uptime_s: 0.0,
            totals: Default::default(),
            inputs: Vec::new(),
            sessions: vec![web_session()],
            control: None,
            page: None,
        }));
        router(
            ApiState::new(
                snapshot,
                control,
                token.map(crate::http::ApiToken::new),
                None,
            )
            .with_query(Arc::new(QueryState::new(dir.to_path_buf(), max_bytes))),
        )
    }

    fn web_session() -> tapwire_api_types::SessionStats {
        serde_json::from_value(json!({
            "name": "web", "state": "receiving", "enabled": true, "auto": true, "filter": null,
            "packets": 100, "bytes": 5600, "written": 100, "lost": 0, "truncated": 0,
            "drops": tapwire_api_types::Drops::default(),
            "rates": tapwire_api_types::Rates::default(),
            "last_seen": null, "files": null, "sources": [],
        }))
        .unwrap()
    }

    async fn get(app: &axum::Router, uri: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        send(app, "GET", uri, "127.0.0.1:5000").await
    }

    async fn send(
        app: &axum::Router,
        method: &str,
        uri: &str,
        peer: &str,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(Peer(peer.parse().unwrap())));
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 26)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    #[tokio::test]
    async fn the_route_streams_a_query_and_refuses_before_the_first_byte() {
        let dir = std::env::temp_dir().join(format!("tapwire-http-packets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = app(&dir, None);
        let (status, headers, body) = get(
            &a,
            "/api/v1/packets?session=web&from=0&to=1&filter=host%2010.0.0.2",
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/x-pcapng")
        );
        let mut r = tapwire_formats::capture::CaptureReader::new(&body[..]).unwrap();
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            assert_eq!(rec.data[29], 2);
            n += 1;
        }
        assert_eq!(n, 50);
        let (status, _, body) =
            get(&a, "/api/v1/packets?session=web&from=0&filter=tcp%20port").await;
        assert_eq!(status, 400);
        assert!(
            String::from_utf8_lossy(&body).contains("syntax error"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        let (status, _, _) = get(&a, "/api/v1/packets?session=../../etc&from=0").await;
        assert_eq!(status, 400);
        let (status, _, _) = get(&a, "/api/v1/packets?session=web&from=0&dir=/etc").await;
        assert_eq!(status, 400);
        // A range with no data: an empty, valid pcapng.
        let (status, _, body) = get(&a, "/api/v1/packets?session=web&from=5&to=6").await;
        assert_eq!(status, 200);
        let mut r = tapwire_formats::capture::CaptureReader::new(&body[..]).unwrap();
        assert!(r.next_record().unwrap().is_none());
        let small = app(&dir, Some(100));
        let (status, _, body) = get(&small, "/api/v1/packets?session=web&from=0").await;
        assert_eq!(status, 422);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["estimate"]["packets"], 100);
        assert_eq!(v["limit_bytes"], 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// "Save the last N minutes": operators only (here: the loopback or the API token), into
    /// a file the collector names under `--out`/saved, answered with its path; bounded.
    #[tokio::test]
    async fn save_writes_the_last_minutes_into_a_file_the_collector_names() {
        let dir = std::env::temp_dir().join(format!("tapwire-http-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Packets a minute old: inside the last 5 minutes.
        let a = app_at(&dir, None, now_ns() - 60_000_000_000, Some("secret"));
        let save = "/api/v1/packets/save?session=web&minutes=5&filter=host%2010.0.0.2";
        // Another host without the token: refused before anything is written.
        let (status, _, _) = send(&a, "POST", save, "192.0.2.9:5000").await;
        assert_eq!(status, 403);
        assert!(!dir.join(SAVED_DIR).exists());
        let (status, _, body) = send(&a, "POST", save, "127.0.0.1:5000").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["packets"], 50);
        let path = PathBuf::from(v["path"].as_str().unwrap());
        assert_eq!(path.parent(), Some(dir.join(SAVED_DIR).as_path()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("web_last5m_") && name.ends_with("Z.pcapng"),
            "{name}"
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains(&path.display().to_string())
        );
        let bytes = std::fs::read(&path).unwrap();
        let mut r = tapwire_formats::capture::CaptureReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            assert_eq!(rec.data[29], 2);
            n += 1;
        }
        assert_eq!(n, 50);
        // A second save in the same instant: another name, never the first file overwritten.
        let (status, _, body) = send(&a, "POST", save, "127.0.0.1:5000").await;
        assert_eq!(status, 200);
        let v2: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_ne!(v2["path"], v["path"]);
        // Saves never become query input: the session still has its one file.
        let local = LocalDirs {
            dirs: vec![dir.clone()],
            ..LocalDirs::default()
        };
        use crate::query::catalog::Catalog as _;
        assert_eq!(local.files(Some("web"), 0, u64::MAX).unwrap().len(), 1);
        // Bad requests: names only, minutes bounded, unknown sessions and parameters.
        for (q, code) in [
            ("session=web&minutes=0", 400),
            ("session=web&minutes=1441", 400),
            ("session=web&minutes=5&path=/etc/x", 400),
            ("session=../web&minutes=5", 400),
            ("minutes=5", 400),
            ("session=nosuch&minutes=5", 404),
        ] {
            let (status, _, body) = send(
                &a,
                "POST",
                &format!("/api/v1/packets/save?{q}"),
                "127.0.0.1:5000",
            )
            .await;
            assert_eq!(status, code, "{q}: {}", String::from_utf8_lossy(&body));
        }
        // Over the byte limit: refused with the estimate, nothing written.
        let small = app_at(&dir, Some(100), now_ns() - 60_000_000_000, None);
        let (status, _, body) = send(&small, "POST", save, "127.0.0.1:5000").await;
        assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
        // The folder full: refused.
        for k in 0..MAX_SAVED_FILES {
            std::fs::write(dir.join(SAVED_DIR).join(format!("x{k}.pcapng")), b"").unwrap();
        }
        let (status, _, body) = send(&a, "POST", save, "127.0.0.1:5000").await;
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        let n_files = std::fs::read_dir(dir.join(SAVED_DIR)).unwrap().count();
        assert_eq!(n_files, MAX_SAVED_FILES + 2, "no part file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A part asked of another collector over HTTP: its answer in pieces; a refusal (a bad
    /// filter) passed on; a collector that refuses connections named as unreachable.
    #[tokio::test]
    async fn a_part_is_asked_over_http_and_failures_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("tapwire-http-part-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = app(&dir, None);
        let (control, _) = crossbeam_channel::unbounded();
        let snapshot = Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
            version: "t".into(),
            started: String::new(),
            uptime_s: 0.0,
            totals: Default::default(),
            inputs: Vec::new(),
            sessions: vec![web_session()],
            control: None,
            page: None,
        }));
        let state = ApiState::new(snapshot, control, None, None)
            .with_query(Arc::new(QueryState::new(dir.clone(), None)));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let limits = crate::http::serve::Limits::for_descriptor_limit(1024);
        let _gate = crate::http::serve_on(vec![(l, None)], state, limits).unwrap();
        let url = format!("http://{addr}");
        let req = Request {
            session: Some("web".into()),
            from_ns: 0,
            to_ns: 10_000,
            filter: Some("host 10.0.0.2".into()),
            ..Request::default()
        };
        let mut a = parts::ask(&url, &part_path(&req), "twp1_test", None)
            .await
            .unwrap();
        assert!(a.estimate_packets >= 50);
        let mut body = Vec::new();
        while let Some(c) = a.chunks.recv().await {
            body.extend(c.unwrap());
        }
        let mut r = tapwire_formats::capture::CaptureReader::new(&body[..]).unwrap();
        let mut n = 0;
        while r.next_record().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 50);
        let bad = Request {
            filter: Some("tcp port".into()),
            ..req.clone()
        };
        match parts::ask(&url, &part_path(&bad), "t", None).await {
            Err(parts::Failed::Refused(code, m)) => {
                assert_eq!(code, StatusCode::BAD_REQUEST);
                assert!(m.contains("syntax error"), "{m}");
            }
            _ => panic!("a bad filter is a refusal"),
        }
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        assert!(matches!(
            parts::ask(&gone, &part_path(&req), "t", None).await,
            Err(parts::Failed::Unreachable(_))
        ));
        assert!(matches!(
            parts::ask("ftp://127.0.0.1:1", &part_path(&req), "t", None).await,
            Err(parts::Failed::Unreachable(m)) if m.contains("http://")
        ));
        assert_eq!(
            unreachable_value(&[Missing {
                collector: "a".into(),
                why: "gone\naway \u{e9}".into(),
            }]),
            "a (gone?away ?)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parameters() {
        let now = 1_765_029_720_000_000_000;
        let (r, local) = parse(
            Some("session=web&from=-15m&filter=host%2010.0.0.5+and+port%2080&source=10.0.0.9"),
            now,
        )
        .unwrap();
        assert!(!local);
        assert!(parse(Some("from=-1m&local=1"), now).unwrap().1);
        assert!(parse(Some("from=-1m&local=yes"), now).is_err());
        assert_eq!(r.session.as_deref(), Some("web"));
        assert_eq!((r.from_ns, r.to_ns), (now - 900_000_000_000, now));
        assert_eq!(r.filter.as_deref(), Some("host 10.0.0.5 and port 80"));
        assert_eq!(r.source, Some("10.0.0.9".parse().unwrap()));
        assert!(
            parse(Some("session=web"), now)
                .unwrap_err()
                .starts_with("from: required")
        );
        assert!(
            parse(Some("from=-1m&path=/etc"), now)
                .unwrap_err()
                .contains("unknown parameter")
        );
        assert!(
            parse(Some("from=-1m&from=-2m"), now)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse(Some("from=yesterday"), now)
                .unwrap_err()
                .starts_with("from:")
        );
        assert!(parse(Some("from=-1m&source=x"), now).is_err());
        assert_eq!(percent_decode("%zz"), None);
    }
}
