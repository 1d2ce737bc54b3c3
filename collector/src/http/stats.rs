//! The stats API: the engine's latest snapshot, one session of it, and actions on sessions
//! (through the control plane when there is one: stored and audited).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tapwire_api_types::{
    Action, DEFAULT_PAGE_SESSIONS, DEFAULT_PAGE_SOURCES, MAX_PAGE, Page, SessionStats, Snapshot,
    SourceStats, source_cursor,
};

use super::auth::{Authed, Change, Read};
use super::{ApiState, control, reply};
use crate::live::engine::Control;

/// A request's query: its pairs, or why it is not one.
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// `GET /api/v1/sessions?after=NAME&limit=N&sources=M`: the snapshot with one page of its
/// sessions (by name, the first `limit` after `after`), each with its first `sources` sources.
pub(super) async fn sessions(State(s): State<ApiState>, _: Authed<Read>, q: Pairs) -> Response {
    let q = match paging(q, &["after", "limit", "sources"], DEFAULT_PAGE_SESSIONS) {
        Ok(q) => q,
        Err(m) => return reply(StatusCode::BAD_REQUEST, m),
    };
    let snap = s.snapshot.load_full();
    json(&page(&snap, &q))
}

/// `GET /api/v1/sessions/{name}?after=SOURCE&limit=N`: one session with one page of its
/// sources (by `<src>_<kind>_<id>`, the first `limit` after `after`).
pub(super) async fn session(
    State(s): State<ApiState>,
    _: Authed<Read>,
    Path(name): Path<String>,
    q: Pairs,
) -> Response {
    let q = match paging(q, &["after", "limit"], DEFAULT_PAGE_SOURCES) {
        Ok(q) => q,
        Err(m) => return reply(StatusCode::BAD_REQUEST, m),
    };
    let snap = s.snapshot.load();
    match snap.sessions.iter().find(|x| x.name == name) {
        Some(x) => json(&page_sources(x, q.after.as_deref(), q.limit)),
        None => reply(StatusCode::NOT_FOUND, format!("no session named {name:?}")),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// What a list request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Paging {
    /// The cursor: the last entry of the page before.
    pub(crate) after: Option<String>,
    /// Entries in the page (sessions, or a session's sources).
    pub(crate) limit: usize,
    /// Sources per listed session.
    pub(crate) sources: usize,
}

/// Reads `after`, `limit` (1 or more, else `default_limit`; cut to [`MAX_PAGE`]) and `sources`
/// (0 or more; cut to [`MAX_PAGE`]) among the `allowed` parameters; anything else is a 400
/// that names it (the message of a 400).
fn paging(q: Pairs, allowed: &[&str], default_limit: usize) -> Result<Paging, String> {
    let Query(pairs) = q.map_err(|e| format!("query: {e}"))?;
    let mut p = Paging {
        after: None,
        limit: default_limit,
        sources: DEFAULT_PAGE_SOURCES,
    };
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown parameter {k:?} (this list takes {})",
                allowed.join(", ")
            ));
        }
        let count = |min: usize| match v.parse::<usize>() {
            Ok(n) if n >= min => Ok(n.min(MAX_PAGE)),
            _ => Err(format!("{k}: {v:?} is not a count of {min} or more")),
        };
        match k.as_str() {
            "after" => p.after = Some(v.clone()),
            "limit" => p.limit = count(1)?,
            _ => p.sources = count(0)?,
        }
    }
    Ok(p)
}

/// One page of `snap`'s sessions, which the engine publishes ordered by name.
pub(crate) fn page(snap: &Snapshot, q: &Paging) -> Snapshot {
    let start = q.after.as_deref().map_or(0, |a| {
        snap.sessions.partition_point(|s| s.name.as_str() <= a)
    });
    let end = (start + q.limit).min(snap.sessions.len());
    let sessions: Vec<SessionStats> = snap.sessions[start..end]
        .iter()
        .map(|s| page_sources(s, None, q.sources))
        .collect();
    let next = (end < snap.sessions.len())
        .then(|| sessions.last().map(|s| s.name.clone()))
        .flatten();
    Snapshot {
        version: snap.version.clone(),
        started: snap.started.clone(),
        uptime_s: snap.uptime_s,
        totals: snap.totals.clone(),
        inputs: snap.inputs.clone(),
        sessions,
        control: snap.control.clone(),
        page: Some(Page {
            total: snap.sessions.len() as u64,
            limit: q.limit as u64,
            next,
        }),
    }
}

/// `s` with the page of its sources (ordered by [`source_cursor`]) after `after`; nothing of
/// the rest of its sources is copied.
pub(crate) fn page_sources(s: &SessionStats, after: Option<&str>, limit: usize) -> SessionStats {
    let start = after.map_or(0, |a| {
        s.sources
            .partition_point(|x| source_cursor(x).as_str() <= a)
    });
    let end = (start + limit).min(s.sources.len());
    let sources: Vec<SourceStats> = s.sources[start..end].to_vec();
    let next = (end < s.sources.len())
        .then(|| sources.last().map(source_cursor))
        .flatten();
    SessionStats {
        name: s.name.clone(),
        state: s.state,
        enabled: s.enabled,
        auto: s.auto,
        filter: s.filter.clone(),
        packets: s.packets,
        bytes: s.bytes,
        written: s.written,
        pending: s.pending,
        lost: s.lost,
        truncated: s.truncated,
        gre_checksum_bad: s.gre_checksum_bad,
        drops: s.drops,
        rates: s.rates,
        last_seen: s.last_seen.clone(),
        files: s.files.clone(),
        sources,
        n_sources: s.source_count(),
        sources_page: Some(Page {
            total: s.source_count(),
            limit: limit as u64,
            next,
        }),
        protocols: s.protocols,
        top_talkers: s.top_talkers.clone(),
        tap: s.tap.clone(),
        streams: s.streams.clone(),
    }
}

/// `POST /api/v1/sessions/{name}/{action}`: the caller first, then the action. With a
/// controller, enable and disable of an API session are stored; other sessions' actions, and
/// rotations, go to the engine; both need an operator and are audited.
pub(super) async fn action(
    State(s): State<ApiState>,
    Authed(caller, ..): Authed<Change>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(parsed) = Action::parse(&action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!("unknown action {action:?}: enable, disable or rotate"),
        );
    };
    if s.controller.is_some() {
        return control::session_action(s, caller, name, parsed).await;
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    if s.control
        .send(Control::Action {
            session: name,
            action: parsed,
            reply: tx,
        })
        .is_err()
    {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector is shutting down".into(),
        );
    }
    let answer = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5))).await;
    match answer {
        Ok(Ok(Ok(msg))) => reply(StatusCode::OK, msg),
        Ok(Ok(Err(msg))) => reply(StatusCode::NOT_FOUND, msg),
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector did not answer".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::http::{ApiState, Peer, router};

    fn source(i: u32) -> Value {
        json!({
            "src": format!("10.0.{}.{}", i / 256, i % 256), "kind": "erspan-ii", "id": 1,
            "label": "", "packets": 1, "bytes": 60, "lost": 0, "duplicates": 0,
            "reordered": 0, "truncated": 0, "sequence": "none", "drops": drops(),
            "first_seen": null, "last_seen": null, "rates": rates(),
        })
    }

    fn drops() -> Value {
        json!({ "disabled": 0, "filter": 0, "disk_guard": 0, "write_error": 0, "backlog": 0,
                "no_session": 0 })
    }

    fn rates() -> Value {
        json!({ "pps_1s": 0.0, "bps_1s": 0.0, "pps_10s": 0.0, "bps_10s": 0.0 })
    }

    /// Sessions `s000`... with `n_sources` sources each, ordered as the engine publishes them.
    fn snapshot(n_sessions: usize, n_sources: u32) -> Snapshot {
        let mut sources: Vec<SourceStats> = (0..n_sources)
            .map(|i| serde_json::from_value(source(i)).unwrap())
            .collect();
        sources.sort_by_cached_key(source_cursor);
        let sessions: Vec<Value> = (0..n_sessions)
            .map(|i| {
                json!({
                    "name": format!("s{i:03}"), "state": "idle", "enabled": true,
                    "auto": true, "filter": null, "packets": 0, "bytes": 0, "written": 0,
                    "lost": 0, "truncated": 0, "drops": drops(), "rates": rates(),
                    "last_seen": null, "files": null, "sources": sources,
                    "n_sources": n_sources,
                })
            })
            .collect();
        serde_json::from_value(json!({
            "version": "0", "started": "", "uptime_s": 0.0,
            "totals": serde_json::to_value(tapwire_api_types::Totals::default()).unwrap(),
            "inputs": [], "sessions": sessions,
        }))
        .unwrap()
    }

    fn names(s: &Snapshot) -> Vec<&str> {
        s.sessions.iter().map(|x| x.name.as_str()).collect()
    }

    #[test]
    fn pages_of_sessions_follow_the_cursor_to_the_end() {
        let snap = snapshot(5, 3);
        let q = |after: Option<&str>, limit| Paging {
            after: after.map(String::from),
            limit,
            sources: 2,
        };
        let first = page(&snap, &q(None, 2));
        assert_eq!(names(&first), ["s000", "s001"]);
        let p = first.page.clone().unwrap();
        assert_eq!((p.total, p.limit, p.next.as_deref()), (5, 2, Some("s001")));
        // Each listed session holds its first 2 sources and says how many it has.
        let s = &first.sessions[0];
        assert_eq!((s.sources.len(), s.n_sources), (2, 3));
        let sp = s.sources_page.clone().unwrap();
        assert_eq!(sp.next, Some(source_cursor(&s.sources[1])));
        // Walking the cursor visits every session once, in order.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = page(&snap, &q(after.as_deref(), 2));
            seen.extend(names(&page).into_iter().map(String::from));
            match page.page.unwrap().next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["s000", "s001", "s002", "s003", "s004"]);
        // A cursor that names a session gone since still lands after where it stood.
        assert_eq!(
            names(&page(&snap, &q(Some("s001x"), 10))),
            ["s002", "s003", "s004"]
        );
        assert!(page(&snap, &q(Some("zzz"), 10)).sessions.is_empty());
    }

    #[test]
    fn a_sessions_sources_are_paged_in_cursor_order() {
        let snap = snapshot(1, 250);
        let s = &snap.sessions[0];
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page_sources(s, after.as_deref(), 100);
            assert!(p.sources.len() <= 100);
            all.extend(p.sources.iter().map(source_cursor));
            match p.sources_page.unwrap().next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want: Vec<String> = s.sources.iter().map(source_cursor).collect();
        assert_eq!(all, want);
        assert_eq!(all.len(), 250);
    }

    async fn get(app: &axum::Router, path: &str) -> (u16, Value) {
        let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer(peer)));
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_list_endpoints_are_paged_with_a_bounded_default() {
        let app = router(ApiState::new(
            Arc::new(ArcSwap::from_pointee(snapshot(250, 150))),
            crossbeam_channel::unbounded().0,
            None,
            None,
        ));
        let (status, v) = get(&app, "/api/v1/sessions").await;
        assert_eq!(status, 200);
        let listed = v["sessions"].as_array().unwrap();
        assert_eq!(listed.len(), DEFAULT_PAGE_SESSIONS);
        assert_eq!(
            listed[0]["sources"].as_array().unwrap().len(),
            DEFAULT_PAGE_SOURCES
        );
        assert_eq!(listed[0]["n_sources"], 150);
        assert_eq!(v["page"]["total"], 250);
        assert_eq!(v["page"]["next"], "s099");

        let (_, v) = get(&app, "/api/v1/sessions?after=s099&limit=5000&sources=0").await;
        let listed = v["sessions"].as_array().unwrap();
        assert_eq!(
            (listed.len(), v["page"]["limit"].as_u64()),
            (150, Some(1000))
        );
        assert_eq!(listed[0]["name"], "s100");
        assert!(listed[0]["sources"].as_array().unwrap().is_empty());
        assert_eq!(v["page"]["next"], Value::Null);

        let (status, v) = get(&app, "/api/v1/sessions/s007?limit=60").await;
        assert_eq!(status, 200);
        assert_eq!(v["sources"].as_array().unwrap().len(), 60);
        let next = v["sources_page"]["next"].as_str().unwrap().to_string();
        let (_, v) = get(
            &app,
            &format!("/api/v1/sessions/s007?after={next}&limit=100"),
        )
        .await;
        assert_eq!(v["sources"].as_array().unwrap().len(), 90);
        assert_eq!(v["sources_page"]["next"], Value::Null);

        for (path, says) in [
            ("/api/v1/sessions?limit=0", "limit: \"0\""),
            ("/api/v1/sessions?limit=ten", "limit: \"ten\""),
            ("/api/v1/sessions?offset=3", "unknown parameter \"offset\""),
            (
                "/api/v1/sessions/s001?sources=3",
                "unknown parameter \"sources\"",
            ),
        ] {
            let (status, v) = get(&app, path).await;
            assert_eq!(status, 400, "{path}");
            let m = v["message"].as_str().unwrap();
            assert!(m.contains(says), "{path}: {m}");
        }
    }
}
