//! The controller on its own: an in-memory SQLite store, a stand-in engine that records what
//! it is given, and a clock the test moves. (The routes, a real engine link and TLS are tested
//! in the collector's `http` module.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tapwire_api_types::Action;
use tapwire_api_types::control::{ProbeReport, Register, Role, SessionCreate};
use tapwire_api_types::probe::{Encapsulation, ProbeStats};
use tapwire_api_types::time::rfc3339_ns;

use super::*;
use crate::auth::Caller;
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
    let dir = std::env::temp_dir().join(format!("tapwire-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
            max_flows_per_probe: 4,
            max_pps_per_probe: None,
            report_interval: Duration::from_secs(1),
        },
        Box::new(SqliteStore::memory().unwrap()),
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

#[test]
fn a_probe_is_online_while_heard_from_within_its_window() {
    let h = harness("online", FakeEngine::default());
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
        .audit(0, 100)
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
