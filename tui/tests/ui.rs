//! The whole UI driven through its one entry point, `tapwire_tui::start`, with a fake stats
//! source (the fixture collector, one second per poll), fake actions, scripted keys and a fake
//! clock, rendered into ratatui's `TestBackend`. The screens are insta snapshots in
//! `tests/snapshots/`; the behaviour tests check what reached the action sink.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, KeyCode};
use tapwire_api_types::{Action, SessionState, Snapshot};
use tapwire_tui::input::{FakeClock, Script};
use tapwire_tui::logs::LogBuffer;
use tapwire_tui::state::App;
use tapwire_tui::{Options, RunStats, fixture, start};

/// The fake collector: the fixture, advanced one second per poll, with actions applied.
#[derive(Default)]
struct Fake {
    polls: u64,
    disabled: BTreeSet<String>,
    actions: Vec<(String, Action)>,
    /// Polls after which the source fails (the collector went away), and its error.
    fail_from: Option<(u64, String)>,
    /// The same snapshot every time (nothing changes).
    frozen: Option<Arc<Snapshot>>,
    /// Saves asked for: session and minutes.
    saves: Vec<(String, u32)>,
}

fn source(fake: &Rc<RefCell<Fake>>) -> impl FnMut() -> Result<Arc<Snapshot>, String> {
    let fake = fake.clone();
    move || {
        let mut f = fake.borrow_mut();
        f.polls += 1;
        if let Some((from, e)) = &f.fail_from
            && f.polls > *from
        {
            return Err(e.clone());
        }
        if let Some(s) = &f.frozen {
            return Ok(s.clone());
        }
        let mut s = fixture::snapshot(f.polls - 1);
        for x in &mut s.sessions {
            if f.disabled.contains(&x.name) {
                x.enabled = false;
                x.state = SessionState::Disabled;
            }
        }
        Ok(Arc::new(s))
    }
}

fn actions(fake: &Rc<RefCell<Fake>>) -> impl FnMut(&str, Action) -> Result<String, String> {
    let fake = fake.clone();
    move |session, action| {
        let mut f = fake.borrow_mut();
        f.actions.push((session.to_string(), action));
        match action {
            Action::Disable => {
                f.disabled.insert(session.to_string());
                Ok(format!("session {session} disabled"))
            }
            Action::Enable => {
                f.disabled.remove(session);
                Ok(format!("session {session} enabled"))
            }
            Action::Rotate => Ok(format!("session {session} rotated")),
        }
    }
}

/// The fake collector's actions, with saves ("save last N minutes").
struct FakeActions<F>(Rc<RefCell<Fake>>, F);

impl<F: FnMut(&str, Action) -> Result<String, String>> tapwire_tui::Actions for FakeActions<F> {
    fn act(&mut self, session: &str, action: Action) -> Result<String, String> {
        (self.1)(session, action)
    }

    fn save(&mut self, session: &str, minutes: u32) -> Result<String, String> {
        self.0
            .borrow_mut()
            .saves
            .push((session.to_string(), minutes));
        Ok(format!(
            "saved 1234 packets of the last {minutes} min of {session} to /var/lib/tapwire/saved/{session}_last{minutes}m_20261206T081500.000Z.pcapng"
        ))
    }
}

/// Runs the UI on a `width`x`height` TestBackend with the keys `script` adds; returns the
/// terminal (its buffer is the last frame) and the run's counters.
fn run(
    fake: &Rc<RefCell<Fake>>,
    width: u16,
    height: u16,
    script: impl FnOnce(Script) -> Script,
) -> (Terminal<TestBackend>, RunStats) {
    run_with(
        fake,
        width,
        height,
        Options::new("http://127.0.0.1:9750"),
        script,
    )
}

/// [`run`] with the UI's options given (the inline UI of `collect`, a log pane).
fn run_with(
    fake: &Rc<RefCell<Fake>>,
    width: u16,
    height: u16,
    opts: Options,
    script: impl FnOnce(Script) -> Script,
) -> (Terminal<TestBackend>, RunStats) {
    let clock = FakeClock::default();
    let mut events = script(Script::new(clock.clone()));
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let stats = start(
        &mut terminal,
        &mut source(fake),
        &mut FakeActions(fake.clone(), actions(fake)),
        &mut events,
        &clock,
        opts,
    )
    .unwrap();
    assert_eq!(events.remaining(), 0, "the script quit early");
    (terminal, stats)
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

/// The screen line that starts (after the selection marker) with `prefix`.
fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

#[test]
fn main_view() {
    let fake = Rc::default();
    // A minute of polls, so that rates and charts have history.
    let (t, stats) = run(&fake, 120, 40, |s| s.idle(60).key(KeyCode::Char('q')));
    assert_eq!(stats.n_polls, 61);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn narrow_80x24() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 80, 24, |s| s.idle(30).key(KeyCode::Char('q')));
    let sc = screen(&t);
    for name in [
        "edge-sw1",
        "10.0.0.7_vxlan_100",
        "dc2-span",
        "lab-tap",
        "core-gw",
    ] {
        assert!(sc.contains(name), "{name} missing at 80x24:\n{sc}");
    }
    insta::assert_snapshot!(t.backend());
}

#[test]
fn expanded_view() {
    let fake = Rc::default();
    // Sort by packets (s from SESSION: STATE, SRC, PKT/S, ...), then show every source.
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(20).key(KeyCode::Char('x')).key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    assert!(line_with(&sc, "└ 10.0.0.5 erspan-ii 42").contains("17"));
    insta::assert_snapshot!(t.backend());
}

#[test]
fn detail_pane_of_a_session_with_everything() {
    let fake = Rc::default();
    // edge-sw1 is the fourth row by name; two minutes of history for the charts.
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(120).keys("jjj").key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    assert!(sc.contains("edge-sw1 · receiving · 2 sources"), "{sc}");
    assert!(sc.contains("192.0.2.10"), "top talkers: {sc}");
    assert!(
        sc.contains("in 3.86M / out 2.58M") || sc.contains("in "),
        "{sc}"
    );
    insta::assert_snapshot!(t.backend());
}

/// A source whose GRE checksums did not verify says so in the detail pane; the others do not.
#[test]
fn detail_pane_names_bad_gre_checksums() {
    let mut snap = fixture::snapshot(0);
    let edge = snap
        .sessions
        .iter_mut()
        .find(|s| s.name == "edge-sw1")
        .unwrap();
    edge.sources[1].gre_checksum_bad = 1234;
    edge.gre_checksum_bad = 1234;
    let fake = Rc::new(RefCell::new(Fake {
        frozen: Some(Arc::new(snap)),
        ..Fake::default()
    }));
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(2).keys("jjj").key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    assert!(sc.contains("edge-sw1 · "), "edge-sw1 selected: {sc}");
    let lines: Vec<&str> = sc
        .lines()
        .filter(|l| l.contains("bad GRE checksums"))
        .collect();
    assert_eq!(lines.len(), 1, "{sc}");
    assert!(
        lines[0].contains("10.0.0.6 erspan-iii 42: 1234 bad GRE checksums (frames kept)"),
        "{}",
        lines[0]
    );
}

#[test]
fn help_overlay() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(2).key(KeyCode::Char('?')).key(KeyCode::Char('q'))
    });
    insta::assert_snapshot!(t.backend());
}

#[test]
fn help_overlay_fits_80x24() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 80, 24, |s| {
        s.idle(2).key(KeyCode::Char('?')).key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    for (keys, what) in tapwire_tui::render::keys(&App::new("")) {
        assert!(
            sc.contains(keys) && sc.contains(what),
            "help at 80x24 lacks {keys:?} {what:?}:\n{sc}"
        );
    }
}

/// The help says what each key does where it runs: `L`, `q` and Ctrl-C differ between
/// `tapwire top` and the UI inside `tapwire collect`.
#[test]
fn help_overlay_says_what_each_key_does_in_top_and_in_collect() {
    let help = |opts: Options| {
        let (t, _) = run_with(&Rc::default(), 120, 40, opts, |s| {
            s.idle(2).key(KeyCode::Char('?')).key(KeyCode::Char('q'))
        });
        screen(&t)
    };
    let top = help(Options::new("x"));
    let mut inline = Options::new("in-process");
    inline.inline = true;
    inline.logs = Some(LogBuffer::new(10));
    let collect = help(inline);
    for (sc, key, what) in [
        (&top, "L", "no log pane here: see the collector's log"),
        (&top, "q", "quit (the collector keeps running)"),
        (&top, "Ctrl-C", "quit"),
        (&collect, "L", "log pane on / off"),
        (&collect, "q", "quit: stops the collector, files closed"),
        (&collect, "Ctrl-C", "stop the collector"),
    ] {
        let line = line_with(sc, &format!(" {key:<19}{what}"));
        assert!(line.contains(what), "{line}");
    }
}

/// `L` in `tapwire top`, which has no log pane, says why instead of doing nothing.
#[test]
fn l_in_top_says_why_there_is_no_log_pane() {
    let (t, _) = run(&Rc::default(), 120, 40, |s| {
        s.idle(2).key(KeyCode::Char('L')).key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    assert!(
        line_with(&sc, "no log pane in tapwire top")
            .contains("the collector's log is in its --log-file or journal"),
        "{sc}"
    );
}

/// At 45 rows every line is used: the table takes the lines it needs, the detail pane the
/// rest (taller charts, more sources and talkers), none left blank.
#[test]
fn tall_terminal_45_rows() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 120, 45, |s| {
        s.idle(60).keys("jjj").key(KeyCode::Char('q'))
    });
    let sc = screen(&t);
    let blank: Vec<usize> = sc
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim().is_empty())
        .map(|(i, _)| i)
        .collect();
    assert!(blank.is_empty(), "blank lines {blank:?}:\n{sc}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn disconnected_keeps_the_last_data_and_says_so() {
    let fake = Rc::new(RefCell::new(Fake {
        fail_from: Some((10, "connection refused".into())),
        ..Fake::default()
    }));
    let (t, _) = run(&fake, 120, 40, |s| s.idle(24).key(KeyCode::Char('q')));
    let sc = screen(&t);
    assert!(
        sc.contains(
            "DISCONNECTED: connection refused · retrying every 1s · for 14s · data 15s old"
        ),
        "{sc}"
    );
    insta::assert_snapshot!(t.backend());
}

#[test]
fn never_connected() {
    let fake = Rc::new(RefCell::new(Fake {
        fail_from: Some((0, "connection refused".into())),
        ..Fake::default()
    }));
    let (t, _) = run(&fake, 80, 24, |s| s.idle(3).key(KeyCode::Char('q')));
    insta::assert_snapshot!(t.backend());
}

#[test]
fn reconnects_when_the_collector_is_back() {
    let fake = Rc::new(RefCell::new(Fake {
        fail_from: Some((3, "connection refused".into())),
        ..Fake::default()
    }));
    let f2 = fake.clone();
    let clock = FakeClock::default();
    let mut events = Script::new(clock.clone()).idle(5);
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let mut src = source(&fake);
    // Five failing polls, then the collector answers again.
    let mut flaky = move || {
        let r = src();
        if f2.borrow().polls == 7 {
            f2.borrow_mut().fail_from = None;
        }
        r
    };
    events = events.idle(3).key(KeyCode::Char('q'));
    start(
        &mut terminal,
        &mut flaky,
        &mut actions(&fake),
        &mut events,
        &clock,
        Options::new("x"),
    )
    .unwrap();
    let sc = screen(&terminal);
    assert!(sc.contains("● connected"), "{sc}");
    assert!(!sc.contains("DISCONNECTED"), "{sc}");
}

#[test]
fn disable_asks_then_acts_and_the_session_shows_disabled() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(3)
            .keys("/edge")
            .key(KeyCode::Enter)
            .key(KeyCode::Char('d'))
            .idle(1)
            .key(KeyCode::Char('y'))
            .idle(2)
            .key(KeyCode::Char('q'))
    });
    let f: &RefCell<Fake> = &fake;
    assert_eq!(
        f.borrow().actions,
        [("edge-sw1".to_string(), Action::Disable)]
    );
    let sc = screen(&t);
    assert!(line_with(&sc, "▸ edge-sw1").contains("disabled"), "{sc}");
}

#[test]
fn confirm_dialog() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 80, 24, |s| {
        s.idle(2)
            .keys("jjj")
            .key(KeyCode::Char('d'))
            .key(KeyCode::Char('q'))
            .key(KeyCode::Char('q'))
    });
    let f: &RefCell<Fake> = &fake;
    assert!(f.borrow().actions.is_empty(), "q in the dialog is no");
    // The last frame is drawn after the dialog was answered; ask again to snapshot it.
    let (t2, _) = run(&fake, 80, 24, |s| {
        s.idle(2)
            .keys("jjj")
            .key(KeyCode::Char('r'))
            .event(Event::FocusGained)
            .ctrl('c')
    });
    drop(t);
    let sc = screen(&t2);
    assert!(sc.contains("Rotate session edge-sw1's file now?"), "{sc}");
    insta::assert_snapshot!(t2.backend());
}

#[test]
fn no_answers_no_action_and_enable_needs_no_question() {
    let fake = Rc::default();
    run(&fake, 120, 40, |s| {
        s.idle(2)
            .keys("/edge")
            .key(KeyCode::Enter)
            .key(KeyCode::Char('d'))
            .key(KeyCode::Char('n'))
            .key(KeyCode::Char('r'))
            .key(KeyCode::Esc)
            .key(KeyCode::Char('e'))
            .key(KeyCode::Char('r'))
            .key(KeyCode::Char('y'))
            .key(KeyCode::Char('q'))
    });
    let f: &RefCell<Fake> = &fake;
    assert_eq!(
        f.borrow().actions,
        [
            ("edge-sw1".to_string(), Action::Enable),
            ("edge-sw1".to_string(), Action::Rotate)
        ]
    );
}

#[test]
fn redraws_only_on_change_or_input() {
    let fake = Rc::new(RefCell::new(Fake {
        frozen: Some(Arc::new(fixture::snapshot(0))),
        ..Fake::default()
    }));
    // Ten polls of the same snapshot: one draw. Then a key and a resize: one draw each.
    let (_, stats) = run(&fake, 120, 40, |s| {
        s.idle(10)
            .key(KeyCode::Down)
            .event(Event::Resize(120, 40))
            .event(Event::FocusLost)
            .key(KeyCode::Char('q'))
    });
    assert_eq!(stats.n_polls, 11);
    assert_eq!(stats.n_draws, 3, "{stats:?}");

    // A changing snapshot draws once per poll.
    let fake = Rc::default();
    let (_, stats) = run(&fake, 120, 40, |s| s.idle(10).key(KeyCode::Char('q')));
    assert_eq!((stats.n_polls, stats.n_draws), (11, 11));
}

/// The session detail offers "save last N minutes": `w` asks how many (5 first), Enter asks
/// the collector, and the footer shows the path of the file it wrote.
#[test]
fn save_last_minutes_from_the_session_detail() {
    let fake = Rc::default();
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(2)
            .keys("jjj")
            .key(KeyCode::Char('w'))
            .key(KeyCode::Backspace)
            .keys("15")
            .event(Event::FocusGained)
            .ctrl('c')
    });
    let sc = screen(&t);
    assert!(sc.contains("w save the last N minutes to a file"), "{sc}");
    assert!(sc.contains("Save the last minutes of edge-sw1"), "{sc}");
    assert!(sc.contains("Minutes: 15"), "{sc}");
    let f: &RefCell<Fake> = &fake;
    assert!(f.borrow().saves.is_empty(), "nothing saved before Enter");
    insta::assert_snapshot!(t.backend());
    let (t, _) = run(&fake, 120, 40, |s| {
        s.idle(2)
            .keys("jjj")
            .key(KeyCode::Char('w'))
            .key(KeyCode::Enter)
            .event(Event::FocusGained)
            .ctrl('c')
    });
    assert_eq!(f.borrow().saves, [("edge-sw1".to_string(), 5)]);
    let sc = screen(&t);
    assert!(
        line_with(&sc, "saved 1234 packets")
            .contains("/var/lib/tapwire/saved/edge-sw1_last5m_20261206T081500.000Z.pcapng"),
        "{sc}"
    );
}
