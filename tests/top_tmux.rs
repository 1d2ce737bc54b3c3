//! `tapwire top` and the inline UI of `tapwire collect` on a real terminal (tmux), against a
//! real collector in its own network namespace receiving real mirrored traffic from a scapy
//! sender in another namespace. The screen is read with `tmux capture-pane`; keys are sent with
//! `tmux send-keys`; the sender's own summary and the collector's API are the oracles for the
//! numbers on screen, tshark/capinfos for the files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tapwire_tests::collector::Collector;
use tapwire_tests::netns::{Lab, poll_until};
use tapwire_tests::oracle::Key;
use tapwire_tests::senders::{self, MirrorSend, Sent};
use tapwire_tests::tmux::{Tmux, row};
use tapwire_tests::{bin, validate_capture};

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'),
    }
}

/// The auto-discovered session name of a source: `<src>_<kind>_<id>`.
fn session_name(k: &Key) -> String {
    format!("{}_{}_{}", k.0, k.1, k.2)
}

/// The value of numeric column `title` in `line`: numbers are right-aligned under their
/// right-aligned titles, so the cell is the word of `line` that ends where the title ends.
fn cell(screen: &str, line: &str, title: &str) -> Option<String> {
    let header = screen.lines().find(|l| l.starts_with("SESSION"))?;
    let mut end = None;
    let mut col = 0;
    for word in header.split(' ') {
        let n = word.chars().count();
        if !word.is_empty() && word.trim_end_matches(['▲', '▼']) == title {
            end = Some(col + n);
        }
        col += n + 1;
    }
    let end = end?;
    let chars: Vec<char> = line.chars().collect();
    if chars.get(end).is_some_and(|c| *c != ' ') {
        return None;
    }
    let before: String = chars.get(..end.min(chars.len()))?.iter().collect();
    before.split_whitespace().last().map(str::to_string)
}

/// The session object named `name` in an API answer.
fn api_session<'a>(api: &'a Value, name: &str) -> &'a Value {
    api["sessions"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no session {name} in {api}"))
}

/// Three sources (ERSPAN II from .11 and .15, VXLAN from .14), `count` packets each.
fn send(lab: &Lab, tag: &str, start: u32, count: u32) -> Sent {
    let opts = MirrorSend {
        families: "4".into(),
        kinds: "erspan-ii,vxlan".into(),
        count,
        start,
        ..MirrorSend::default()
    };
    let pcap = lab.dir().join(format!("sent-{tag}.pcap"));
    let sent = senders::send_mirror(lab, lab.ns("snd"), &opts, &pcap, false);
    assert_eq!(sent.sources.len(), 3, "{sent:?}");
    sent
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// The thread of process `pid` named `name`, as `/proc/PID/task/TID`.
fn thread_dir(pid: u32, name: &str) -> String {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == name))
        .unwrap_or_else(|| panic!("no thread {name} in process {pid}"))
        .display()
        .to_string()
}

/// The `utime + stime` of a `/proc/.../stat` file.
fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).expect("proc stat");
    // Fields after the parenthesised command name: utime is the 14th field, stime the 15th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_s() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn top_shows_live_sessions_and_disables_one_through_the_api() {
    let lab = Lab::new("top");
    let out = lab.dir().join("captures");
    let col = lab.ns("col").to_string();
    let c = Collector::start(&lab, &col, &out, &[]);
    let tapwire = bin("tapwire");
    let tmux = Tmux::start(
        lab.dir(),
        "top",
        120,
        40,
        &[
            "ip",
            "netns",
            "exec",
            &col,
            tapwire.to_str().unwrap(),
            "top",
        ],
    );
    tmux.wait_for("the UI, connected", Duration::from_secs(10), |s| {
        s.contains("● connected") && s.contains("no sessions yet")
    });

    // Real traffic: every session's row shows exactly what the sender sent.
    let first = send(&lab, "first", 0, 40);
    let names: Vec<String> = first.sources.keys().map(session_name).collect();
    let screen = tmux.wait_for(
        "three session rows with the sent packet counts",
        Duration::from_secs(10),
        |s| {
            names
                .iter()
                .all(|n| row(s, n).and_then(|r| cell(s, r, "PKTS")) == Some("40".into()))
        },
    );
    for n in &names {
        let r = row(&screen, n).unwrap();
        assert!(
            r.contains("receiving") || r.contains("idle"),
            "{n} should be receiving or idle: {r}"
        );
        assert_eq!(cell(&screen, r, "LOST").as_deref(), Some("0"), "{r}");
        assert_eq!(cell(&screen, r, "DROP").as_deref(), Some("0"), "{r}");
        assert_eq!(cell(&screen, r, "SRC").as_deref(), Some("1"), "{r}");
    }
    assert!(
        screen
            .lines()
            .next()
            .unwrap()
            .contains("tapwire http://127.0.0.1:9750"),
        "{screen}"
    );

    // Steady state: the UI polls once a second and redraws then. Measure its CPU.
    let pid = tmux.command_pid();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(5));
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_s();
    let share = used / t0.elapsed().as_secs_f64();
    eprintln!(
        "tapwire top used {used:.2} s of CPU in 5 s: {:.1} % of a core",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "tapwire top uses {:.1} % of a core",
        share * 100.0
    );

    // Disable one session: filter to it, d, the question, y.
    let victim = names
        .iter()
        .find(|n| n.contains("erspan-ii"))
        .unwrap()
        .clone();
    tmux.key("/");
    tmux.type_text(&victim);
    tmux.key("Enter");
    tmux.wait_for("the filter", Duration::from_secs(5), |s| {
        names
            .iter()
            .all(|n| (row(s, n).is_some()) == (*n == victim))
    });
    tmux.key("d");
    tmux.wait_for("the question", Duration::from_secs(5), |s| {
        s.contains(&format!("Disable session {victim}?"))
    });
    tmux.key("y");
    tmux.wait_for("the session shown disabled", Duration::from_secs(5), |s| {
        row(s, &victim).is_some_and(|r| r.contains("disabled"))
            && s.contains(&format!("session {victim} disabled"))
    });

    // More traffic: the disabled session counts it as dropped by policy, the others write it.
    let second = send(&lab, "second", 40, 25);
    let screen = tmux.wait_for(
        "the disabled session's drops",
        Duration::from_secs(10),
        |s| {
            row(s, &victim).is_some_and(|r| {
                cell(s, r, "PKTS").as_deref() == Some("65")
                    && cell(s, r, "DROP").as_deref() == Some("25")
            }) && s.contains("dropped disabled 25")
        },
    );
    assert!(row(&screen, &victim).unwrap().contains("disabled"));
    let api = c.wait_written(Duration::from_secs(5));
    let v = api_session(&api, &victim);
    assert_eq!(v["state"], "disabled", "{v}");
    assert_eq!(v["drops"]["disabled"], 25, "{v}");
    assert_eq!(v["written"], 40, "{v}");
    for n in names.iter().filter(|n| **n != victim) {
        let s = api_session(&api, n);
        assert_eq!(s["drops"]["disabled"], 0, "{s}");
        assert_eq!(s["written"], 65, "{s}");
    }
    assert_eq!(second.total(), 75);

    // Esc clears the filter: every session is back; q quits with status 0.
    tmux.key("Escape");
    tmux.wait_for("every row", Duration::from_secs(5), |s| {
        names.iter().all(|n| row(s, n).is_some())
    });
    tmux.key("q");
    assert_eq!(tmux.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn top_says_disconnected_and_reconnects_when_the_collector_restarts() {
    let lab = Lab::new("top-reconnect");
    let out = lab.dir().join("captures");
    let col = lab.ns("col").to_string();
    let mut c = Collector::start(&lab, &col, &out, &[]);
    let tapwire = bin("tapwire");
    let tmux = Tmux::start(
        lab.dir(),
        "reconnect",
        80,
        24,
        &[
            "ip",
            "netns",
            "exec",
            &col,
            tapwire.to_str().unwrap(),
            "top",
        ],
    );
    let sent = send(&lab, "before", 0, 10);
    let name = session_name(sent.sources.keys().next().unwrap());
    tmux.wait_for("a session row", Duration::from_secs(10), |s| {
        row(s, &name).is_some_and(|r| cell(s, r, "PKTS").as_deref() == Some("10"))
    });

    c.stop("TERM", Duration::from_secs(10));
    let screen = tmux.wait_for("disconnected", Duration::from_secs(10), |s| {
        s.contains("DISCONNECTED: connection refused")
    });
    // The last data stays on screen, marked stale.
    assert!(row(&screen, &name).is_some(), "{screen}");

    let _c2 = Collector::start(&lab, &col, &out, &[]);
    let screen = tmux.wait_for("connected again", Duration::from_secs(10), |s| {
        s.contains("● connected")
    });
    assert!(!screen.contains("DISCONNECTED"), "{screen}");
    // A new collector: no sessions yet.
    tmux.wait_for(
        "the new collector's empty table",
        Duration::from_secs(5),
        |s| s.contains("no sessions yet"),
    );
    tmux.key("q");
    assert_eq!(tmux.wait_exit(Duration::from_secs(5)), 0);
}

#[test]
fn collect_on_a_terminal_shows_the_ui_keeps_logs_in_their_pane_and_q_stops_cleanly() {
    let lab = Lab::new("collect-ui");
    let out = lab.dir().join("captures");
    let col = lab.ns("col").to_string();
    let tapwire = bin("tapwire");
    let tmux = Tmux::start(
        lab.dir(),
        "collect",
        120,
        40,
        &[
            "ip",
            "netns",
            "exec",
            &col,
            tapwire.to_str().unwrap(),
            "collect",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    tmux.wait_for("the inline UI", Duration::from_secs(15), |s| {
        s.starts_with(" tapwire in-process") && s.contains("● connected")
    });
    let sent = send(&lab, "inline", 0, 30);
    let names: Vec<String> = sent.sources.keys().map(session_name).collect();
    let screen = tmux.wait_for("the sessions", Duration::from_secs(10), |s| {
        names
            .iter()
            .all(|n| row(s, n).and_then(|r| cell(s, r, "PKTS")) == Some("30".into()))
    });
    // The UI thread's share of a core, polling and redrawing once a second.
    let ui = thread_dir(tmux.command_pid(), "tapwire-ui");
    let (t0, c0) = (Instant::now(), stat_ticks(&format!("{ui}/stat")));
    std::thread::sleep(Duration::from_secs(5));
    let used = (stat_ticks(&format!("{ui}/stat")) - c0) as f64 / ticks_per_s();
    let share = used / t0.elapsed().as_secs_f64();
    eprintln!(
        "inline UI thread used {used:.2} s of CPU in 5 s: {:.1} % of a core",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "the inline UI uses {:.1} % of a core",
        share * 100.0
    );

    // New sources were logged: in the log pane only, never over the table.
    let logged: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("new source"))
        .collect();
    assert!(!logged.is_empty(), "no log line in the pane:\n{screen}");
    for l in &logged {
        assert!(
            l.starts_with('│') && l.ends_with('│'),
            "log outside its pane: {l:?}\n{screen}"
        );
    }
    assert!(screen.contains("┌ log (L hides)"), "{screen}");

    // q stops the collector: the UI goes, the last log lines are printed, files are complete.
    tmux.key("q");
    assert_eq!(tmux.wait_exit(Duration::from_secs(10)), 0);
    let after = tmux.screen();
    assert!(after.contains("stopped; files closed"), "{after}");
    for (key, n) in &sent.sources {
        let files =
            tapwire_tests::collector::files_with_prefix(&out, &format!("{}_", session_name(key)));
        assert_eq!(files.len(), 1, "{key:?}: {files:?}");
        assert_eq!(validate_capture(&files[0]), *n, "{}", files[0].display());
    }
    assert!(Path::new(&out).is_dir());
}

#[test]
fn collect_stops_cleanly_when_its_terminal_goes_away() {
    let lab = Lab::new("collect-hup");
    let out = lab.dir().join("captures");
    let col = lab.ns("col").to_string();
    let tapwire = bin("tapwire");
    let log = lab.dir().join("collect.log");
    let tmux = Tmux::start(
        lab.dir(),
        "hup",
        100,
        30,
        &[
            "ip",
            "netns",
            "exec",
            &col,
            tapwire.to_str().unwrap(),
            "collect",
            "--out",
            out.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    tmux.wait_for("the inline UI", Duration::from_secs(15), |s| {
        s.starts_with(" tapwire in-process")
    });
    let sent = send(&lab, "hup", 0, 20);
    let name = session_name(sent.sources.keys().next().unwrap());
    tmux.wait_for("the sessions", Duration::from_secs(10), |s| {
        row(s, &name).is_some_and(|r| cell(s, r, "PKTS").as_deref() == Some("20"))
    });
    // With --log-file there is no log pane and nothing in it on screen.
    assert!(!tmux.screen().contains("┌ log"), "{}", tmux.screen());

    // The terminal goes away: the collector must stop by itself (crossterm alone would spin on
    // the dead terminal forever), with every file complete.
    let pid = tmux.command_pid();
    tmux.hang_up();
    let gone = poll_until(Duration::from_secs(10), || ended(pid).then_some(()));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        gone.is_some(),
        "collect still running after its terminal went away:\n{logged}"
    );
    assert!(logged.contains("the terminal went away"), "{logged}");
    assert!(logged.contains("stopped; files closed"), "{logged}");
    for (key, n) in &sent.sources {
        let files =
            tapwire_tests::collector::files_with_prefix(&out, &format!("{}_", session_name(key)));
        assert_eq!(files.len(), 1, "{key:?}: {files:?}");
        assert_eq!(validate_capture(&files[0]), *n, "{}", files[0].display());
    }
}
