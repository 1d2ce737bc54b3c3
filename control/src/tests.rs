//! The controller on its own: an in-memory SQLite store, a stand-in engine that records what
//! it is given, and a clock the test moves. (The routes, a real engine link and TLS are tested
//! in the collector's `http` module.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tapwire_api_types::Action;
use tapwire_api_types::control::{
    FlowCreate, ProbeReport, Refusal, Register, Role, SessionCreate, TokenCreate,
};
use tapwire_api_types::probe::{Encapsulation, FlowCounters, FlowState, FlowStats, ProbeStats};
use tapwire_api_types::time::rfc3339_ns;

use super::*;
use crate::auth::{Caller, Need};
use crate::controller::HIDDEN;
use crate::store::StoredSession;
use crate::store::sqlite::SqliteStore;

/// 2026-11-21T06:00:00Z.
const T0_NS: u64 = 1_795_240_800_000_000_000;

/// A clock that moves only when told.
struct FakeClock {
    wall_ns: AtomicU64,
    base: Instant,
    mono_ms: AtomicU64,
}

impl FakeClock {
    fn advance(&self, d: Duration) {
        self.wall_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.mono_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for std::sync::Arc<FakeClock> {
    fn now_ns(&self) -> u64 {
        self.wall_ns.load(Ordering::Relaxed)
    }

    fn monotonic(&self) -> Instant {
        self.base + Duration::from_millis(self.mono_ms.load(Ordering::Relaxed))
    }
}

/// An engine that keeps sessions as (name, enabled), refuses a merged set holding `clash`, and
/// records every set it is given.
#[derive(Default)]
struct FakeEngine {
    given: Mutex<Vec<Vec<(String, bool)>>>,
    refuse_apply: bool,
}

impl Engine for std::sync::Arc<FakeEngine> {
    type Session = (String, bool);

    fn session(&self, def: &StoredSession) -> Result<(String, bool), String> {
        match def.filter.as_deref() {
            Some("bad") => Err(format!(
                "session {:?}: filter \"bad\": syntax error",
                def.name
            )),
            _ => Ok((def.name.clone(), def.enabled)),
        }
    }

    fn check(&self, sessions: &[(String, bool)]) -> Result<(), String> {
        match sessions.iter().find(|(n, _)| n == "clash") {
            Some(_) => Err("session \"clash\": the name is taken".into()),
            None => Ok(()),
        }
    }

    fn queue(&self, sessions: Vec<(String, bool)>) -> Result<(), EngineError> {
        self.given.lock().unwrap().push(sessions);
        Ok(())
    }

    fn apply(&self, sessions: Vec<(String, bool)>) -> Result<(), EngineError> {
        self.given.lock().unwrap().push(sessions);
        if self.refuse_apply {
            return Err(EngineError::Refused(
                "tap \"t0\" is used by another session".into(),
            ));
        }
        Ok(())
    }

    fn action(&self, session: &str, _: Action) -> Result<String, EngineError> {
        Ok(format!("session {session} rotated"))
    }

    fn file_session(&self, name: &str) -> bool {
        name == "from-file"
    }

    fn file_session_gathering(&self, encap: Encapsulation, id: u32) -> Option<String> {
        (encap == Encapsulation::ErspanIi && id == 1).then(|| "from-file".to_string())
    }

    fn check_filter(&self, expr: &str) -> Result<(), String> {
        if expr == "bad" {
            Err("syntax error".into())
        } else {
            Ok(())
        }
    }
}

struct Harness {
    ctl: std::sync::Arc<Controller<std::sync::Arc<FakeEngine>>>,
    engine: std::sync::Arc<FakeEngine>,
    clock: std::sync::Arc<FakeClock>,
    dir: std::path::PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn harness(tag: &str, engine: FakeEngine) -> Harness {
    harness_on(tag, engine, |_| Box::new(SqliteStore::memory().unwrap()))
}

/// A harness on the store `open` makes in the harness's directory.
fn harness_on(
    tag: &str,
    engine: FakeEngine,
    open: impl FnOnce(&std::path::Path) -> Box<dyn Store>,
) -> Harness {
    let dir = std::env::temp_dir().join(format!("tapwire-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = open(&dir);
    let engine = std::sync::Arc::new(engine);
    let clock = std::sync::Arc::new(FakeClock {
        wall_ns: AtomicU64::new(T0_NS),
        base: Instant::now(),
        mono_ms: AtomicU64::new(0),
    });
    let ctl = Controller::start(
        ControllerOptions {
            db: dir.join("c.db"),
            advertise: Some("10.0.0.1".parse().unwrap()),
            max_probes: 3,
            max_flows_per_probe: 4,
            max_pps_per_probe: None,
            report_interval: Duration::from_secs(1),
        },
        store,
        std::sync::Arc::clone(&engine),
        Box::new(std::sync::Arc::clone(&clock)),
    )
    .unwrap();
    Harness {
        ctl,
        engine,
        clock,
        dir,
    }
}

fn create(name: &str) -> SessionCreate {
    SessionCreate {
        name: name.into(),
        encap: None,
        mirror_id: None,
        enabled: None,
        filter: None,
        files: None,
        tap: None,
    }
}

#[test]
fn definitions_and_audit_rows_are_stamped_with_the_given_clock() {
    let h = harness("clock", FakeEngine::default());
    let ops = Caller::system("ops");
    let s = h.ctl.create_session(&ops, create("web")).unwrap();
    assert_eq!(s.created, rfc3339_ns(T0_NS));
    assert_eq!(s.created, "2026-11-21T06:00:00.000000000Z");
    h.clock.advance(Duration::from_secs(90));
    let s = h
        .ctl
        .update_session(&ops, "web", json!({ "filter": "tcp" }))
        .unwrap();
    assert_eq!(s.created, rfc3339_ns(T0_NS));
    assert_eq!(s.updated, rfc3339_ns(T0_NS + 90_000_000_000));
    let audit = h.ctl.audit(&ops, 0, 100).unwrap();
    let at: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.at.as_str()))
        .collect();
    assert!(
        at.contains(&("session.create", "2026-11-21T06:00:00.000000000Z")),
        "{at:?}"
    );
    assert!(
        at.contains(&("session.update", "2026-11-21T06:01:30.000000000Z")),
        "{at:?}"
    );
    // The first admin token was made at start, at the clock's time too.
    let admin = h.ctl.tokens().unwrap();
    assert_eq!(admin[0].role, Role::Admin);
    assert_eq!(admin[0].created, rfc3339_ns(T0_NS));
}

#[test]
fn a_probe_is_online_while_heard_from_within_its_window() {
    let h = harness("online", FakeEngine::default());
    let probe = Caller {
        name: "h1".into(),
        role: Role::Probe,
        probe: Some("h1".into()),
    };
    h.ctl
        .register(
            &probe,
            Register {
                name: "h1".into(),
                version: "1".into(),
                interfaces: vec!["eth0".into()],
            },
        )
        .unwrap();
    let report = ProbeReport {
        applied_version: 0,
        stats: ProbeStats {
            version: "1".into(),
            started: String::new(),
            uptime_s: 1.0,
            flows: Vec::new(),
        },
        refused: Vec::new(),
    };
    h.ctl.report(&probe, "h1", report).unwrap();
    assert!(h.ctl.probe("h1").unwrap().online);
    // Reports every second: the window is three intervals, at least 15 s.
    h.clock.advance(Duration::from_secs(14));
    assert!(h.ctl.probe("h1").unwrap().online);
    h.clock.advance(Duration::from_secs(2));
    assert!(!h.ctl.probe("h1").unwrap().online);
    // A long-poll in flight keeps it online however long it lasts.
    let poll = h.ctl.polling("h1");
    h.clock.advance(Duration::from_secs(60));
    assert!(h.ctl.probe("h1").unwrap().online);
    drop(poll);
    assert!(h.ctl.probe("h1").unwrap().online);
    h.clock.advance(Duration::from_secs(16));
    assert!(!h.ctl.probe("h1").unwrap().online);
}

#[test]
fn the_engine_hears_of_nothing_the_checks_refuse() {
    let h = harness("refuse", FakeEngine::default());
    let ops = Caller::system("ops");
    let given = |h: &Harness| h.engine.given.lock().unwrap().len();
    let before = given(&h);
    // The merged set is refused: nothing stored, nothing applied, nothing audited.
    match h.ctl.create_session(&ops, create("clash")) {
        Err(Refused::Conflict(m)) => assert!(m.contains("the name is taken"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // One definition alone is refused before the transaction.
    let mut bad = create("web");
    bad.filter = Some("bad".into());
    match h.ctl.create_session(&ops, bad) {
        Err(Refused::BadRequest(m)) => assert!(m.contains("filter"), "{m}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    // The file's names and mirror ids are the engine's to tell.
    assert!(matches!(
        h.ctl.create_session(&ops, create("from-file")),
        Err(Refused::Conflict(_))
    ));
    let s = h.ctl.create_session(&ops, create("web")).unwrap();
    assert_eq!(s.mirror_id, 2, "id 1 is gathered by the file's session");
    assert!(h.ctl.sessions().unwrap().iter().all(|s| s.name == "web"));
    assert_eq!(given(&h), before + 1);
    assert_eq!(
        h.engine.given.lock().unwrap().last().unwrap(),
        &vec![("web".to_string(), true)]
    );
    let actions: Vec<String> = h
        .ctl
        .audit(&ops, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token.create", "session.create"]);
}

#[test]
fn a_change_the_engine_refuses_after_the_commit_is_kept_and_reported() {
    let h = harness(
        "late",
        FakeEngine {
            refuse_apply: true,
            ..FakeEngine::default()
        },
    );
    match h.ctl.create_session(&Caller::system("ops"), create("web")) {
        Err(Refused::Internal(m)) => {
            assert!(m.starts_with("stored, but the engine refused it"), "{m}")
        }
        other => panic!("expected a 500, got {other:?}"),
    }
    assert_eq!(h.ctl.session("web").unwrap().name, "web");
}

fn register(name: &str) -> Register {
    Register {
        name: name.into(),
        version: "1".into(),
        interfaces: vec!["eth0".into()],
    }
}

/// A probe token acts only as the probe it was made for, which need not be its own name; the
/// controller knows at most `max_probes` probes, whoever names a new one.
#[test]
fn probe_tokens_are_bound_and_known_probes_are_bounded() {
    let h = harness("probes", FakeEngine::default());
    let admin = Caller::system("ops");
    let token = |name: &str, role: Role, probe: Option<&str>| {
        h.ctl.create_token(
            &admin,
            TokenCreate {
                name: name.into(),
                role,
                probe: probe.map(str::to_string),
            },
        )
    };
    let made = token("key-1", Role::Probe, Some("host1")).unwrap();
    assert_eq!(made.probe.as_deref(), Some("host1"));
    let key = h
        .ctl
        .authenticate(made.token.as_deref(), false, Need::Probe)
        .unwrap();
    assert_eq!(key.probe.as_deref(), Some("host1"));
    h.ctl.register(&key, register("host1")).unwrap();
    for other in ["key-1", "host2"] {
        let refused = [
            h.ctl.register(&key, register(other)).err(),
            h.ctl.flowset(&key, other).err(),
        ];
        for r in refused {
            match r {
                Some(Refused::Forbidden(m)) => assert_eq!(
                    m,
                    format!(
                        "token \"key-1\" is bound to probe \"host1\": it may not act as probe \"{other}\""
                    )
                ),
                other => panic!("expected a 403, got {other:?}"),
            }
        }
    }
    // Without a probe named, a probe token is bound to its own name, as before.
    assert_eq!(
        token("host2", Role::Probe, None).unwrap().probe.as_deref(),
        Some("host2")
    );
    match token("ro", Role::Viewer, Some("host1")) {
        Err(Refused::BadRequest(m)) => assert!(m.contains("only probe tokens"), "{m}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    // At most 3 probes known (the harness's limit): invented names are refused, to an admin
    // too, whether they register or are named by a flow.
    h.ctl.register(&admin, register("a")).unwrap();
    h.ctl.register(&admin, register("b")).unwrap();
    let full =
        "probe \"invented\" is new and the controller knows 3 probes, its limit (--max-probes 3)";
    match h.ctl.register(&admin, register("invented")) {
        Err(Refused::Conflict(m)) => assert!(m.starts_with(full), "{m}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    h.ctl.create_session(&admin, create("web")).unwrap();
    let flow = FlowCreate {
        probe: "invented".into(),
        name: "vm1".into(),
        interface: "tap1".into(),
        session: "web".into(),
        direction: None,
        vlans: None,
        untagged: None,
        filter: None,
        snaplen: None,
        sample: None,
        rate_pps: None,
        rate_bps: None,
        burst: None,
        promiscuous: None,
        enabled: None,
    };
    match h.ctl.create_flow(&admin, flow.clone()) {
        Err(Refused::Conflict(m)) => assert!(m.starts_with(full), "{m}"),
        other => panic!("expected a 409, got {other:?}"),
    }
    assert_eq!(h.ctl.probes().unwrap().len(), 3);
    // Known probes register again; deleting one makes room.
    h.ctl.register(&admin, register("a")).unwrap();
    h.ctl.delete_probe(&admin, "b").unwrap();
    h.ctl.create_flow(&admin, flow).unwrap();
    let names: Vec<String> = h
        .ctl
        .probes()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["a", "host1", "invented"]);
}

fn flow_stats(n: usize) -> Vec<FlowStats> {
    (0..n)
        .map(|i| FlowStats {
            name: format!("vm{i}"),
            interface: format!("tap{i}"),
            collector: "10.0.0.1".into(),
            encap: Encapsulation::ErspanIi,
            session: 2,
            state: FlowState::Running,
            error: None,
            max_payload_bytes: 1450,
            counters: FlowCounters::default(),
            send: Default::default(),
        })
        .collect()
}

/// One report is kept per probe, of at most as many flows as the probe may have.
#[test]
fn a_report_holds_at_most_the_flows_its_probe_may_have() {
    let h = harness("report", FakeEngine::default());
    let admin = Caller::system("ops");
    h.ctl.register(&admin, register("h1")).unwrap();
    let report = |flows: usize, refused: usize| ProbeReport {
        applied_version: 0,
        stats: ProbeStats {
            version: "1".into(),
            started: String::new(),
            uptime_s: 1.0,
            flows: flow_stats(flows),
        },
        refused: (0..refused)
            .map(|i| Refusal {
                name: format!("r{i}"),
                error: "no".into(),
            })
            .collect(),
    };
    for (flows, refused, field) in [(5, 0, "stats.flows: 5"), (0, 5, "refused: 5")] {
        match h.ctl.report(&admin, "h1", report(flows, refused)) {
            Err(Refused::BadRequest(m)) => assert_eq!(
                m,
                format!("{field} flows, more than probe \"h1\" may have (max_flows 4)")
            ),
            other => panic!("expected a 400, got {other:?}"),
        }
    }
    h.ctl.report(&admin, "h1", report(4, 4)).unwrap();
    // A report for a probe that never registered is refused, known by name or not.
    assert!(matches!(
        h.ctl.report(&admin, "nobody", report(0, 0)),
        Err(Refused::NotFound(_))
    ));
    // A name past 100 bytes and an interface name past 15 are refused too; all counted.
    let long = "n".repeat(101);
    assert!(matches!(
        h.ctl.register(&admin, register(&long)),
        Err(Refused::BadRequest(_))
    ));
    let mut bad_if = register("h1");
    bad_if.interfaces = vec!["i".repeat(16)];
    assert!(matches!(
        h.ctl.register(&admin, bad_if),
        Err(Refused::BadRequest(_))
    ));
    let counts: Vec<(&str, u64)> = h
        .ctl
        .probe_refusals()
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect();
    assert_eq!(
        counts,
        [
            ("body_too_large", 0),
            ("other_probe", 0),
            ("too_many_probes", 0),
            ("too_many_flows", 2),
            ("invalid", 2),
        ]
    );
}

/// What a database made before the API refused commands and paths holds of them is taken out
/// when it is opened (with an audit row naming the fields, not their values), its probe tokens
/// are bound to their names, and an old audit row's command is shown to admins only.
#[test]
fn an_older_database_loses_its_commands_and_paths_and_only_admins_see_old_ones() {
    use crate::store::sqlite::{MIGRATIONS, migrate};
    let h = harness_on("legacy", FakeEngine::default(), |dir| {
        let path = dir.join("old.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate(&mut conn, &MIGRATIONS[..1]).unwrap();
        conn.execute(
            "INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES ('h1', 'probe', ?1, 't', 'x')",
            [crate::auth::hash("tw_h1")],
        )
        .unwrap();
        conn.execute_batch(
            r#"INSERT INTO sessions (name, mirror_id, encap, enabled, filter, files, tap, created_at, updated_at) VALUES
                ('web', 2, 'erspan-ii', 1, NULL, '{"on_finish":"touch /tmp/pwned","dir":"/etc","rotate":{"size":"1MiB"}}', '{"name":"t0","netns":"/proc/1/ns/net"}', 't', 't'),
                ('db', 3, 'erspan-ii', 1, NULL, '{"dir":"db/x"}', '{"name":"t1","netns":"ids"}', 't', 't'),
                ('up', 4, 'erspan-ii', 1, NULL, '{"dir":"a/../../b"}', NULL, 't', 't'),
                ('off', 5, 'erspan-ii', 1, NULL, 'false', NULL, 't', 't');
            INSERT INTO audit (at, token, role, action, target, detail) VALUES
                ('t', 'ops', 'operator', 'session.create', 'web', '{"files":{"on_finish":"touch /tmp/pwned"},"tap":null}');"#,
        )
        .unwrap();
        drop(conn);
        Box::new(SqliteStore::open(&path).unwrap())
    });
    let s = |name: &str| h.ctl.session(name).unwrap();
    assert_eq!(
        s("web").files,
        Some(json!({ "rotate": { "size": "1MiB" } }))
    );
    assert_eq!(s("web").tap, Some(json!({ "name": "t0" })));
    assert_eq!(s("db").files, Some(json!({ "dir": "db/x" })));
    assert_eq!(s("db").tap, Some(json!({ "name": "t1", "netns": "ids" })));
    assert_eq!(s("up").files, Some(json!({})));
    assert_eq!(s("off").files, Some(json!(false)));
    let viewer = Caller::localhost();
    let seen = h.ctl.audit(&viewer, 0, 100).unwrap();
    assert!(
        !serde_json::to_string(&seen).unwrap().contains("pwned"),
        "{seen:?}"
    );
    assert_eq!(seen[0].detail["files"]["on_finish"], HIDDEN);
    let upgrade: Vec<(String, Value)> = seen
        .iter()
        .filter(|e| e.token == "upgrade")
        .map(|e| (e.target.clone(), e.detail["removed"].clone()))
        .collect();
    assert_eq!(
        upgrade,
        [
            ("up".to_string(), json!("files.dir")),
            (
                "web".to_string(),
                json!("files.on_finish files.dir tap.netns")
            ),
        ]
    );
    // Admins keep what happened.
    let all = h.ctl.audit(&Caller::system("root"), 0, 100).unwrap();
    assert_eq!(all[0].detail["files"]["on_finish"], "touch /tmp/pwned");
    // The old probe token acts as the probe of its name, as it did.
    let h1 = h
        .ctl
        .authenticate(Some("tw_h1"), false, Need::Probe)
        .unwrap();
    assert_eq!(h1.probe.as_deref(), Some("h1"));
}
