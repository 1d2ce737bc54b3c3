//! The controller on its own: an in-memory SQLite store, a stand-in engine that records what
//! it is given, and a clock the test moves. (The routes, a real engine link and TLS are tested
//! in the collector's `http` module.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tapwire_api_types::Action;
use tapwire_api_types::control::{
    ControlState, ProbeReport, Register, Role, SessionCreate, SessionInfo,
};
use tapwire_api_types::probe::{Encapsulation, ProbeStats};
use tapwire_api_types::time::rfc3339_ns;

use std::sync::Arc;

use super::*;
use crate::auth::{Caller, Need};
use crate::both_backends;
use crate::store::StoredSession;
use crate::store::tests::Backend;

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

impl Clock for Arc<FakeClock> {
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

impl Engine for Arc<FakeEngine> {
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
    ctl: Arc<Controller<Arc<FakeEngine>>>,
    engine: Arc<FakeEngine>,
    clock: Arc<FakeClock>,
}

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
    let engine = Arc::new(engine);
    let mut store = b.open();
    if b.location.is_postgres() && !store.begin().unwrap().has_admin().unwrap() {
        tokens::create_offline(
            &mut *store,
            &Caller::system("ops"),
            "admin",
            Role::Admin,
            T0_NS,
        )
        .unwrap();
    }
    let ctl = Controller::start(
        ControllerOptions {
            db: b.location.clone(),
            name: name.into(),
            advertise: Some(advertise.parse().unwrap()),
            api_url: Some(format!("http://{advertise}:9760")),
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
    Harness { ctl, engine, clock }
}

fn harness(b: &Backend, engine: FakeEngine) -> Harness {
    member(b, "c1", "10.0.0.1", engine, clock())
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

both_backends!(
    definitions_and_audit_rows_are_stamped_with_the_given_clock,
    |b| {
        let h = harness(&b, FakeEngine::default());
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
        let audit = h.ctl.audit(0, 100).unwrap();
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
);

both_backends!(a_probe_is_online_while_heard_from_within_its_window, |b| {
    let h = harness(&b, FakeEngine::default());
    let probe = Caller {
        name: "h1".into(),
        role: Role::Probe,
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
});

both_backends!(the_engine_hears_of_nothing_the_checks_refuse, |b| {
    let h = harness(&b, FakeEngine::default());
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
        .audit(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token.create", "session.create"]);
});

both_backends!(
    a_change_the_engine_refuses_after_the_commit_is_kept_and_reported,
    |b| {
        let h = harness(
            &b,
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
);

// ---------------------------------------------------------------------------------------------
// A fleet: two collectors on one database, one clock.

fn probe_caller(name: &str) -> Caller {
    Caller {
        name: name.into(),
        role: Role::Probe,
    }
}

fn register(h: &Harness, probe: &str) {
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
        register(&a, "h1");
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
            .audit(0, 100)
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
        let before = c.ctl.audit(0, 1000).unwrap().len();
        for _ in 0..10 {
            clock.advance(Duration::from_secs(1));
            a.ctl.tick();
            c.ctl.tick();
        }
        assert_eq!(c.ctl.audit(0, 1000).unwrap().len(), before, "no flapping");
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
    let audit = c.ctl.audit(0, 100).unwrap();
    let revoke = audit.iter().find(|e| e.action == "token.revoke").unwrap();
    assert_eq!(revoke.collector.as_deref(), Some("a"));
});

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
        _dir: tapwire_tests::TempDir::new("outage"),
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
    register(&a, "h1");
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
