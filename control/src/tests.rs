//! The controller on its own: an in-memory SQLite store, a stand-in engine that records what
//! it is given, and a clock the test moves. (The routes, a real engine link and TLS are tested
//! in the collector's `http` module.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tapwire_api_types::Action;
use tapwire_api_types::control::{
    ControlState, FlowCreate, ProbeReport, Refusal, Register, Role, SessionCreate, SessionInfo,
    TokenCreate,
};
use tapwire_api_types::probe::{Encapsulation, FlowCounters, FlowState, FlowStats, ProbeStats};
use tapwire_api_types::time::rfc3339_ns;

use std::sync::Arc;

use super::*;
use crate::auth::{Caller, Need};
use crate::both_backends;
use crate::controller::HIDDEN;
use crate::store::sqlite::SqliteStore;
use crate::store::tests::Backend;
use crate::store::{Location, StoredSession};

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
            db: Location::Sqlite(dir.join("c.db")),
            name: "c1".into(),
            advertise: Some("10.0.0.1".parse().unwrap()),
            api_url: None,
            max_probes: 3,
            max_flows_per_probe: 4,
            max_pps_per_probe: None,
            report_interval: Duration::from_secs(1),
            lease: crate::fleet::LEASE,
            heartbeat: crate::fleet::HEARTBEAT,
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
        collector: None,
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
        peer: None,
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

// ---------------------------------------------------------------------------------------------
// A fleet: two collectors on one database, one clock.

fn clock() -> Arc<FakeClock> {
    Arc::new(FakeClock {
        wall_ns: AtomicU64::new(T0_NS),
        base: Instant::now(),
        mono_ms: AtomicU64::new(0),
    })
}

/// A collector named `name` advertising `advertise`, on `b`'s database, with the given clock.
/// A PostgreSQL fleet's first admin token is made offline, as an operator would.
fn member(
    b: &Backend,
    name: &str,
    advertise: &str,
    engine: FakeEngine,
    clock: Arc<FakeClock>,
) -> Harness {
    member_on(b, b.open(), name, advertise, engine, clock)
}

/// [`member`] on a store opened by the caller.
fn member_on(
    b: &Backend,
    mut store: Box<dyn crate::store::Store>,
    name: &str,
    advertise: &str,
    engine: FakeEngine,
    clock: Arc<FakeClock>,
) -> Harness {
    let engine = Arc::new(engine);
    if b.location.is_postgres() && !store.begin().unwrap().has_admin().unwrap() {
        tokens::create_offline(
            &mut *store,
            &Caller::system("ops"),
            &TokenCreate {
                name: "admin".into(),
                role: Role::Admin,
                probe: None,
            },
            T0_NS,
        )
        .unwrap();
    }
    let dir = b.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = Controller::start(
        ControllerOptions {
            db: b.location.clone(),
            name: name.into(),
            advertise: Some(advertise.parse().unwrap()),
            api_url: Some(format!("http://{advertise}:9760")),
            max_probes: 3,
            max_flows_per_probe: 4,
            max_pps_per_probe: None,
            report_interval: Duration::from_secs(1),
            lease: crate::fleet::LEASE,
            heartbeat: crate::fleet::HEARTBEAT,
        },
        store,
        Arc::clone(&engine),
        Box::new(Arc::clone(&clock)),
    )
    .unwrap();
    Harness {
        ctl,
        engine,
        clock,
        dir,
    }
}

fn probe_caller(name: &str) -> Caller {
    Caller {
        name: name.into(),
        role: Role::Probe,
        probe: Some(name.into()),
        peer: None,
    }
}

fn register_on(h: &Harness, probe: &str) {
    h.ctl
        .register(
            &probe_caller(probe),
            Register {
                name: probe.into(),
                version: "1".into(),
                interfaces: vec!["eth0".into(), "eth1".into()],
            },
        )
        .unwrap();
}

fn flow(probe: &str, name: &str, session: &str) -> tapwire_api_types::control::FlowCreate {
    serde_json::from_value(json!({
        "probe": probe, "name": name, "interface": name, "session": session
    }))
    .unwrap()
}

/// (flow name, collector address) of a probe's flow set, and its version.
fn destinations(h: &Harness, probe: &str) -> (u64, Vec<(String, String)>) {
    let set = h.ctl.flowset(&probe_caller(probe), probe).unwrap();
    let mut d: Vec<(String, String)> = set
        .flows
        .iter()
        .map(|f| (f.name.clone(), f.collector.to_string()))
        .collect();
    d.sort();
    (set.version, d)
}

fn last_given(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .engine
        .given
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    v.sort();
    v
}

both_backends!(
    sessions_spread_over_the_fleet_and_move_when_a_collector_dies,
    |b| {
        let clock = clock();
        let a = member(
            &b,
            "a",
            "10.0.0.1",
            FakeEngine::default(),
            Arc::clone(&clock),
        );
        let c = member(
            &b,
            "b",
            "10.0.0.2",
            FakeEngine::default(),
            Arc::clone(&clock),
        );
        let ops = Caller::system("ops");
        let x = a.ctl.create_session(&ops, create("x")).unwrap();
        let y = a.ctl.create_session(&ops, create("y")).unwrap();
        let mut owners = vec![x.owner.clone().unwrap(), y.owner.clone().unwrap()];
        owners.sort();
        assert_eq!(owners, ["a", "b"], "two auto sessions, two collectors");
        assert_eq!(
            (x.collector.as_str(), y.collector.as_str()),
            ("auto", "auto")
        );
        let on = |s: &SessionInfo| {
            if s.owner.as_deref() == Some("a") {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            }
        };
        register_on(&a, "h1");
        a.ctl.create_flow(&ops, flow("h1", "eth0", "x")).unwrap();
        a.ctl.create_flow(&ops, flow("h1", "eth1", "y")).unwrap();
        let (v1, d) = destinations(&a, "h1");
        assert_eq!(
            d,
            [
                ("eth0".to_string(), on(&x).to_string()),
                ("eth1".to_string(), on(&y).to_string())
            ],
            "each flow goes to the collector that runs its session"
        );
        // Each engine runs only what its collector owns; b hears of a's changes at its tick.
        c.ctl.tick();
        let mine = |h: &Harness, name: &str| -> Vec<String> {
            let mut v: Vec<String> = [&x, &y]
                .iter()
                .filter(|s| s.owner.as_deref() == Some(name))
                .map(|s| s.name.clone())
                .collect();
            v.sort();
            let _ = h;
            v
        };
        assert_eq!(last_given(&a), mine(&a, "a"));
        assert_eq!(last_given(&c), mine(&c, "b"));
        assert_eq!(
            destinations(&c, "h1"),
            (v1, d.clone()),
            "b serves the same flow set"
        );

        // a dies (no more heartbeats). Within the lease nothing moves.
        clock.advance(Duration::from_secs(3));
        c.ctl.tick();
        assert_eq!(a.ctl.session("x").unwrap().owner, x.owner);
        clock.advance(crate::fleet::LEASE);
        c.ctl.tick();
        for s in ["x", "y"] {
            assert_eq!(c.ctl.session(s).unwrap().owner.as_deref(), Some("b"), "{s}");
        }
        assert_eq!(last_given(&c), ["x", "y"]);
        let (v2, d) = destinations(&c, "h1");
        assert!(v2 > v1);
        assert!(d.iter().all(|(_, addr)| addr == "10.0.0.2"), "{d:?}");
        let moved: Vec<_> = c
            .ctl
            .audit(&Caller::system("root"), 0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "session.place" && e.detail["reason"] == "collector a is dead")
            .collect();
        assert_eq!(moved.len(), 1, "one session was on a");
        assert_eq!(
            moved[0].collector.as_deref(),
            Some("b"),
            "the placer that served it"
        );
        assert_eq!(moved[0].token, "placer");

        // a comes back: it runs nothing now, and nothing moves back, however long both live.
        a.ctl.tick();
        assert!(last_given(&a).is_empty(), "{:?}", last_given(&a));
        let before = c.ctl.audit(&Caller::system("root"), 0, 1000).unwrap().len();
        for _ in 0..10 {
            clock.advance(Duration::from_secs(1));
            a.ctl.tick();
            c.ctl.tick();
        }
        assert_eq!(
            c.ctl.audit(&Caller::system("root"), 0, 1000).unwrap().len(),
            before,
            "no flapping"
        );
        let fleet = a.ctl.fleet();
        let state: Vec<(String, Vec<String>)> = fleet
            .collectors
            .iter()
            .map(|m| (m.name.clone(), m.sessions.clone()))
            .collect();
        assert_eq!(
            state,
            [
                ("a".to_string(), vec![]),
                ("b".to_string(), vec!["x".to_string(), "y".to_string()])
            ]
        );
        assert!(
            fleet
                .collectors
                .iter()
                .all(|m| m.state == tapwire_api_types::control::CollectorState::Live)
        );
        // A new session goes to the emptier collector.
        assert_eq!(
            c.ctl
                .create_session(&ops, create("z"))
                .unwrap()
                .owner
                .as_deref(),
            Some("a")
        );
    }
);

both_backends!(a_pinned_session_runs_where_it_is_pinned, |b| {
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let _c = member(
        &b,
        "b",
        "10.0.0.2",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let ops = Caller::system("ops");
    let mut req = create("x");
    req.collector = Some("b".into());
    let x = a.ctl.create_session(&ops, req).unwrap();
    assert_eq!((x.collector.as_str(), x.owner.as_deref()), ("b", Some("b")));
    let mut req = create("y");
    req.collector = Some("nobody".into());
    match a.ctl.create_session(&ops, req) {
        Err(Refused::BadRequest(m)) => assert!(m.contains("no collector named \"nobody\""), "{m}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    // Pinned elsewhere, then back to auto: it stays where it runs.
    let x = a
        .ctl
        .update_session(&ops, "x", json!({ "collector": "a" }))
        .unwrap();
    assert_eq!(x.owner.as_deref(), Some("a"));
    let x = a
        .ctl
        .update_session(&ops, "x", json!({ "collector": "auto" }))
        .unwrap();
    assert_eq!(
        (x.collector.as_str(), x.owner.as_deref()),
        ("auto", Some("a"))
    );
});

both_backends!(tokens_are_the_fleets, |b| {
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let c = member(
        &b,
        "b",
        "10.0.0.2",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let admin = Caller::system("ops");
    let t = a
        .ctl
        .create_token(
            &admin,
            tapwire_api_types::control::TokenCreate {
                name: "viewer".into(),
                role: Role::Viewer,
                probe: None,
            },
        )
        .unwrap();
    let secret = t.token.unwrap();
    // Known on b at once (looked up in the database when b has not heard of it yet).
    let who = c
        .ctl
        .authenticate(Some(&secret), false, Need::Read)
        .unwrap();
    assert_eq!(who.name, "viewer");
    assert!(matches!(
        c.ctl.authenticate(Some(&secret), false, Need::Change),
        Err(Refused::Forbidden(_))
    ));
    a.ctl.revoke_token(&admin, "viewer").unwrap();
    c.ctl.tick();
    assert!(matches!(
        c.ctl.authenticate(Some(&secret), false, Need::Read),
        Err(Refused::Unauthorized(_))
    ));
    let audit = c.ctl.audit(&Caller::system("root"), 0, 100).unwrap();
    let revoke = audit.iter().find(|e| e.action == "token.revoke").unwrap();
    assert_eq!(revoke.collector.as_deref(), Some("a"));
});

// A token revoked on one collector is refused on another within `fleet::TOKEN_CACHE` even
// when that one hears nothing (no notification, no heartbeat): tokens are taken from memory
// only while it is known to be current.
both_backends!(
    a_revoked_token_is_refused_elsewhere_within_the_cache_bound,
    |b| {
        let clock = clock();
        let a = member(
            &b,
            "a",
            "10.0.0.1",
            FakeEngine::default(),
            Arc::clone(&clock),
        );
        let c = member(
            &b,
            "b",
            "10.0.0.2",
            FakeEngine::default(),
            Arc::clone(&clock),
        );
        let admin = Caller::system("ops");
        let secret = a
            .ctl
            .create_token(
                &admin,
                TokenCreate {
                    name: "viewer".into(),
                    role: Role::Viewer,
                    probe: None,
                },
            )
            .unwrap()
            .token
            .unwrap();
        c.ctl.tick();
        assert!(c.ctl.authenticate(Some(&secret), false, Need::Read).is_ok());
        a.ctl.revoke_token(&admin, "viewer").unwrap();
        // b has heard nothing: within the bound it may still take the token from memory ...
        clock.advance(crate::fleet::TOKEN_CACHE - Duration::from_millis(1));
        assert!(c.ctl.authenticate(Some(&secret), false, Need::Read).is_ok());
        // ... and not a moment longer.
        clock.advance(Duration::from_millis(1));
        assert!(matches!(
            c.ctl.authenticate(Some(&secret), false, Need::Read),
            Err(Refused::Unauthorized(_))
        ));
        // A heartbeat that finds nothing new keeps the view trusted; one after the revocation
        // (read again) refuses at once.
        let t2 = a
            .ctl
            .create_token(
                &admin,
                TokenCreate {
                    name: "viewer2".into(),
                    role: Role::Viewer,
                    probe: None,
                },
            )
            .unwrap()
            .token
            .unwrap();
        c.ctl.tick();
        a.ctl.revoke_token(&admin, "viewer2").unwrap();
        c.ctl.tick();
        assert!(matches!(
            c.ctl.authenticate(Some(&t2), false, Need::Read),
            Err(Refused::Unauthorized(_))
        ));
    }
);

/// With the fleet thread running, the revocation's notification makes the other collector
/// read the tokens again: refused well within the bound, its clock standing still.
#[test]
fn postgres_a_revocation_reaches_the_other_collector_by_notification() {
    let Some(b) = Backend::postgres("revoke_notify") else {
        return;
    };
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let c = member(
        &b,
        "b",
        "10.0.0.2",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let admin = Caller::system("ops");
    let secret = a
        .ctl
        .create_token(
            &admin,
            TokenCreate {
                name: "viewer".into(),
                role: Role::Viewer,
                probe: None,
            },
        )
        .unwrap()
        .token
        .unwrap();
    c.ctl.tick();
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = c.ctl.spawn_fleet(Arc::clone(&stop)).unwrap();
    assert!(c.ctl.authenticate(Some(&secret), false, Need::Read).is_ok());
    let t0 = Instant::now();
    a.ctl.revoke_token(&admin, "viewer").unwrap();
    let refused = loop {
        if c.ctl
            .authenticate(Some(&secret), false, Need::Read)
            .is_err()
        {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, Ordering::Relaxed);
    fleet.join().unwrap();
    let refused = refused.expect("the revoked token was still taken after 10 s");
    assert!(
        refused < crate::fleet::TOKEN_CACHE,
        "refused {refused:?} after the revocation"
    );
}

/// Behind a pooler in transaction mode (PgBouncer) `LISTEN` hears nothing: a collector whose
/// store tells of no commits still takes another's change, at its next heartbeat.
#[test]
fn postgres_without_notifications_a_change_arrives_by_heartbeat() {
    /// The database without its notifications.
    struct Deaf(Box<dyn crate::store::Store>);
    impl crate::store::Store for Deaf {
        fn begin(
            &mut self,
        ) -> Result<Box<dyn crate::store::Transaction + '_>, crate::store::StoreError> {
            self.0.begin()
        }
    }
    let Some(b) = Backend::postgres("deaf") else {
        return;
    };
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let c = member_on(
        &b,
        Box::new(Deaf(b.open())),
        "b",
        "10.0.0.2",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = c.ctl.spawn_fleet(Arc::clone(&stop)).unwrap();
    let mut req = create("x");
    req.collector = Some("b".into());
    let t0 = Instant::now();
    a.ctl.create_session(&Caller::system("ops"), req).unwrap();
    let taken = loop {
        if last_given(&c) == ["x"] {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, Ordering::Relaxed);
    fleet.join().unwrap();
    let taken = taken.expect("b never ran the session pinned to it");
    // One heartbeat, and the time to read the view under a loaded test run.
    assert!(
        taken < crate::fleet::HEARTBEAT * 3,
        "b ran it {taken:?} after the change"
    );
}

#[test]
fn postgres_a_second_collector_with_a_live_name_is_refused() {
    let Some(b) = Backend::postgres("live_name") else {
        return;
    };
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let start = || {
        Controller::start(
            ControllerOptions {
                db: b.location.clone(),
                name: "a".into(),
                advertise: Some("10.0.0.9".parse().unwrap()),
                api_url: None,
                max_probes: 3,
                max_flows_per_probe: 4,
                max_pps_per_probe: None,
                report_interval: Duration::from_secs(1),
                lease: crate::fleet::LEASE,
                heartbeat: crate::fleet::HEARTBEAT,
            },
            b.open(),
            Arc::new(FakeEngine::default()),
            Box::new(Arc::clone(&clock)),
        )
    };
    match start() {
        Err(e) => assert!(e.contains("collector \"a\" is live in this fleet"), "{e}"),
        Ok(_) => panic!("a second live \"a\" was let in"),
    }
    // Once the first has left (a clean stop), the name is free again.
    a.ctl.leave();
    let again = start().unwrap();
    assert_eq!(
        again.fleet().collectors[0].advertise.as_deref(),
        Some("10.0.0.9")
    );
}

/// The database goes away and comes back: the probes are served meanwhile, the health says
/// so, and no collector moves anything until every live one had the time to renew its lease.
#[test]
fn postgres_an_outage_changes_nothing_and_ends_by_itself() {
    let Some(pg) = tapwire_tests::pg::Pg::start("outage") else {
        return;
    };
    let b = Backend {
        location: crate::store::Location::Postgres(pg.url(&pg.database("outage"))),
        dir: tapwire_tests::TempDir::new("outage"),
    };
    let clock = clock();
    let a = member(
        &b,
        "a",
        "10.0.0.1",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let c = member(
        &b,
        "b",
        "10.0.0.2",
        FakeEngine::default(),
        Arc::clone(&clock),
    );
    let ops = Caller::system("ops");
    a.ctl.create_session(&ops, create("x")).unwrap();
    a.ctl.create_session(&ops, create("y")).unwrap();
    register_on(&a, "h1");
    a.ctl.create_flow(&ops, flow("h1", "eth0", "x")).unwrap();
    c.ctl.tick();
    let before = (destinations(&a, "h1"), destinations(&c, "h1"));
    let placed = |h: &Harness| -> Vec<(String, Option<String>)> {
        h.ctl
            .sessions()
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.owner))
            .collect()
    };
    let owners = placed(&a);

    pg.stop();
    clock.advance(Duration::from_secs(30));
    a.ctl.tick();
    c.ctl.tick();
    for h in [&a, &c] {
        assert_eq!(h.ctl.control_state(), ControlState::Disconnected);
        assert!(
            matches!(h.ctl.sessions(), Err(Refused::Unavailable(m)) if m.starts_with("control: disconnected"))
        );
    }
    assert_eq!(
        (destinations(&a, "h1"), destinations(&c, "h1")),
        before,
        "probes are served"
    );

    pg.restart();
    // The store tries again at most once a second.
    std::thread::sleep(crate::store::postgres::RECONNECT_EVERY + Duration::from_millis(100));
    // a is back first: b's lease looks long dead, but a has not been connected for a lease.
    a.ctl.tick();
    assert_eq!(a.ctl.control_state(), ControlState::Connected);
    assert_eq!(placed(&a), owners);
    c.ctl.tick();
    for _ in 0..8 {
        clock.advance(Duration::from_secs(1));
        a.ctl.tick();
        c.ctl.tick();
    }
    assert_eq!(placed(&a), owners, "nothing moved");
    assert_eq!(c.ctl.control_state(), ControlState::Connected);
    // Changes go through again.
    a.ctl.create_session(&ops, create("z")).unwrap();
}

/// Peer tokens: a viewer on the routes that take them, refused elsewhere and for changes,
/// useless after their seconds, and unforgeable without the fleet's secret.
#[test]
fn peer_tokens_read_query_parts_and_streams_only() {
    let h = harness("peer-tokens", FakeEngine::default());
    let t = h.ctl.peer_token();
    assert!(t.starts_with(crate::peer::PREFIX));
    let c = h
        .ctl
        .authenticate_as(Some(&t), false, Need::Read, true)
        .unwrap();
    assert_eq!((c.role, c.peer.as_deref()), (Role::Viewer, Some("c1")));
    assert!(matches!(
        h.ctl.authenticate(Some(&t), false, Need::Read),
        Err(Refused::Unauthorized(_))
    ));
    assert!(matches!(
        h.ctl.authenticate_as(Some(&t), false, Need::Change, true),
        Err(Refused::Forbidden(_))
    ));
    // Signed with another secret (another fleet, or someone guessing): refused.
    let other = crate::peer::PeerKey::derive(b"not this fleet's secret at all!!");
    let forged = other.sign("c1", T0_NS);
    assert!(matches!(
        h.ctl
            .authenticate_as(Some(&forged), false, Need::Read, true),
        Err(Refused::Unauthorized(_))
    ));
    // After its seconds: refused.
    h.clock
        .wall_ns
        .fetch_add(crate::peer::TTL.as_nanos() as u64 + 1, Ordering::Relaxed);
    assert!(matches!(
        h.ctl.authenticate_as(Some(&t), false, Need::Read, true),
        Err(Refused::Unauthorized(m)) if m.contains("expired")
    ));
}
