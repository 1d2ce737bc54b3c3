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
    let state = ApiState {
        snapshot: Arc::new(ArcSwap::from_pointee(tapwire_api_types::Snapshot {
            version: "t".into(),
            started: String::new(),
            uptime_s: 0.0,
            totals: Default::default(),
            inputs: Vec::new(),
            sessions: Vec::new(),
            control: None,
        })),
        control: tx,
        token: None,
        controller: Some(Arc::clone(&ctl)),
    };
    Harness {
        app: router(state),
        ctl,
        applied,
        admin,
        dir,
    }
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
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut req = req
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap();
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer(addr)));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
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
            .audit(0, 1000)
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
            assert_eq!(sessions[0].filter.as_deref(), Some("tcp"));
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
    }));
    let bound = spawn(
        None,
        Some(Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(tls),
        }),
        snapshot,
        tx,
        None,
        None,
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
