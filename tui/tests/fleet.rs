//! `tapwire top --fleet` driven through `tapwire_tui::fleet::start` with a fake fleet (the
//! fixture's three collectors), a fake opener for the per-collector view, scripted keys and a
//! fake clock, rendered into ratatui's `TestBackend`; screens are insta snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::KeyCode;
use tapwire_api_types::control::{ControlState, Fleet};
use tapwire_api_types::{Action, ControlInfo, Snapshot};
use tapwire_tui::client::{Actions, Source};
use tapwire_tui::input::{FakeClock, Script};
use tapwire_tui::{Options, fixture, fleet};

/// What the fake fleet did: polls of the fleet, API URLs opened, polls of the opened view.
#[derive(Default)]
struct Seen {
    fleet_polls: u64,
    opened: Vec<String>,
    session_polls: u64,
}

/// Runs the fleet UI on a `width`x`height` TestBackend; `fleet` gives the fleet at poll `n`.
fn run(
    seen: &Rc<RefCell<Seen>>,
    width: u16,
    height: u16,
    fleet: impl Fn(u64) -> Result<Fleet, String> + 'static,
    script: impl FnOnce(Script) -> Script,
) -> Terminal<TestBackend> {
    let clock = FakeClock::default();
    let mut events = script(Script::new(clock.clone()));
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let s = seen.clone();
    let mut source = move || {
        let n = s.borrow().fleet_polls;
        s.borrow_mut().fleet_polls += 1;
        fleet(n)
    };
    let s = seen.clone();
    let mut opener = move |url: &str| -> (Box<dyn Source>, Box<dyn Actions>) {
        s.borrow_mut().opened.push(url.to_string());
        let polls = s.clone();
        let source = move || -> Result<Arc<Snapshot>, String> {
            let n = polls.borrow().session_polls;
            polls.borrow_mut().session_polls += 1;
            Ok(Arc::new(member_snapshot(n)))
        };
        let actions = |_: &str, _: Action| -> Result<String, String> { Err("no".into()) };
        (Box::new(source), Box::new(actions))
    };
    fleet::start(
        &mut terminal,
        &mut source,
        &mut opener,
        &mut events,
        &clock,
        Options::new("http://127.0.0.1:9750"),
    )
    .unwrap();
    assert_eq!(events.remaining(), 0, "the script quit early");
    terminal
}

/// The fixture collector as a member of a fleet whose database is away.
fn member_snapshot(t: u64) -> Snapshot {
    let mut s = fixture::snapshot(t);
    s.control = Some(ControlInfo {
        state: ControlState::Disconnected,
        collector: "edge-b".into(),
    });
    s
}

fn screen(t: &Terminal<TestBackend>) -> String {
    let b = t.backend().buffer();
    let mut s = String::new();
    for y in 0..b.area.height {
        for x in 0..b.area.width {
            s.push_str(b[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

/// The table row of collector `name`.
fn row<'a>(screen: &'a str, name: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(&format!(" {name} ")) && l.contains("https://"))
        .unwrap_or_else(|| panic!("no row of {name} in\n{screen}"))
}

#[test]
fn fleet_view_lists_every_collector_with_state_lease_sessions_rates_and_api() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        12,
        |n| Ok(fixture::fleet(n)),
        |s| s.idle(3).key(KeyCode::Char('q')),
    );
    assert_eq!(seen.borrow().fleet_polls, 4, "it polls once per interval");
    let sc = screen(&t);
    let names: Vec<&str> = sc
        .lines()
        .filter(|l| l.contains("https://"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("edge-")))
        .collect();
    assert_eq!(names, ["edge-a", "edge-b", "edge-c"], "by name:\n{sc}");
    let c = row(&sc, "edge-c");
    assert!(
        c.contains("DEAD") && c.contains("12.0s"),
        "dead for 12 s: {c}"
    );
    let a = row(&sc, "edge-a");
    assert!(
        a.contains("live") && a.contains("https://10.0.9.1:9760"),
        "{a}"
    );
    assert!(line_with(&sc, "answered by").contains("2 live · 1 dead · 4 sessions"));
    assert!(line_with(&sc, "edge-a sessions:").contains("edge-sw1, lab-tap"));
    insta::assert_snapshot!(t.backend());
}

#[test]
fn enter_opens_the_selected_collector_and_esc_comes_back_to_the_fleet() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        30,
        |n| Ok(fixture::fleet(n)),
        |s| {
            s.idle(1)
                .key(KeyCode::Down)
                .key(KeyCode::Enter)
                .idle(2)
                .key(KeyCode::Esc)
                .idle(1)
                .key(KeyCode::Char('q'))
        },
    );
    let seen = seen.borrow();
    assert_eq!(seen.opened, ["https://10.0.9.2:9760"], "edge-b's API");
    assert_eq!(
        seen.session_polls, 3,
        "its sessions were polled while shown"
    );
    // Back in the fleet view, polled again on return.
    assert_eq!(seen.fleet_polls, 4);
    let sc = screen(&t);
    assert!(sc.contains("tapwire fleet"), "{sc}");
    assert!(line_with(&sc, "edge-b sessions:").contains("dc1-span"));
}

#[test]
fn the_collectors_view_names_it_and_says_its_control_is_disconnected() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        30,
        |n| Ok(fixture::fleet(n)),
        |s| {
            s.idle(1)
                .key(KeyCode::Down)
                .key(KeyCode::Enter)
                .idle(1)
                .key(KeyCode::Char('q'))
        },
    );
    let sc = screen(&t);
    let header = sc.lines().next().unwrap();
    assert!(
        header.contains("edge-b https://10.0.9.2:9760")
            && header.contains("collector edge-b  control: disconnected"),
        "{header}"
    );
    assert!(sc.contains("Esc fleet"), "the way back is shown:\n{sc}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn a_collector_that_stops_answering_keeps_the_last_fleet_on_screen() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        12,
        |n| {
            if n < 2 {
                Ok(fixture::fleet(n))
            } else {
                Err("connection refused".into())
            }
        },
        |s| s.idle(4).key(KeyCode::Down).key(KeyCode::Char('q')),
    );
    let sc = screen(&t);
    assert!(
        line_with(&sc, "tapwire fleet").contains("DISCONNECTED: connection refused"),
        "{sc}"
    );
    assert!(row(&sc, "edge-c").contains("DEAD"), "{sc}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn a_fleet_whose_database_is_away_says_so() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        12,
        |n| {
            let mut f = fixture::fleet(n);
            f.control = ControlState::Disconnected;
            Ok(f)
        },
        |s| s.idle(1).key(KeyCode::Char('q')),
    );
    let sc = screen(&t);
    assert!(
        line_with(&sc, "answered by edge-a").contains("control: disconnected"),
        "{sc}"
    );
}

#[test]
fn enter_on_a_collector_without_an_api_url_says_why_and_stays() {
    let seen = Rc::default();
    let t = run(
        &seen,
        120,
        12,
        |n| {
            let mut f = fixture::fleet(n);
            for c in &mut f.collectors {
                c.api_url = None;
            }
            Ok(f)
        },
        |s| s.idle(1).key(KeyCode::Enter).key(KeyCode::Char('q')),
    );
    assert!(seen.borrow().opened.is_empty());
    let sc = screen(&t);
    assert!(sc.contains("collector edge-a has no API URL"), "{sc}");
}
