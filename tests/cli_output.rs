//! What the commands print: `--help` lists every value of an enumerated flag with its meaning,
//! `--check` shows the names a user types and (for `collect`) what each session gets once the
//! flags are laid over the file, and every printing command of `tapwire` and `tapwire-probe`
//! ends quietly and normally when its reader has gone (`... | head -1`), as coreutils do,
//! instead of panicking on the broken pipe.
//!
//! The closed pipe is made deterministic: the command's stdout is a pipe whose read end is
//! already closed, so its first write fails as a write after `head -1` exited does. Commands
//! that need a collector run against `tapwire collect --db` in a namespace of the test's own.
//! Run as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tapwire_tests::collector::{API, Collector};
use tapwire_tests::netns::{Lab, wait_until};
use tapwire_tests::senders::require_scapy;
use tapwire_tests::{TempDir, bin, run, run_ok, workspace_root};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The help text of `tapwire-probe` or `tapwire collect` has, for `flag`, a line naming each
/// value with its meaning.
fn assert_values(help: &str, flag: &str, values: &[(&str, &str)]) {
    let at = help
        .find(&format!("--{flag} <"))
        .unwrap_or_else(|| panic!("no --{flag} in\n{help}"));
    let section: String = help[at..].lines().take(12).collect::<Vec<_>>().join("\n");
    for (value, meaning) in values {
        assert!(
            section
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("- {value}:")) && l.contains(meaning)),
            "--{flag}: no line \"- {value}: ...{meaning}...\" in\n{section}"
        );
    }
}

#[test]
fn help_lists_every_value_with_its_meaning_and_the_defaults() {
    let probe = run_ok(Command::new(bin("tapwire-probe")).arg("--help"));
    assert_values(
        &probe,
        "direction",
        &[
            ("in", "Received on the interface"),
            ("out", "Sent on the interface"),
            ("both", "Both ways"),
        ],
    );
    assert!(probe.contains("Which packets of the interface to mirror [default: both]"));
    assert_values(
        &probe,
        "encap",
        &[
            ("erspan-ii", "ERSPAN Type II"),
            ("erspan-iii", "ERSPAN Type III"),
            ("gre", "GRE transparent Ethernet bridging"),
        ],
    );
    assert!(probe.contains("Encapsulation towards the collector [default: erspan-ii]"));
    assert_values(
        &probe,
        "erspan-time",
        &[("100ns", "100 ns ticks"), ("ieee1588", "IEEE 1588")],
    );
    let count = probe
        .split("--block-count <N>")
        .nth(1)
        .and_then(|s| s.lines().nth(1))
        .unwrap_or_default();
    assert!(
        count.contains("2 or more") && count.contains("[default: 16]"),
        "--block-count: {count:?}"
    );
    // The range is enforced as a usage error that says why.
    let one = run(Command::new(bin("tapwire-probe")).args([
        "--check",
        "--iface",
        "lo",
        "--collector",
        "127.0.0.1",
        "--session",
        "1",
        "--block-count",
        "1",
    ]));
    assert_eq!(one.status.code(), Some(2));
    assert!(
        text(&one.stderr).contains("at least 2 blocks"),
        "{}",
        text(&one.stderr)
    );

    let collect = run_ok(Command::new(bin("tapwire")).args(["collect", "--help"]));
    assert_values(
        &collect,
        "format",
        &[
            ("pcapng", "An interface per source"),
            ("pcap", "microsecond timestamps"),
            ("pcap-ns", "nanosecond timestamps"),
        ],
    );
    assert!(collect.contains("[default: pcapng, or the format of"));
    assert_values(
        &collect,
        "timestamps",
        &[
            ("input", "the kernel's receive time"),
            ("erspan", "ERSPAN Type III header's"),
        ],
    );
    let decap = run_ok(Command::new(bin("tapwire")).args(["decap", "--help"]));
    assert_values(
        &decap,
        "format",
        &[
            ("pcapng", "An interface per source"),
            ("pcap-ns", "nanosecond"),
        ],
    );
}

/// `tapwire stream` writes pcapng, never JSON: `--json` (which the table-printing client
/// commands take) is not one of its flags, and giving it is a usage error, not ignored.
#[test]
fn stream_refuses_json_as_a_usage_error() {
    let help = run_ok(Command::new(bin("tapwire")).args(["stream", "--help"]));
    assert!(
        help.contains("--controller") && help.contains("--token"),
        "{help}"
    );
    assert!(!help.contains("--json"), "{help}");
    let o = run(Command::new(bin("tapwire")).args(["stream", "web", "--json", "-w", "-"]));
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        text(&o.stderr).contains("unexpected argument '--json'"),
        "{}",
        text(&o.stderr)
    );
    let session = run_ok(Command::new(bin("tapwire")).args(["session", "list", "--help"]));
    assert!(session.contains("--json"), "{session}");
}

/// `tapwire token --db` with a database it cannot open is a bad flag, as for `collect --db`:
/// exit 2 with the problem named, nothing on stdout, no password printed.
#[test]
fn token_with_a_database_it_cannot_open_exits_2() {
    let missing = std::env::temp_dir().join(format!("tapwire-no-such-{}.db", std::process::id()));
    let missing = missing.to_str().unwrap();
    // Port 1 of the loopback: nothing listens, so the connection is refused at once.
    let refused = "postgres://tapwire:s3cret@127.0.0.1:1/tapwire";
    for (db, says) in [(missing, "no such database"), (refused, "127.0.0.1")] {
        for cmd in [
            &["token", "list", "--db", db][..],
            &[
                "token", "create", "--db", db, "--name", "x", "--role", "viewer",
            ],
        ] {
            let o = run(Command::new(bin("tapwire")).args(cmd));
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd:?}: {o:?}");
            assert!(o.stdout.is_empty(), "{o:?}");
            assert!(err.contains(says), "{cmd:?}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
    assert!(
        !std::path::Path::new(missing).exists(),
        "token list created {missing}"
    );
}

#[test]
fn probe_check_prints_the_names_a_user_types() {
    let out = run_ok(Command::new(bin("tapwire-probe")).args([
        "--check",
        "--iface",
        "lo",
        "--direction",
        "both",
        "--encap",
        "erspan-iii",
        "--collector",
        "127.0.0.1",
        "--session",
        "7",
    ]));
    assert!(
        out.starts_with("flow lo: lo both -> 127.0.0.1 erspan-iii session 7,"),
        "{out}"
    );
    let dir = TempDir::new("check-names");
    let cfg = dir.join("probe.toml");
    std::fs::write(
        &cfg,
        "[defaults]\ncollector = \"127.0.0.1\"\n\
         [[flow]]\nname = \"a\"\ninterface = \"lo\"\ndirection = \"in\"\nsession = 1\n\
         [[flow]]\nname = \"b\"\ninterface = \"lo\"\ndirection = \"out\"\nsession = 2\nencap = \"gre\"\n",
    )
    .unwrap();
    let out = run_ok(
        Command::new(bin("tapwire-probe"))
            .args(["--check", "--config"])
            .arg(&cfg),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("flow a: lo in -> 127.0.0.1 erspan-ii session 1,"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("flow b: lo out -> 127.0.0.1 gre session 2,"),
        "{out}"
    );
    assert!(!out.contains("Both") && !out.contains("In ") && !out.contains("Out "));
}

/// `collect --check` shows what each session of the file gets: the flags over
/// `[defaults.files]` where the session sets nothing, the session's own setting where it does.
#[test]
fn collect_check_shows_the_flags_laid_over_the_files_defaults() {
    let dir = TempDir::new("collect-check");
    let cfg = dir.join("collector.toml");
    std::fs::write(
        &cfg,
        r#"
[defaults.files]
format = "pcap"
rotate = { size = "1GiB", interval = "1h" }
max_files = 48

[[session]]
name = "inherits"
sources = [{ kind = "erspan-ii", id = 1 }]

[[session]]
name = "own-rotate"
sources = [{ kind = "erspan-ii", id = 2 }]
files = { rotate = { packets = 5 }, max_files = 3 }
"#,
    )
    .unwrap();
    let out = run_ok(
        Command::new(bin("tapwire"))
            .args(["collect", "--check", "--out"])
            .arg(dir.path())
            .arg("--config")
            .arg(&cfg)
            .args([
                "--rotate-size",
                "100MiB",
                "--format",
                "pcap-ns",
                "--on-finish",
                "gzip \"$1\"",
            ]),
    );
    let block = |name: &str| -> String {
        let at = out
            .find(&format!("session {name}:"))
            .unwrap_or_else(|| panic!("no session {name} in\n{out}"));
        out[at..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The bounds the collector runs with, defaults included.
    for want in [
        "limits: 4096 sources, 256 auto-discovered sessions, idle after 10m, 64 live streams",
        "packet index: on; queries refused above",
        "hooks (by name): none",
        "--input auto: AF_XDP, else a ring, tried at start on each interface holding a listen address",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let inherits = block("inherits");
    for want in [
        "files: pcap-ns in",
        "rotate: size 100.0 MiB, interval 1h",
        "max files: 48",
        "on finish: gzip \"$1\"",
    ] {
        assert!(inherits.contains(want), "{want:?} not in\n{inherits}");
    }
    let own = block("own-rotate");
    for want in [
        "files: pcap-ns in",
        "rotate: packets 5",
        "max files: 3",
        "on finish: gzip \"$1\"",
    ] {
        assert!(own.contains(want), "{want:?} not in\n{own}");
    }
    assert!(!own.contains("100.0 MiB"), "{own}");
}

/// A pipe whose read end is closed: the first write to it fails with EPIPE, as a write after
/// `head -1` has exited does.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

/// Runs `argv` (in namespace `ns` when given) once with its output read, which must be more
/// than nothing, then with stdout a closed pipe: it must end by itself with status 0, say
/// nothing on stderr and not panic.
fn assert_quiet_on_closed_pipe(ns: Option<&str>, argv: &[&str]) {
    assert_quiet_on_closed_pipe_2(ns, argv, argv);
}

/// [`assert_quiet_on_closed_pipe`] for a command that cannot run twice the same (it creates
/// something): `first` with its output read, `second` into the closed pipe.
fn assert_quiet_on_closed_pipe_2(ns: Option<&str>, first: &[&str], second: &[&str]) {
    let cmd = |argv: &[&str]| {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        c.stdin(Stdio::null());
        c
    };
    let read = run(&mut cmd(first));
    assert!(
        !read.stdout.is_empty(),
        "{first:?} printed nothing ({}): {}",
        read.status,
        text(&read.stderr)
    );
    let closed: Output = cmd(second)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = text(&closed.stderr);
    assert!(
        closed.status.success() && err.is_empty(),
        "{second:?} with its reader gone: {} (normally {}), stderr: {err}",
        closed.status,
        read.status
    );
}

#[test]
fn every_printing_command_ends_quietly_when_its_reader_has_gone() {
    require_scapy();
    let mut lab = Lab::empty("cli-pipe");
    let col = lab.add_ns("col");
    let tapwire = bin("tapwire");
    let tw = tapwire.to_str().unwrap();
    let probe = bin("tapwire-probe");
    let out = lab.dir().join("out");
    let db = lab.dir().join("control.db");
    let db_s = db.to_str().unwrap();

    // Offline commands.
    let pcap = lab.dir().join("mirror.pcap");
    run_ok(
        Command::new("/usr/bin/python3")
            .arg(workspace_root().join("tests/senders/send_mirror.py"))
            .args([
                "--dry-run",
                "--iface",
                "lo",
                "--dst-mac",
                "02:00:00:00:00:02",
                "--src4",
                "10.77.0.1x",
                "--dst4",
                "10.77.0.2",
                "--many-sessions",
                "40",
                "--count",
                "2",
                "--pcap",
            ])
            .arg(&pcap),
    );
    let pcap_s = pcap.to_str().unwrap();
    let d1 = lab.dir().join("decap-table");
    let d2 = lab.dir().join("decap-json");
    assert_quiet_on_closed_pipe(None, &[tw, "decap", "--out", d1.to_str().unwrap(), pcap_s]);
    assert_quiet_on_closed_pipe(
        None,
        &[tw, "decap", "--json", "--out", d2.to_str().unwrap(), pcap_s],
    );
    assert_quiet_on_closed_pipe(
        None,
        &[
            tw,
            "collect",
            "--check",
            "--config",
            workspace_root()
                .join("dist/collector.toml")
                .to_str()
                .unwrap(),
        ],
    );
    assert_quiet_on_closed_pipe(
        None,
        &[
            probe.to_str().unwrap(),
            "--check",
            "--config",
            workspace_root().join("dist/probe.toml").to_str().unwrap(),
        ],
    );
    assert_quiet_on_closed_pipe(None, &[tw, "lab", "status", "--name", "nolab"]);
    assert_quiet_on_closed_pipe(None, &[tw, "lab", "status", "--json", "--name", "nolab"]);
    assert_quiet_on_closed_pipe(None, &[tw, "lab", "down", "--name", "nolab"]);

    // Commands that ask a running collector (with the control plane) or its database.
    let c = Collector::start(&lab, &col, &out, &["--db", db_s]);
    let create = |name: &'static str| {
        [
            tw, "token", "create", "--db", db_s, "--name", name, "--role", "viewer",
        ]
    };
    assert_quiet_on_closed_pipe_2(None, &create("viewer1"), &create("viewer2"));
    assert_quiet_on_closed_pipe(None, &[tw, "token", "list", "--db", db_s]);
    let admin = std::fs::read_to_string(format!("{db_s}.admin-token")).unwrap();
    let admin = admin.trim();
    let client = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![tw.into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v.extend([
            "--controller".into(),
            API.into(),
            "--token".into(),
            admin.into(),
        ]);
        v
    };
    let created = run(Command::new("ip")
        .args(["netns", "exec", &col])
        .args(client(&[
            "session",
            "create",
            "web",
            "--encap",
            "erspan-iii",
        ])));
    assert!(created.status.success(), "{}", text(&created.stderr));
    for args in [
        &["session", "list"][..],
        &["session", "list", "--json"],
        &["session", "show", "web"],
        &["flow", "list"],
        &["probe", "list"],
        &["audit"],
        &["token", "list"],
    ] {
        let argv = client(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        assert_quiet_on_closed_pipe(Some(&col), &argv);
    }
    // The session is in the snapshot from the engine's next publication (once a second).
    wait_until(
        Duration::from_secs(5),
        "session web in the snapshot",
        || {
            let raw = run(Command::new("ip").args([
                "netns",
                "exec",
                &col,
                tw,
                "top",
                "--once",
                "--raw",
                "--connect",
                API,
            ]));
            text(&raw.stdout).contains("session=web").then_some(())
        },
    );
    for args in [
        &["top", "--once", "--json", "--connect", API][..],
        &["top", "--once", "--raw", "--connect", API],
    ] {
        let mut argv = vec![tw];
        argv.extend_from_slice(args);
        assert_quiet_on_closed_pipe(Some(&col), &argv);
    }
    drop(c);
}
