//! The control plane through its router: requests are sent into the real axum router with a
//! chosen peer address (loopback or remote), against a SQLite database in a temporary
//! directory and a stand-in engine that records what it is given.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use tapwire_api_types::control::{FlowStatus, Role};
use tapwire_control::auth::Caller;
use tapwire_control::store::Location;
use tapwire_control::store::sqlite::SqliteStore;
use tapwire_control::{Controller, ControllerOptions, bootstrap_token_path};
use tapwire_formats::decap::Kind;

use super::*;
use crate::config::{CollectorConfig, Config, FilesConfig, SessionConfig, SourceMatch, TapConfig};
use crate::filter;
use crate::http::serve::{Closed, Gate, Limits};
use crate::live::control_plane::{EngineLink, SystemClock};

/// A controller on the database at `db` whose engine is the other end of `tx`.
fn start(
    db: &std::path::Path,
    tx: Sender<Control>,
    max_pps: Option<u64>,
    advertise: IpAddr,
) -> Arc<Ctl> {
    Controller::start(
        ControllerOptions {
            db: Location::Sqlite(db.to_path_buf()),
            name: "c1".into(),
            advertise: Some(advertise),
            api_url: None,
            max_probes: 3,
            max_flows_per_probe: 2,
            max_pps_per_probe: max_pps,
            report_interval: Duration::from_secs(1),
            lease: tapwire_control::fleet::LEASE,
            heartbeat: tapwire_control::fleet::HEARTBEAT,
        },
        Box::new(SqliteStore::open(db).unwrap()),
        EngineLink::new(
            tx,
            Arc::new(ArcSwap::from_pointee(file_config())),
            FilesConfig::default(),
        ),
        Box::new(SystemClock),
    )
    .unwrap()
}

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "192.0.2.9:40000";

struct Harness {
    app: Router,
    /// What `app` was made from, to serve it over TCP.
    state: ApiState,
    ctl: Arc<Ctl>,
    /// Every session list the engine was given.
    applied: Arc<Mutex<Vec<Vec<String>>>>,
    admin: String,
    dir: std::path::PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn file_config() -> Config {
    let mut tap = TapConfig::named("tw-file");
    tap.persistent = false;
    Config {
        collector: CollectorConfig {
            out: None,
            auto_discover: None,
            allow: Vec::new(),
            min_free_disk_bytes: None,
            default_files: FilesConfig::default(),
            tap_prefix: None,
            limits: Default::default(),
        },
        sessions: vec![SessionConfig {
            name: "from-file".into(),
            enabled: true,
            // Gathers ERSPAN II id 1: API sessions must not be given it.
            sources: vec![SourceMatch {
                src: None,
                kind: Some(Kind::ErspanII),
                ids: Some(1..=1),
            }],
            filter: None,
            files: None,
            tap: Some(tap),
        }],
        hooks: [("compress".to_string(), "gzip -9 \"$1\"".to_string())].into(),
    }
}

fn harness(tag: &str, max_pps: Option<u64>) -> Harness {
    harness_advertising(tag, max_pps, "10.0.0.1".parse().unwrap())
}

/// A harness whose collector tells probes to send to `advertise`.
fn harness_advertising(tag: &str, max_pps: Option<u64>, advertise: IpAddr) -> Harness {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tapwire-ctl-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<Control>();
    let applied = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&applied);
    std::thread::spawn(move || {
        for c in rx {
            match c {
                Control::Apply { sessions, reply } => {
                    seen.lock()
                        .unwrap()
                        .push(sessions.iter().map(|s| s.name.clone()).collect());
                    let _ = reply.send(Ok(()));
                }
                Control::Action { session, reply, .. } => {
                    let _ = reply.send(if session == "from-file" {
                        Ok("done".into())
                    } else {
                        Err(format!("no session named {session:?}"))
                    });
                }
                Control::Subscribe(req) => {
                    let _ = req
                        .reply
                        .send(Err(crate::live::stream::Refusal::NoSession(req.session)));
                }
                Control::Reload { .. } => {}
            }
        }
    });
    let db = dir.join("c.db");
    let ctl = start(&db, tx.clone(), max_pps, advertise);
    // The start-up Apply has been taken by the stand-in engine before any test counts.
    let t0 = Instant::now();
    while applied.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no start-up Apply");
        std::thread::sleep(Duration::from_millis(5));
    }
    let admin = std::fs::read_to_string(bootstrap_token_path(&db))
        .unwrap()
        .trim()
        .to_string();
    // The database and the first admin token are the owner's alone.
    for f in [db.clone(), bootstrap_token_path(&db)] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let snapshot = Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
        version: "t".into(),
        started: String::new(),
        uptime_s: 0.0,
        totals: Default::default(),
        inputs: Vec::new(),
        sessions: Vec::new(),
        control: None,
        page: None,
    }));
    let state = ApiState::new(snapshot, tx, None, Some(Arc::clone(&ctl)));
    Harness {
        app: router(state.clone()),
        state,
        ctl,
        applied,
        admin,
        dir,
    }
}

/// One request into `app` from `peer`; the status and the body (JSON when it is).
async fn send(
    app: Router,
    method: &str,
    path: &str,
    peer: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(Peer(addr)));
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        peer: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        send(self.app.clone(), method, path, peer, token, body).await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call(method, path, REMOTE, Some(&self.admin.clone()), body)
            .await
    }

    async fn token(&self, name: &str, role: &str) -> String {
        let (s, v) = self
            .admin(
                "POST",
                "/api/v1/tokens",
                Some(&json!({ "name": name, "role": role }).to_string()),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn audit_actions(&self) -> Vec<(String, String, String)> {
        self.ctl
            .audit(&Caller::system("test"), 0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| (e.token, e.action, e.target))
            .collect()
    }
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_has() {
    let doc: Value = serde_json::from_str(control::OPENAPI).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let routes = routes(true).list;
    for (method, path) in &routes {
        assert!(
            paths
                .get(*path)
                .and_then(|p| p.get(method.to_lowercase()))
                .is_some(),
            "{method} {path} is routed but not in openapi.json"
        );
    }
    let mut documented = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                routes
                    .iter()
                    .any(|(m, p)| m.eq_ignore_ascii_case(method) && p == path),
                "{method} {path} is in openapi.json but not routed"
            );
        }
    }
    assert_eq!(documented, routes.len());
    // And the router really answers each one (not its fallback, not 405).
    let h = harness("openapi", None);
    for (method, path) in &routes {
        let concrete = path
            .replace("{name}", "x")
            .replace("{id}", "1")
            .replace("{action}", "enable");
        let (status, body) = h.admin(method, &concrete, Some("{}")).await;
        assert_ne!(status, 405, "{method} {concrete}: {body}");
        assert!(
            !body.to_string().contains("no such route"),
            "{method} {concrete} fell through: {body}"
        );
    }
}

/// A live stream is a read: no token from another host is a 401; then a filter libpcap
/// refuses is a 400 with libpcap's message (before the engine is asked), then a session the
/// engine does not run is a 404.
#[tokio::test]
async fn the_stream_route_checks_the_caller_the_filter_then_the_session() {
    let h = harness("stream", None);
    let viewer = h.token("ro", "viewer").await;
    let path = "/api/v1/sessions/web/stream";
    let (s, v) = h.call("GET", path, REMOTE, None, None).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = h
        .call(
            "GET",
            "/api/v1/sessions/web/stream?filter=tcp%20port",
            REMOTE,
            Some("tw_0000"),
            None,
        )
        .await;
    assert_eq!(s, 401, "a wrong token before a bad filter: {v}");
    let (s, v) = h
        .call(
            "GET",
            "/api/v1/sessions/web/stream?filter=tcp%20port",
            REMOTE,
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("syntax error"),
        "{v}"
    );
    let (s, v) = h
        .call(
            "GET",
            "/api/v1/sessions/web/stream?fliter=udp",
            REMOTE,
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 400, "an unknown parameter: {v}");
    let (s, v) = h.call("GET", path, REMOTE, Some(&viewer), None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["message"], "no session named \"web\"");
    let (s, _) = h.call("GET", path, LOCAL, None, None).await;
    assert_eq!(s, 404, "localhost reads without a token");
}

#[tokio::test]
async fn reads_need_a_viewer_from_other_hosts_and_changes_an_operator() {
    let h = harness("auth", None);
    let viewer = h.token("ro", "viewer").await;
    let operator = h.token("ops", "operator").await;
    let create = json!({ "name": "web" }).to_string();
    let before_audit = h.audit_actions().len();
    let before_applied = h.applied.lock().unwrap().len();

    // Reads: localhost without a token, or a viewer token from anywhere.
    assert_eq!(
        h.call("GET", "/api/v1/sessions", LOCAL, None, None).await.0,
        200
    );
    assert_eq!(
        h.call("GET", "/api/v1/sessions", REMOTE, None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        h.call("GET", "/api/v1/sessions", REMOTE, Some(&viewer), None)
            .await
            .0,
        200
    );
    assert_eq!(h.call("GET", "/metrics", REMOTE, None, None).await.0, 401);
    assert_eq!(
        h.call("GET", "/api/v1/flows", REMOTE, Some(&viewer), None)
            .await
            .0,
        200
    );
    // Changes: refused to anonymous (401, even from localhost: 403), viewers (403), bad tokens.
    for (peer, token, want) in [
        (REMOTE, None, 401),
        (LOCAL, None, 403),
        (REMOTE, Some(viewer.as_str()), 403),
        (REMOTE, Some("tw_0000"), 401),
    ] {
        let (s, v) = h
            .call("POST", "/api/v1/sessions", peer, token, Some(&create))
            .await;
        assert_eq!(s, want, "{peer} {token:?}: {v}");
        let (s, _) = h
            .call(
                "POST",
                "/api/v1/sessions/from-file/rotate",
                peer,
                token,
                None,
            )
            .await;
        assert_eq!(s, want);
    }
    // Tokens: admin only.
    assert_eq!(
        h.call("GET", "/api/v1/tokens", REMOTE, Some(&operator), None)
            .await
            .0,
        403
    );
    // Nothing changed: no session, no audit entry, the engine was not given anything.
    assert!(h.ctl.sessions().unwrap().is_empty());
    assert_eq!(h.audit_actions().len(), before_audit);
    assert_eq!(h.applied.lock().unwrap().len(), before_applied);

    // The operator may; the audit names the token.
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/sessions",
            REMOTE,
            Some(&operator),
            Some(&create),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["mirror_id"], 2,
        "id 1 is gathered by the file's session: {v}"
    );
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/sessions/from-file/rotate",
            REMOTE,
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let audit = h.audit_actions();
    assert!(
        audit.contains(&("ops".into(), "session.create".into(), "web".into())),
        "{audit:?}"
    );
    assert!(audit.contains(&("ops".into(), "session.rotate".into(), "from-file".into())));
    assert_eq!(
        h.applied.lock().unwrap().last().unwrap(),
        &vec!["web".to_string()]
    );

    // A revoked token is refused at once.
    let (s, _) = h.admin("DELETE", "/api/v1/tokens/ops", None).await;
    assert_eq!(s, 200);
    let (s, v) = h
        .call("GET", "/api/v1/sessions", REMOTE, Some(&operator), None)
        .await;
    assert_eq!(s, 401, "{v}");
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_changes_nothing() {
    let h = harness("bad", None);
    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", "/api/v1/sessions", "{\"name\": ", "body"),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","filtr":"tcp"}"#,
            "unknown field `filtr`",
        ),
        ("POST", "/api/v1/sessions", r#"{"name": 5}"#, "body: name:"),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","mirror_id":2000}"#,
            "mirror_id: 2000",
        ),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","filter":"tcp port"}"#,
            "filter \"tcp port\"",
        ),
        ("POST", "/api/v1/sessions", r#"{"name":"a/b"}"#, "name:"),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","files":{"rotate":{"size":"big"}}}"#,
            "rotate.size",
        ),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","tap":"much-too-long-name"}"#,
            "tap",
        ),
        (
            "POST",
            "/api/v1/sessions",
            r#"{"name":"a","encap":"erspan-iv"}"#,
            "body: encap:",
        ),
        ("GET", "/api/v1/flows/abc", "", "id:"),
        ("GET", "/api/v1/flows/0", "", "id:"),
        ("GET", "/api/v1/flows/99999999999999999999", "", "id:"),
        ("GET", "/api/v1/audit?limit=0", "", "limit:"),
        ("GET", "/api/v1/probes/h1/flows?wait=600", "", "wait:"),
        (
            "POST",
            "/api/v1/tokens",
            r#"{"name":"x","role":"root"}"#,
            "body: role:",
        ),
        (
            "PATCH",
            "/api/v1/probes/h1",
            r#"{"max_flows":0}"#,
            "max_flows",
        ),
    ];
    for (method, path, body, needle) in cases {
        let (s, v) = h
            .admin(method, path, (!body.is_empty()).then_some(*body))
            .await;
        assert_eq!(s, 400, "{method} {path} {body}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(needle),
            "{method} {path} {body}: {m:?} lacks {needle:?}"
        );
    }
    // Flows: every field checked as the probe checks it, the filter by libpcap.
    let (s, _) = h
        .admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    assert_eq!(s, 201);
    let flow = |extra: Value| {
        let mut f = json!({ "probe": "h1", "name": "vm1", "interface": "tap1", "session": "web" });
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f.to_string()
    };
    for (extra, needle) in [
        (json!({ "vlans": [5000] }), "VLAN 5000"),
        (json!({ "filter": "tcp port" }), "filter \"tcp port\""),
        (json!({ "sample": 0 }), "sample"),
        (json!({ "rate_pps": "fast" }), "rate_pps"),
        (json!({ "interface": "a-much-too-long-name" }), "interface"),
        (json!({ "session": "nope" }), "session: no session"),
        (json!({ "session": "from-file" }), "configuration file"),
        (json!({ "probe": "register" }), "probe:"),
        (json!({ "colour": "red" }), "unknown field `colour`"),
    ] {
        let (s, v) = h
            .admin("POST", "/api/v1/flows", Some(&flow(extra.clone())))
            .await;
        assert_eq!(s, 400, "{extra}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{extra}: {m:?} lacks {needle:?}");
    }
    assert!(h.ctl.flows().unwrap().is_empty());
    assert_eq!(h.ctl.sessions().unwrap().len(), 1);
    // Only the one good change was audited.
    let audit: Vec<String> = h.audit_actions().into_iter().map(|a| a.1).collect();
    assert_eq!(audit, ["token.create", "session.create"]);
}

#[tokio::test]
async fn a_change_that_clashes_with_the_file_is_rolled_back_whole() {
    let h = harness("rollback", None);
    let applied = h.applied.lock().unwrap().len();
    // Valid alone; its TAP name is the file session's: refused after the insert, before commit.
    let (s, v) = h
        .admin(
            "POST",
            "/api/v1/sessions",
            Some(r#"{"name":"web","tap":"tw-file"}"#),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("tw-file"), "{v}");
    let (s, v) = h
        .admin("POST", "/api/v1/sessions", Some(r#"{"name":"from-file"}"#))
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = h
        .admin(
            "POST",
            "/api/v1/sessions",
            Some(r#"{"name":"x","mirror_id":1}"#),
        )
        .await;
    assert_eq!(s, 409);
    // Nor can an update move a session onto an id the file gathers.
    h.admin(
        "POST",
        "/api/v1/sessions",
        Some(r#"{"name":"y","encap":"gre"}"#),
    )
    .await;
    let (s, v) = h
        .admin(
            "PATCH",
            "/api/v1/sessions/y",
            Some(r#"{"encap":"erspan-ii","mirror_id":1}"#),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("from-file"), "{v}");
    let (s, v) = h
        .admin("PATCH", "/api/v1/sessions/y", Some(r#"{"filter":"udp"}"#))
        .await;
    assert_eq!(s, 200, "keeping its own id is fine: {v}");
    assert_eq!(h.admin("DELETE", "/api/v1/sessions/y", None).await.0, 200);
    assert!(h.ctl.sessions().unwrap().is_empty());
    let audit: Vec<String> = h.audit_actions().into_iter().map(|a| a.1).collect();
    assert_eq!(
        audit,
        [
            "token.create",
            "session.create",
            "session.update",
            "session.delete"
        ],
        "the refused changes left no audit entry"
    );
    // The engine got y's creation, update and deletion, nothing of the refused ones.
    assert_eq!(h.applied.lock().unwrap().len(), applied + 3);
    // Flows to a session keep it: deleting it is refused.
    h.admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    let (s, _) = h
        .admin(
            "POST",
            "/api/v1/flows",
            Some(r#"{"probe":"h1","name":"a","interface":"tap1","session":"web"}"#),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = h.admin("DELETE", "/api/v1/sessions/web", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("h1/a"));
}

#[tokio::test]
async fn limits_refuse_a_flow_with_a_clear_message() {
    let h = harness("limits", Some(30_000));
    h.admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    let flow = |name: &str, pps: Option<&str>| {
        let mut f = json!({ "probe": "h1", "name": name, "interface": "tap1", "session": "web" });
        if let Some(p) = pps {
            f["rate_pps"] = json!(p);
        }
        f.to_string()
    };
    let (s, v) = h
        .admin("POST", "/api/v1/flows", Some(&flow("a", None)))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("needs a rate_pps"),
        "{v}"
    );
    assert_eq!(
        h.admin("POST", "/api/v1/flows", Some(&flow("a", Some("20k"))))
            .await
            .0,
        201
    );
    let (s, v) = h
        .admin("POST", "/api/v1/flows", Some(&flow("b", Some("20k"))))
        .await;
    assert_eq!(s, 409, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("40000 pps, above its limit of 30000"), "{m}");
    assert_eq!(
        h.admin("POST", "/api/v1/flows", Some(&flow("b", Some("10k"))))
            .await
            .0,
        201
    );
    // max_flows is 2.
    let (s, v) = h
        .admin("POST", "/api/v1/flows", Some(&flow("c", Some("1"))))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_flows 2"),
        "{v}"
    );
    // Raising the limit lets it in; lowering below what runs is refused.
    let (s, _) = h
        .admin(
            "PATCH",
            "/api/v1/probes/h1",
            Some(r#"{"max_flows":3,"max_pps":"40k"}"#),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.admin("POST", "/api/v1/flows", Some(&flow("c", Some("1"))))
            .await
            .0,
        201
    );
    let (s, v) = h
        .admin("PATCH", "/api/v1/probes/h1", Some(r#"{"max_pps":1000}"#))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(h.ctl.flows().unwrap().len(), 3);
}

#[tokio::test]
async fn a_probe_long_polls_its_flows_and_a_revoked_token_ends_the_poll() {
    let h = harness("poll", None);
    h.admin(
        "POST",
        "/api/v1/sessions",
        Some(r#"{"name":"web","encap":"erspan-iii"}"#),
    )
    .await;
    let probe = h.token("h1", "probe").await;
    let other = h.token("h2", "probe").await;
    let reg = json!({ "name": "h1", "version": "0.1.0", "interfaces": ["tap1"] }).to_string();
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/probes/register",
            REMOTE,
            Some(&probe),
            Some(&reg),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // A probe token acts only for its own name.
    let (s, _) = h
        .call(
            "POST",
            "/api/v1/probes/register",
            REMOTE,
            Some(&other),
            Some(&reg),
        )
        .await;
    assert_eq!(s, 403);
    let (s, set) = h
        .call("GET", "/api/v1/probes/h1/flows", REMOTE, Some(&probe), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(set["flows"], json!([]));
    let v0 = set["version"].as_u64().unwrap();

    // Waiting for a newer set: a flow created meanwhile answers it.
    let poll = {
        let (app, probe) = (h.app.clone(), probe.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut req = Request::builder()
                .uri(format!("/api/v1/probes/h1/flows?after={v0}&wait=20"))
                .header("Authorization", format!("Bearer {probe}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(Peer(REMOTE.parse().unwrap())));
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap(),
                t0.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll must wait for a change");
    let (s, v) = h
        .admin(
            "POST",
            "/api/v1/flows",
            Some(r#"{"probe":"h1","name":"vm1","interface":"tap1","session":"web","direction":"in"}"#),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (status, set, took) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert!(set["version"].as_u64().unwrap() > v0);
    let f = &set["flows"][0];
    assert_eq!(
        (
            f["name"].as_str(),
            f["encap"].as_str(),
            f["session"].as_u64(),
            f["collector"].as_str()
        ),
        (Some("vm1"), Some("erspan-iii"), Some(1), Some("10.0.0.1")),
        "{set}"
    );
    assert_eq!(f["direction"], "in");

    // Stats reports turn into the flow's status; an interface missing is that flow's only.
    let report = json!({
        "applied_version": set["version"],
        "stats": { "version": "0.1.0", "started": "", "uptime_s": 1.0, "flows": [{
            "name": "vm1", "interface": "tap1", "collector": "10.0.0.1", "encap": "erspan-iii",
            "session": 1, "state": "waiting", "error": "interface tap1: no such device",
            "max_payload_bytes": 1400, "counters": {
                "captured": 0, "captured_bytes": 0, "filtered_out": 0, "sampled_out": 0,
                "rate_limited": 0, "kernel_drops": 0, "sent": 0, "sent_bytes": 0,
                "send_errors": 0, "truncated": 0, "reopened": 0 } }] },
        "refused": [],
    })
    .to_string();
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/probes/h1/stats",
            REMOTE,
            Some(&probe),
            Some(&report),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let flows = h.ctl.flows().unwrap();
    assert_eq!(flows[0].status, FlowStatus::Waiting);
    assert!(
        flows[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no such device")
    );
    let p = h.ctl.probe("h1").unwrap();
    assert!(p.online);
    assert_eq!(p.applied_version, Some(p.flows_version));

    // Revocation ends a waiting poll with 401.
    let (_, set) = h
        .call("GET", "/api/v1/probes/h1/flows", REMOTE, Some(&probe), None)
        .await;
    let v1 = set["version"].as_u64().unwrap();
    let poll = {
        let (app, probe) = (h.app.clone(), probe.clone());
        tokio::spawn(async move {
            let mut req = Request::builder()
                .uri(format!("/api/v1/probes/h1/flows?after={v1}&wait=20"))
                .header("Authorization", format!("Bearer {probe}"))
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(Peer(REMOTE.parse().unwrap())));
            let t0 = Instant::now();
            let resp = app.oneshot(req).await.unwrap();
            (resp.status().as_u16(), t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    assert_eq!(h.admin("DELETE", "/api/v1/tokens/h1", None).await.0, 200);
    let (status, took) = poll.await.unwrap();
    assert_eq!(status, 401);
    assert!(took < Duration::from_secs(2), "{took:?}");
    let audit = h.audit_actions();
    assert!(
        audit.contains(&("h1".into(), "probe.register".into(), "h1".into())),
        "{audit:?}"
    );
    assert!(audit.contains(&("bootstrap-admin".into(), "token.revoke".into(), "h1".into())));
}

#[tokio::test]
async fn state_survives_a_restart_and_the_engine_gets_it_first() {
    let h = harness("restart", None);
    h.admin(
        "POST",
        "/api/v1/sessions",
        Some(r#"{"name":"web","filter":"tcp","files":{"rotate":{"size":"1MiB"}}}"#),
    )
    .await;
    h.admin(
        "POST",
        "/api/v1/flows",
        Some(r#"{"probe":"h1","name":"a","interface":"tap1","session":"web","enabled":false}"#),
    )
    .await;
    let before = (h.ctl.sessions().unwrap(), h.ctl.flows().unwrap().len());
    // A second controller on the same database (the first's connection is still open: WAL).
    let (tx, rx) = crossbeam_channel::unbounded();
    let again = start(&h.dir.join("c.db"), tx, None, "10.0.0.1".parse().unwrap());
    assert_eq!(again.sessions().unwrap(), before.0);
    assert_eq!(again.flows().unwrap().len(), before.1);
    // The sessions are queued for the engine before it runs.
    match rx.try_recv() {
        Ok(Control::Apply { sessions, .. }) => {
            assert_eq!(sessions.len(), 1);
            assert_eq!(
                sessions[0].filter.as_ref().map(crate::filter::Filter::expr),
                Some("tcp")
            );
            assert_eq!(
                sessions[0].files.as_ref().and_then(|f| f.rotate.size_bytes),
                Some(1 << 20)
            );
            assert_eq!(sessions[0].sources[0].ids, Some(2..=2));
        }
        _ => panic!("no Apply queued"),
    }
    // No second bootstrap token: an admin exists.
    assert_eq!(
        again
            .tokens()
            .unwrap()
            .iter()
            .filter(|t| t.role == Role::Admin)
            .count(),
        1
    );
}

#[tokio::test]
async fn tls_listener_serves_with_a_given_certificate_and_clients_trust_only_their_ca() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tapwire-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = tls::server_config(&cert_path, &key_path).unwrap();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let snapshot = Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
        version: "tls".into(),
        started: String::new(),
        uptime_s: 0.0,
        totals: Default::default(),
        inputs: Vec::new(),
        sessions: Vec::new(),
        control: None,
        page: None,
    }));
    let (bound, _) = spawn(
        None,
        Some(Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(tls),
            peers: None,
        }),
        ApiState::new(snapshot, tx, None, None),
        Limits::for_descriptor_limit(1 << 20),
    )
    .unwrap();
    let url = format!("https://localhost:{}", bound[0].port());
    let outcome = tokio::task::spawn_blocking(move || {
        let trusted =
            tapwire_client::Client::new(&url, None, Some(&cert_path), Duration::from_secs(5))
                .unwrap()
                .get::<tapwire_api_types::Snapshot>("/api/v1/sessions");
        let untrusted = tapwire_client::Client::new(&url, None, None, Duration::from_secs(5))
            .unwrap()
            .get::<tapwire_api_types::Snapshot>("/api/v1/sessions");
        let plain = tapwire_client::Client::new(
            &url.replace("https", "http"),
            None,
            None,
            Duration::from_secs(5),
        )
        .unwrap()
        .get::<tapwire_api_types::Snapshot>("/api/v1/sessions");
        (trusted, untrusted, plain)
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(outcome.0.expect("trusted CA").version, "tls");
    let e = outcome
        .1
        .expect_err("the system roots do not know a self-signed certificate");
    assert_eq!(e.status, 0, "{e}");
    assert!(outcome.2.is_err(), "plain HTTP to a TLS listener must fail");
}

#[tokio::test]
async fn the_collectors_own_terminal_acts_like_an_audited_operator() {
    let h = harness("terminal", None);
    let (s, v) = h
        .admin(
            "POST",
            "/api/v1/sessions",
            Some(&json!({ "name": "api-made" }).to_string()),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let terminal = Caller::system("terminal");
    // Disabling an API session from the terminal is stored, as through the API.
    let msg = h
        .ctl
        .session_action(&terminal, "api-made", tapwire_api_types::Action::Disable)
        .unwrap();
    assert_eq!(msg, "session api-made disabled");
    assert!(!h.ctl.session("api-made").unwrap().enabled);
    // A file session's action goes to the engine.
    assert_eq!(
        h.ctl
            .session_action(&terminal, "from-file", tapwire_api_types::Action::Rotate)
            .unwrap(),
        "done"
    );
    let audit = h.audit_actions();
    assert!(
        audit.contains(&(
            "terminal".into(),
            "session.disable".into(),
            "api-made".into()
        )),
        "{audit:?}"
    );
    assert!(
        audit.contains(&(
            "terminal".into(),
            "session.rotate".into(),
            "from-file".into()
        )),
        "{audit:?}"
    );
}

/// Fields the controller fills in are not the flow's: a flow refused for them names the
/// collector's flag, not a `collector` field FlowCreate does not have; a rate of the wrong JSON
/// type names its field, not a Rust type.
#[tokio::test]
async fn flow_errors_name_what_the_caller_can_change() {
    let h = harness_advertising("advertise", None, "0.0.0.0".parse().unwrap());
    h.admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    let flow = r#"{"probe":"h1","name":"vm1","interface":"tap1","session":"web"}"#;
    let (s, v) = h.admin("POST", "/api/v1/flows", Some(flow)).await;
    let m = v["message"].as_str().unwrap_or_default();
    assert_eq!(s, 409, "{v}");
    assert!(
        m.contains("--advertise") && !m.contains("collector 0.0.0.0"),
        "{m}"
    );

    let h = harness("rate-type", None);
    h.admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    for (field, value) in [
        ("rate_pps", "-1"),
        ("rate_bps", "1.5"),
        ("rate_pps", "true"),
    ] {
        let body = format!(
            r#"{{"probe":"h1","name":"vm1","interface":"tap1","session":"web","{field}":{value}}}"#
        );
        let (s, v) = h.admin("POST", "/api/v1/flows", Some(&body)).await;
        let m = v["message"].as_str().unwrap_or_default();
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            m.starts_with(&format!("{field}: {value} is not")) && !m.contains("NumOrText"),
            "{body}: {m}"
        );
    }
    assert!(h.ctl.flows().unwrap().is_empty());
}

/// The issue's attack: an operator token tried to run a command as the collector (on_finish),
/// to write anywhere (absolute, `..`), and to open any namespace file (a path). Each is a 400
/// that says what to do instead; nothing is stored, audited or given to the engine. A hook is
/// chosen by name, and viewers (and localhost) read its name, never a command.
#[tokio::test]
async fn an_operator_token_runs_no_command_and_names_no_path() {
    let h = harness("attack", None);
    let operator = h.token("ops", "operator").await;
    let viewer = h.token("ro", "viewer").await;
    let before = (h.audit_actions().len(), h.applied.lock().unwrap().len());
    let post = |body: Value| {
        let (h, operator) = (&h, &operator);
        async move {
            h.call(
                "POST",
                "/api/v1/sessions",
                REMOTE,
                Some(operator),
                Some(&body.to_string()),
            )
            .await
        }
    };
    for (body, needle) in [
        (
            json!({ "name": "x", "files": { "on_finish": "touch /tmp/tapwire-pwned" } }),
            "session \"x\": files: on_finish: commands cannot be set through the API (they would run as the collector, root); choose a hook by name with files.hook: the collector's configuration file defines compress",
        ),
        (
            json!({ "name": "x", "files": { "hook": "touch" } }),
            "files: hook: no hook named \"touch\"; the collector's configuration file defines compress",
        ),
        (
            json!({ "name": "x", "files": { "dir": "/tmp/elsewhere" } }),
            "files: dir: \"/tmp/elsewhere\" is absolute: sessions made through the API write beneath the collector's --out",
        ),
        (
            json!({ "name": "x", "files": { "dir": "../elsewhere" } }),
            "files: dir: \"../elsewhere\" climbs out of the collector's --out",
        ),
        (
            json!({ "name": "x", "tap": { "name": "t0", "netns": "/proc/1/ns/net" } }),
            "tap.netns: \"/proc/1/ns/net\" is a path: give the name of a network namespace",
        ),
    ] {
        let (s, v) = post(body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{body}: {m}");
    }
    // Patches are checked alike.
    let (s, v) =
        post(json!({ "name": "web", "files": { "hook": "compress", "dir": "web" } })).await;
    assert_eq!(s, 201, "{v}");
    for patch in [
        json!({ "files": { "on_finish": "touch /tmp/tapwire-pwned" } }),
        json!({ "files": { "dir": "/etc" } }),
        json!({ "tap": { "name": "t0", "netns": "../../proc/1/ns/net" } }),
    ] {
        let (s, v) = h
            .call(
                "PATCH",
                "/api/v1/sessions/web",
                REMOTE,
                Some(&operator),
                Some(&patch.to_string()),
            )
            .await;
        assert_eq!(s, 400, "{patch}: {v}");
    }
    let audit = h.audit_actions();
    assert_eq!(
        audit.len(),
        before.0 + 1,
        "only the good session: {audit:?}"
    );
    assert_eq!(h.applied.lock().unwrap().len(), before.1 + 1);
    // Every reader sees the hook's name, no command; the audit keeps the name.
    for (peer, token) in [(LOCAL, None), (REMOTE, Some(viewer.as_str()))] {
        for path in [
            "/api/v1/definitions",
            "/api/v1/sessions/web/definition",
            "/api/v1/audit",
        ] {
            let (s, v) = h.call("GET", path, peer, token, None).await;
            assert_eq!(s, 200, "{path}: {v}");
            let text = v.to_string();
            assert!(text.contains("compress"), "{path}: {text}");
            assert!(
                !text.contains("gzip") && !text.contains("touch"),
                "{path} shows a command: {text}"
            );
        }
    }
}

/// A probe token is bound to the probe it was made for (`probe` in the request, else its
/// name); a probe's body is bounded (413 with a message), and so is the number of probes the
/// controller knows (409), whoever invents the names.
#[tokio::test]
async fn probe_tokens_are_bound_and_what_probes_send_is_bounded() {
    let h = harness("probe-bounds", None);
    let (s, v) = h
        .admin(
            "POST",
            "/api/v1/tokens",
            Some(r#"{"name":"key-1","role":"probe","probe":"host1"}"#),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["probe"], "host1");
    let key = v["token"].as_str().unwrap().to_string();
    let (s, v) = h
        .admin(
            "POST",
            "/api/v1/tokens",
            Some(r#"{"name":"ro","role":"viewer","probe":"host1"}"#),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let reg =
        |name: &str| json!({ "name": name, "version": "1", "interfaces": ["eth0"] }).to_string();
    let register = |token: String, name: &'static str| {
        let h = &h;
        let body = reg(name);
        async move {
            h.call(
                "POST",
                "/api/v1/probes/register",
                REMOTE,
                Some(&token),
                Some(&body),
            )
            .await
        }
    };
    assert_eq!(register(key.clone(), "host1").await.0, 200);
    for other in ["key-1", "host2"] {
        let (s, v) = register(key.clone(), other).await;
        assert_eq!(s, 403, "{other}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("bound to probe \"host1\""),
            "{v}"
        );
    }
    // A report past the body limit: 413, with what the limit is.
    let flows: Vec<Value> = (0..4000)
        .map(|i| {
            json!({ "name": format!("vm{i}"), "interface": format!("tap{i}"),
                "collector": "10.0.0.1", "encap": "erspan-ii", "session": 2, "state": "running",
                "error": null, "max_payload_bytes": 1450, "counters": {
                "captured": 0, "captured_bytes": 0, "filtered_out": 0, "sampled_out": 0,
                "rate_limited": 0, "kernel_drops": 0, "sent": 0, "sent_bytes": 0,
                "send_errors": 0, "truncated": 0, "reopened": 0 } })
        })
        .collect();
    let big = json!({ "applied_version": 0, "stats": { "version": "1", "started": "",
        "uptime_s": 1.0, "flows": flows }, "refused": [] })
    .to_string();
    assert!(big.len() > 1 << 20, "{}", big.len());
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/probes/host1/stats",
            REMOTE,
            Some(&key),
            Some(&big),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("body: larger than 131072 bytes, the most a probe may send"),
        "{v}"
    );
    // Invented names: the harness's controller knows 3 probes at most.
    let (s, _) = h
        .admin("POST", "/api/v1/probes/register", Some(&reg("a")))
        .await;
    assert_eq!(s, 200);
    let (s, _) = h
        .admin("POST", "/api/v1/probes/register", Some(&reg("b")))
        .await;
    assert_eq!(s, 200);
    let (s, v) = h
        .admin("POST", "/api/v1/probes/register", Some(&reg("invented")))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("--max-probes 3"),
        "{v}"
    );
    let (s, v) = h.admin("GET", "/api/v1/probes", None).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    // Each refusal counted by its reason.
    let (s, v) = h.admin("GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let text = v.as_str().unwrap();
    for (reason, n) in [
        ("other_probe", 2),
        ("body_too_large", 1),
        ("too_many_probes", 1),
        ("too_many_flows", 0),
        ("invalid", 0),
    ] {
        let line = format!("tapwire_probe_refused_total{{reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&line), "{line:?} in:\n{text}");
    }
}

/// `n` port ranges joined by `or` from `first` on: the costliest primitive to compile.
fn portranges(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|p| format!("portrange {p}-{}", p + 4))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[tokio::test]
async fn a_filter_over_a_limit_is_refused_with_400_naming_it_and_nothing_changes() {
    let h = harness("filter-limit", None);
    let (s, v) = h
        .admin("POST", "/api/v1/sessions", Some(r#"{"name":"web"}"#))
        .await;
    assert_eq!(s, 201, "{v}");
    let audited = h.audit_actions().len();
    // 300 terms: libpcap would take seconds; the limit refuses it first.
    let many = (1..=300)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let long = format!("len > {}", "1".repeat(filter::MAX_FILTER_BYTES));
    for (f, needle) in [
        (&many, "300 terms: filters are limited to 64 terms"),
        (&long, "filters are limited to 4096 bytes"),
    ] {
        let requests = [
            (
                "POST",
                "/api/v1/sessions",
                json!({"name": "big", "filter": f}),
            ),
            ("PATCH", "/api/v1/sessions/web", json!({ "filter": f })),
            (
                "PATCH",
                "/api/v1/sessions/web",
                json!({ "tap": { "name": "tw-web", "filter": f } }),
            ),
            (
                "POST",
                "/api/v1/flows",
                json!({"probe": "h1", "name": "a", "interface": "tap1", "session": "web", "filter": f}),
            ),
        ];
        for (method, path, body) in requests {
            let t0 = Instant::now();
            let (s, v) = h.admin(method, path, Some(&body.to_string())).await;
            assert_eq!(s, 400, "{method} {path}: {v}");
            let m = v["message"].as_str().unwrap();
            assert!(m.contains(needle), "{method} {path}: {m}");
            // A session's message names the filter by its start, not all of it.
            if path.starts_with("/api/v1/sessions") {
                assert!(m.len() < 400, "{method} {path}: {} bytes", m.len());
            }
            eprintln!("{method} {path}: refused in {:?}", t0.elapsed());
        }
    }
    let (_, defs) = h.admin("GET", "/api/v1/definitions", None).await;
    assert_eq!(defs.as_array().unwrap().len(), 1, "{defs}");
    assert_eq!(defs[0]["filter"], Value::Null, "{defs}");
    assert_eq!(h.audit_actions().len(), audited, "nothing audited");
}

#[tokio::test]
async fn filters_compile_outside_the_database_lock_and_once_per_text() {
    let h = harness("filter-lock", None);
    for name in ["slow", "other"] {
        let (s, v) = h
            .admin(
                "POST",
                "/api/v1/sessions",
                Some(&json!({ "name": name }).to_string()),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // 40 port ranges compile in a few hundred ms: long enough to read during, well inside the
    // 2 s deadline on a loaded machine (64, the term limit, took over 2 s at load 10); a text of
    // this test's own, so that no other test compiled it first.
    let slow = portranges(31_000, 40);
    let patch = {
        let (app, admin) = (h.app.clone(), h.admin.clone());
        let body = json!({ "filter": slow }).to_string();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let got = send(
                app,
                "PATCH",
                "/api/v1/sessions/slow",
                REMOTE,
                Some(&admin),
                Some(&body),
            )
            .await;
            (got, t0.elapsed())
        })
    };
    // Reads take the database lock: none waits for the compilation.
    let mut slowest_read = Duration::ZERO;
    let mut reads = 0;
    while !patch.is_finished() {
        let t0 = Instant::now();
        let (s, _) = h.admin("GET", "/api/v1/definitions", None).await;
        assert_eq!(s, 200);
        slowest_read = slowest_read.max(t0.elapsed());
        reads += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ((s, v), compiling) = patch.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert!(reads >= 3, "only {reads} reads during {compiling:?}");
    assert!(
        slowest_read * 3 < compiling,
        "a read waited {slowest_read:?} while the filter compiled for {compiling:?}"
    );
    // Another session's change does not compile the unchanged filter again.
    let t0 = Instant::now();
    let (s, v) = h
        .admin(
            "PATCH",
            "/api/v1/sessions/other",
            Some(r#"{"enabled": false}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let change = t0.elapsed();
    assert!(
        change * 3 < compiling,
        "changing another session took {change:?}, compiling the filter {compiling:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Serving under abuse: the real accept loop on 127.0.0.1 with small limits.

/// Limits with caps of `total` and `per_client`, one long-poll, and timeouts long enough not to
/// act unless a test shortens one.
fn tiny(total: usize, per_client: usize) -> Limits {
    Limits {
        max_connections: total,
        max_per_client: per_client,
        max_long_polls: 1,
        header_read: Duration::from_secs(60),
        idle: Duration::from_secs(60),
        tls_handshake: Duration::from_secs(60),
        request: Duration::from_secs(60),
        long_poll: Duration::from_secs(120),
    }
}

/// A state without a controller (and `token` as the API token).
fn plain_state(token: Option<&str>) -> ApiState {
    let (tx, _) = crossbeam_channel::unbounded();
    let snapshot = Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
        version: "t".into(),
        started: String::new(),
        uptime_s: 0.0,
        totals: Default::default(),
        inputs: Vec::new(),
        sessions: Vec::new(),
        control: None,
        page: None,
    }));
    ApiState::new(snapshot, tx, token.map(ApiToken::new), None)
}

/// Serves `state` on 127.0.0.1 (TLS with `tls`) with `limits`.
fn serve_local(
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
) -> (SocketAddr, Arc<Gate>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let gate = serve_on(vec![(l, acceptor)], state, limits).unwrap();
    (addr, gate)
}

/// A connection to `to` from `from` (an address of 127.0.0.0/8).
async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// `GET /api/v1/health` on a new connection from `from`; the status line, or why not, within
/// `within`.
async fn health_from(from: &str, to: SocketAddr, within: Duration) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let asked = async {
        let mut c = connect_from(from, to).await;
        c.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&got).into_owned();
        Ok(text.lines().next().unwrap_or("").to_string())
    };
    tokio::time::timeout(within, asked)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

/// How long until the server closes `c` (EOF or reset), waiting at most `within`.
async fn closed_after(c: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), c.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// How many connections `gate` closed for `why`. A connection is counted just after its socket
/// closes, so a client may see the close first: wait up to 2 s for the count.
async fn counted(gate: &Gate, why: Closed) -> u64 {
    let t0 = Instant::now();
    while gate.closed(why) == 0 && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.closed(why)
}

/// Whether the server has closed `c` already (EOF or reset seen within 50 ms).
async fn is_closed(c: &mut tokio::net::TcpStream) -> bool {
    closed_after(c, Duration::from_millis(50)).await.is_some()
}

#[tokio::test]
async fn a_client_flooding_idle_connections_keeps_only_its_share_and_everyone_is_answered() {
    let limits = tiny(8, 2);
    let (addr, gate) = serve_local(plain_state(None), None, limits);
    let second = Duration::from_secs(1);
    // One client opens five times its share of idle connections.
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(connect_from("127.0.0.2", addr).await);
        // The second client is answered throughout, and so is the flooding one.
        assert_eq!(
            health_from("127.0.0.3", addr, second).await.as_deref(),
            Ok("HTTP/1.1 200 OK")
        );
    }
    assert_eq!(
        health_from("127.0.0.2", addr, second).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    let mut open = 0;
    for c in &mut flood {
        if !is_closed(c).await {
            open += 1;
        }
    }
    assert!(
        open <= limits.max_per_client,
        "{open} of the flood still open"
    );
    assert!(
        gate.closed(Closed::Evicted) >= 8,
        "{}",
        gate.closed(Closed::Evicted)
    );

    // Many clients together fill the total: the quietest idle connections make room.
    let mut crowd = Vec::new();
    for i in 4..10 {
        for _ in 0..2 {
            crowd.push(connect_from(&format!("127.0.0.{i}"), addr).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(gate.connections() <= limits.max_connections);
    assert_eq!(
        health_from("127.0.0.10", addr, second).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
}

/// A probe token for `name`, registered.
async fn registered(h: &Harness, name: &str) -> String {
    let probe = h.token(name, "probe").await;
    let reg = json!({ "name": name, "version": "0.1.0", "interfaces": ["tap1"] }).to_string();
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/probes/register",
            REMOTE,
            Some(&probe),
            Some(&reg),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    probe
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_is_refused_with_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut limits = tiny(2, 2);
    limits.max_long_polls = 4;
    let h = harness("busy", None);
    h.admin(
        "POST",
        "/api/v1/sessions",
        Some(r#"{"name":"web","encap":"erspan-iii"}"#),
    )
    .await;
    let probe = registered(&h, "h1").await;
    let (addr, gate) = serve_local(h.state.clone(), None, limits);
    let (_, set) = h
        .call("GET", "/api/v1/probes/h1/flows", REMOTE, Some(&probe), None)
        .await;
    let v0 = set["version"].as_u64().unwrap();
    // Two long-polls hold both places; neither may be closed to make room.
    let mut polls = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.2", addr).await;
        c.write_all(
            format!(
                "GET /api/v1/probes/h1/flows?after={v0}&wait=30 HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {probe}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        polls.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = connect_from("127.0.0.3", addr).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), refused.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("too many connections"), "{got}");
    assert_eq!(gate.closed(Closed::Refused), 1);
    for c in &mut polls {
        assert!(!is_closed(c).await, "a long-poll was closed for room");
    }
}

#[tokio::test]
async fn long_polls_have_a_budget_of_their_own() {
    use tokio::io::AsyncWriteExt;
    let mut limits = tiny(16, 16);
    // Short enough to see: a request other than a long-poll is cut at 300 ms; a long-poll
    // waits its time.
    limits.request = Duration::from_millis(300);
    limits.max_long_polls = 1;
    let h = harness("longpoll", None);
    h.admin(
        "POST",
        "/api/v1/sessions",
        Some(r#"{"name":"web","encap":"erspan-iii"}"#),
    )
    .await;
    let probe = registered(&h, "h1").await;
    let (addr, _) = serve_local(h.state.clone(), None, limits);
    let (_, set) = h
        .call("GET", "/api/v1/probes/h1/flows", REMOTE, Some(&probe), None)
        .await;
    let v0 = set["version"].as_u64().unwrap();
    let poll = format!(
        "GET /api/v1/probes/h1/flows?after={v0}&wait=2 HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {probe}\r\n\r\n"
    );
    let mut first = connect_from("127.0.0.2", addr).await;
    first.write_all(poll.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one place is taken: a second waiting poll is told to come back.
    let mut second = connect_from("127.0.0.2", addr).await;
    second.write_all(poll.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::AsyncReadExt;
        second.read(&mut head).await.unwrap()
    })
    .await
    .expect("the second poll is answered at once");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    // The first waits its 2 s, past the 300 ms request budget, and gets its set.
    let t0 = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        first.read(&mut answer).await.unwrap()
    })
    .await
    .expect("the long-poll answers");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    // A request that is not a long-poll is cut at its budget: a body that never arrives.
    let mut slow = connect_from("127.0.0.4", addr).await;
    slow.write_all(
        format!(
            "PATCH /api/v1/sessions/web HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
            h.admin
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let cut = closed_after(&mut slow, Duration::from_secs(5)).await;
    assert!(
        cut.is_some_and(|d| d >= Duration::from_millis(250)),
        "{cut:?}"
    );
}

#[tokio::test]
async fn slowloris_idle_and_silent_tls_connections_are_cut_at_their_timeouts() {
    use tokio::io::AsyncWriteExt;
    // Each timeout alone, the others long.
    let mut header = tiny(16, 16);
    header.header_read = Duration::from_millis(500);
    let (addr, gate) = serve_local(plain_state(None), None, header);
    let mut loris = connect_from("127.0.0.2", addr).await;
    loris
        .write_all(b"GET /api/v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    // A header line every 100 ms: bytes keep moving, the head never ends.
    let cut = loop {
        if loris.write_all(b"x-a: b\r\n").await.is_err() || is_closed(&mut loris).await {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "slowloris never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cut >= Duration::from_millis(400), "cut at {cut:?}");
    assert_eq!(counted(&gate, Closed::HeaderTimeout).await, 1);

    let mut idle = tiny(16, 16);
    idle.idle = Duration::from_millis(300);
    let (addr, gate) = serve_local(plain_state(None), None, idle);
    let mut silent = connect_from("127.0.0.2", addr).await;
    let cut = closed_after(&mut silent, Duration::from_secs(5)).await;
    assert!(
        cut.is_some_and(|d| d >= Duration::from_millis(250)),
        "{cut:?}"
    );
    assert_eq!(counted(&gate, Closed::Idle).await, 1);

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tapwire-tls-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
    let tls = tls::server_config(&dir.join("c.pem"), &dir.join("k.pem")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut handshake = tiny(16, 16);
    handshake.tls_handshake = Duration::from_millis(300);
    let (addr, gate) = serve_local(plain_state(None), Some(tls), handshake);
    let mut never = connect_from("127.0.0.2", addr).await;
    // The start of a ClientHello, then nothing.
    never
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00])
        .await
        .unwrap();
    let cut = closed_after(&mut never, Duration::from_secs(5)).await;
    assert!(
        cut.is_some_and(|d| d >= Duration::from_millis(250)),
        "{cut:?}"
    );
    assert_eq!(counted(&gate, Closed::TlsHandshake).await, 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let h = harness("body", None);
    let big = format!(
        r#"{{"name":"big","filter":"{}"}}"#,
        " ".repeat(serve::MAX_BODY_BYTES)
    );
    let (s, _) = h.admin("POST", "/api/v1/sessions", Some(&big)).await;
    assert_eq!(s, 413);
}

#[tokio::test]
async fn the_api_token_is_compared_as_a_digest_and_shown_nowhere() {
    let t = ApiToken::new("s3cret-token");
    assert!(t.matches("s3cret-token"));
    for other in ["", "s3cret-toke", "s3cret-token2", "S3CRET-TOKEN"] {
        assert!(!t.matches(other), "{other:?}");
    }
    assert_eq!(format!("{t:?}"), "ApiToken(..)");
    let app = router(plain_state(Some("s3cret-token")));
    let act = "/api/v1/sessions/web/rotate";
    let (s, _) = send(app.clone(), "POST", act, REMOTE, Some("s3cret"), None).await;
    assert_eq!(s, 403);
    let (s, v) = send(app, "POST", act, REMOTE, Some("s3cret-token"), None).await;
    // Past the token: the engine (a channel nobody reads here) does not answer.
    assert_eq!(s, 503, "{v}");
}

#[tokio::test]
async fn with_an_api_token_reads_from_other_hosts_need_it_too() {
    // The stream and the packet query serve payloads: a token set means other hosts read with it.
    let app = router(plain_state(Some("t0ken")));
    for path in [
        "/api/v1/sessions",
        "/metrics",
        "/api/v1/sessions/web/stream",
    ] {
        for token in [None, Some("t0ke"), Some("t0ken0")] {
            let (s, v) = send(app.clone(), "GET", path, REMOTE, token, None).await;
            assert_eq!(s, 401, "{path} {token:?}: {v}");
        }
        let (s, v) = send(app.clone(), "GET", path, LOCAL, Some("wrong"), None).await;
        assert_eq!(s, 401, "{path} wrong token from localhost: {v}");
    }
    for (peer, token) in [
        (REMOTE, Some("t0ken")),
        (LOCAL, Some("t0ken")),
        (LOCAL, None),
    ] {
        let (s, v) = send(app.clone(), "GET", "/api/v1/sessions", peer, token, None).await;
        assert_eq!(s, 200, "{peer} {token:?}: {v}");
    }
    // Without a token (only served to other hosts with --allow-unauthenticated-api), reads are open.
    let open = router(plain_state(None));
    let (s, v) = send(open, "GET", "/api/v1/sessions", REMOTE, None, None).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_caller_is_authenticated_before_the_request_is_read() {
    let h = harness("auth-first", None);
    for path in [
        "/api/v1/audit?limit=0",
        "/api/v1/audit?nonsense",
        "/api/v1/probes/h1/flows?wait=9999",
        "/api/v1/probes/h1/flows?after=x",
    ] {
        let (s, v) = h.call("GET", path, REMOTE, None, None).await;
        assert_eq!(s, 401, "{path}: {v}");
    }
    let (s, v) = h
        .call("POST", "/api/v1/sessions/web/explode", REMOTE, None, None)
        .await;
    assert_eq!(s, 401, "{v}");
    let viewer = h.token("eve", "viewer").await;
    let (s, v) = h
        .call(
            "POST",
            "/api/v1/sessions/web/explode",
            REMOTE,
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // Without the control plane, an action from another host without the token is 403.
    let app = router(plain_state(Some("t0ken")));
    let (s, v) = send(
        app,
        "POST",
        "/api/v1/sessions/web/explode",
        REMOTE,
        None,
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    // Once allowed, a bad query or action is a 400 that names it.
    let (s, v) = h.admin("GET", "/api/v1/audit?limit=0", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h.admin("POST", "/api/v1/sessions/web/explode", None).await;
    assert_eq!(s, 400, "{v}");
}

/// Saving the last minutes of a session writes a file: an operator's token, not a viewer's
/// (nor localhost's, a viewer).
#[tokio::test]
async fn saving_packets_needs_an_operator() {
    let h = harness("save-auth", None);
    let viewer = h.token("ro", "viewer").await;
    let operator = h.token("ops", "operator").await;
    let path = "/api/v1/packets/save?session=web&minutes=5";
    assert_eq!(h.call("POST", path, REMOTE, None, None).await.0, 401);
    assert_eq!(
        h.call("POST", path, REMOTE, Some(&viewer), None).await.0,
        403
    );
    assert_eq!(h.call("POST", path, LOCAL, None, None).await.0, 403);
    let (s, v) = h.call("POST", path, REMOTE, Some(&operator), None).await;
    assert_eq!(s, 404, "an operator gets past the role check: {v}");
}

// ---------------------------------------------------------------------------------------------
// The fleet: peer tokens and queries across collectors

/// A session file of `n` packets of host 10.0.0.`host`, one every `step_ns` from `t0_ns`.
fn write_session_file(path: &std::path::Path, host: u8, t0_ns: u64, step_ns: u64, n: u64) {
    use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, LinkType, PacketInfo};
    let mut enc = Encoder::new(Format::Pcapng);
    enc.add_interface(&InterfaceInfo {
        link: LinkType::Ethernet,
        name: format!("10.0.0.{host} erspan-ii session 1"),
        description: String::new(),
        snaplen: 65535,
    })
    .unwrap();
    for i in 0..n {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[8, 0, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, host, 10, 9, 9, 9]);
        f.extend_from_slice(&i.to_be_bytes());
        enc.packet(
            0,
            &PacketInfo {
                ts_ns: t0_ns + i * step_ns,
                orig_len: f.len() as u32,
                data: &f,
                direction: None,
                comment: None,
            },
        )
        .unwrap();
    }
    std::fs::write(path, enc.take_bytes()).unwrap();
}

/// Peer tokens open the packet query and live streams, nothing else; a forged one nothing.
#[tokio::test]
async fn peer_tokens_open_query_parts_and_streams_only() {
    let h = harness("peer-routes", None);
    let out = h.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let app = router(
        h.state
            .clone()
            .with_query(Arc::new(packets::QueryState::new(out, None))),
    );
    let peer = h.ctl.peer_token();
    let forged = tapwire_control::peer::PeerKey::derive(b"not this fleet's secret at all!!")
        .sign("c1", crate::live::engine::now_ns());
    let get = |path: &'static str, token: Option<String>| {
        let app = app.clone();
        async move { send(app, "GET", path, REMOTE, token.as_deref(), None).await }
    };
    for path in [
        "/api/v1/sessions",
        "/api/v1/tokens",
        "/api/v1/audit",
        "/metrics",
    ] {
        let (s, v) = get(path, Some(peer.clone())).await;
        assert_eq!(s, 401, "{path}: {v}");
    }
    let (s, _) = send(
        app.clone(),
        "POST",
        "/api/v1/sessions/x/rotate",
        REMOTE,
        Some(&peer),
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, v) = get("/api/v1/packets?from=0&local=1", Some(peer.clone())).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = get("/api/v1/packets?from=0&local=1", Some(forged)).await;
    assert_eq!(s, 401);
    let (s, _) = get("/api/v1/packets?from=0&local=1", None).await;
    assert_eq!(s, 401, "no token from another host: refused as before");
    // A stream for a peer is never relayed on: this collector runs no "web".
    let (s, _) = get("/api/v1/sessions/web/stream", Some(peer)).await;
    assert_eq!(s, 404);
}

/// A fleet query on c1: its own file, the part of c2 (a collector the catalog names, asked
/// over HTTP), merged by time; c3 (its lease ran out) and c4 (nobody listens) named in the
/// output and the header; a catalog path out of the output root not read.
#[tokio::test]
async fn a_fleet_query_merges_the_parts_and_names_who_is_missing() {
    use tapwire_control::store::{CatalogFile, FileState, Load, Store, StoredCollector};
    let h = harness("fleet-query", None);
    let (out1, out2) = (h.dir.join("out1"), h.dir.join("out2"));
    std::fs::create_dir_all(&out1).unwrap();
    std::fs::create_dir_all(&out2).unwrap();
    let t0 = 1_765_000_000_000_000_000u64;
    // c1 holds the even microseconds, c2 the odd ones.
    write_session_file(&out1.join("web_20261206T000000Z.pcapng"), 1, t0, 2_000, 50);
    write_session_file(
        &out2.join("web_20261206T000000Z.pcapng"),
        2,
        t0 + 1_000,
        2_000,
        50,
    );
    std::fs::write(h.dir.join("outside.pcapng"), b"not a capture").unwrap();
    // c2 serves its files (no control plane there: reads are open).
    let (c2_tx, _) = crossbeam_channel::unbounded();
    let snap = Arc::clone(&h.state.snapshot);
    let c2 = ApiState::new(snap, c2_tx, None, None)
        .with_query(Arc::new(packets::QueryState::new(out2.clone(), None)));
    let (c2_addr, _gate) = serve_local(c2, None, Limits::for_descriptor_limit(1024));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c4_addr = closed.local_addr().unwrap();
    drop(closed);
    {
        let mut store = SqliteStore::open(&h.dir.join("c.db")).unwrap();
        let mut tx = store.begin().unwrap();
        let now = crate::live::engine::now_ns() as i64;
        for (name, url, until) in [
            ("c2", format!("http://{c2_addr}"), now + 60_000_000_000),
            ("c3", "http://127.0.0.1:1".to_string(), now - 1),
            ("c4", format!("http://{c4_addr}"), now + 60_000_000_000),
        ] {
            tx.put_collector(&StoredCollector {
                name: name.into(),
                incarnation: "x".into(),
                advertise: None,
                api_url: Some(url),
                version: String::new(),
                started_ns: now,
                heartbeat_ns: now,
                lease_until_ns: until,
                load: Load::default(),
            })
            .unwrap();
        }
        for (collector, path) in [
            ("c1", "web_20261206T000000Z.pcapng"),
            ("c1", "../outside.pcapng"),
            ("c2", "web_20261206T000000Z.pcapng"),
            ("c3", "web_20261206T000000Z.pcapng"),
            ("c4", "web_20261206T000000Z.pcapng"),
        ] {
            tx.catalog_put(&CatalogFile {
                collector: collector.into(),
                session: "web".into(),
                path: path.into(),
                first_ns: Some(t0 as i64),
                last_ns: Some(t0 as i64 + 100_000),
                packets: 50,
                bytes: 5000,
                state: FileState::Closed,
                updated_ns: now,
            })
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let app = router(
        h.state
            .clone()
            .with_query(Arc::new(packets::QueryState::new(out1, None))),
    );
    let mut req = Request::builder()
        .uri(format!(
            "/api/v1/packets?session=web&from={}&to={}",
            t0 / 1_000_000_000,
            t0 / 1_000_000_000 + 1
        ))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(Peer(LOCAL.parse().unwrap())));
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let head = resp
        .headers()
        .get(packets::UNREACHABLE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(head.contains("c3 (its lease ran out"), "{head}");
    assert!(head.contains("c4 ("), "{head}");
    assert!(!head.contains("c2"), "{head}");
    assert_eq!(resp.headers().get("trailer").unwrap(), packets::UNREACHABLE);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let mut r = tapwire_formats::capture::CaptureReader::new(&body[..]).unwrap();
    let mut times = Vec::new();
    let mut hosts = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        times.push(rec.ts_ns);
        hosts.push(rec.data[29]);
    }
    assert_eq!(times.len(), 100, "both parts, merged");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "in time order");
    assert_eq!(hosts[..4], [1, 2, 1, 2], "interleaved from both collectors");
    let mut scan = crate::query::fleet::LeftOutScan::default();
    scan.feed(&body);
    let named: Vec<&str> = scan
        .found
        .iter()
        .filter_map(|c| c.strip_prefix("collector ")?.split(' ').next())
        .collect();
    assert_eq!(named, ["c3", "c4"], "{:?}", scan.found);
}

/// The catalog over the API: a viewer lists a session's files overlapping a range (times in
/// RFC 3339 or seconds), with paths as stored (relative); the session is a name, never a path.
#[tokio::test]
async fn the_catalog_lists_a_sessions_files_overlapping_a_range_to_viewers() {
    use tapwire_control::CatalogChange;
    use tapwire_control::store::{CatalogFile, FileState};
    let h = harness("catalog", None);
    let t0: i64 = 1_700_000_000_000_000_000;
    let s = 1_000_000_000;
    let row = |session: &str, path: &str, first: i64, last: i64, state| {
        CatalogChange::Put(CatalogFile {
            collector: String::new(),
            session: session.into(),
            path: path.into(),
            first_ns: Some(first),
            last_ns: Some(last),
            packets: 3,
            bytes: 300,
            state,
            updated_ns: last,
        })
    };
    h.ctl
        .catalog_write(&[
            row("web", "web_1.pcapng", t0, t0 + 10 * s, FileState::Deleted),
            row(
                "web",
                "web_2.pcapng.gz",
                t0 + 10 * s,
                t0 + 20 * s,
                FileState::Closed,
            ),
            row(
                "web",
                "web_3.pcapng",
                t0 + 20 * s,
                t0 + 21 * s,
                FileState::Open,
            ),
            row("db", "db_1.pcapng", t0, t0 + 30 * s, FileState::Closed),
        ])
        .unwrap();
    let viewer = h.token("v", "viewer").await;
    let get = |q: &str| {
        let path = format!("/api/v1/files{q}");
        let viewer = viewer.clone();
        let h = &h;
        async move { h.call("GET", &path, REMOTE, Some(&viewer), None).await }
    };
    let (st, v) = get("?session=web").await;
    assert_eq!(st, 200, "{v}");
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["web_1.pcapng", "web_2.pcapng.gz", "web_3.pcapng"]);
    assert_eq!(v["truncated"], false);
    let f = &v["files"][1];
    assert_eq!(f["collector"], h.ctl.name());
    assert_eq!(
        (
            f["state"].as_str(),
            f["first_ns"].as_i64(),
            f["packets"].as_u64()
        ),
        (Some("closed"), Some(t0 + 10 * s), Some(3))
    );
    // 15 s to 16 s after t0, in seconds since the epoch: only the compressed file, and the
    // open one (an open file reaches to now) does not start before 20 s.
    let (st, v) = get(&format!(
        "?session=web&from={}&to={}",
        t0 / s + 15,
        t0 / s + 16
    ))
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["files"][0]["path"], "web_2.pcapng.gz");
    let (st, v) = get("?session=web&from=2023-11-14T22:13:45Z").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["files"][0]["path"], "web_3.pcapng", "{v}");
    for (q, says) in [
        ("", "session: required"),
        ("?session=../etc", "session:"),
        ("?session=web&from=yesterday", "from:"),
        ("?session=web&session=db", "session: given twice"),
        ("?session=web&path=/etc/passwd", "unknown parameter"),
    ] {
        let (st, v) = get(q).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert!(v.to_string().contains(says), "{q}: {v}");
    }
    let (st, _) = h
        .call("GET", "/api/v1/files?session=web", REMOTE, None, None)
        .await;
    assert_eq!(st, 401);
}
