//! End-to-end: an operator token is not root. A real `tapwire collect --db` (root, in lab
//! namespace `col`, its working directory elsewhere than `--out`) is attacked through its API
//! as issue 12 describes: a command to run on finished files, directories outside `--out`
//! (absolute, `..`, a symlink planted before the session was defined and one planted after it
//! wrote there), namespace files by path, and namespace names probed for which files exist.
//! Oracles: the file system (nothing created outside `--out`, no marker touched), `ip link` in
//! the namespaces, captype/capinfos/tshark for the files that are written, and the API's own
//! answers as a viewer reads them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tapwire_tests::collector::{self, Collector};
use tapwire_tests::netns::{Lab, wait_until};
use tapwire_tests::senders::{self, MirrorSend};
use tapwire_tests::{require, run_ok};

const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A file put in the namespace directory that is not a namespace (as a local user's mistake
/// or a stale entry would be); removed when dropped, also on failure.
struct PlantedNetns(PathBuf);

impl Drop for PlantedNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `curl` in `ns` against the collector's API: (status, JSON body).
fn api(
    lab: &Lab,
    ns: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    api_raw(lab, ns, method, path, token, body.map(Value::to_string))
}

/// [`api`] with any body, sent from a file (a report of a megabyte is no argument).
fn api_raw(
    lab: &Lab,
    ns: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", collector::API);
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let file = lab.dir().join("request-body");
    let data = body.map(|b| {
        std::fs::write(&file, b).unwrap();
        format!("@{}", file.display())
    });
    let mut cmd = vec![
        "curl",
        "-s",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ];
    if let Some(a) = &auth {
        cmd.extend(["-H", a]);
    }
    if let Some(d) = &data {
        cmd.extend(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    cmd.push(&url);
    let out = lab.exec_ok(ns, &cmd);
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("{method} {path}: {out}"));
    (
        code,
        serde_json::from_str(text).unwrap_or(Value::String(text.to_string())),
    )
}

/// Every file under `dir`, recursively (symlinks not followed), relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

fn session<'a>(api: &'a Value, name: &str) -> &'a Value {
    api["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no session {name} in {api}"))
}

fn pcaps(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcapng"))
        .collect();
    v.sort();
    v
}

#[test]
fn an_operator_token_runs_nothing_and_writes_nothing_outside_out() {
    require("tshark");
    let lab = Lab::new("security");
    let (snd, col) = (lab.ns("snd").to_string(), lab.ns("col").to_string());
    let dir = lab.dir().to_path_buf();
    let (out, outside, cwd, markers) = (
        dir.join("out"),
        dir.join("outside"),
        dir.join("cwd"),
        dir.join("markers"),
    );
    for d in [&out, &outside, &cwd, &markers] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Planted before any session names it: a directory of --out that leads out.
    std::os::unix::fs::symlink(&outside, out.join("before")).unwrap();
    let pwned = markers.join("pwned");
    let config = dir.join("collector.toml");
    std::fs::write(&config, "[hooks]\nmark = \"touch \\\"$1.done\\\"\"\n").unwrap();
    let db = dir.join("control.db");
    let mut c = Collector::start_wrapped(
        &lab,
        &col,
        &out,
        &[
            "--config",
            config.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
        // Its working directory is not --out: a relative directory must not land here.
        &["env", "-C", cwd.to_str().unwrap()],
    );
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        api(&lab, &col, method, path, token, body.as_ref())
    };
    let admin = std::fs::read_to_string(format!("{}.admin-token", db.display()))
        .unwrap()
        .trim()
        .to_string();
    let (s, v) = call(
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({ "name": "ops", "role": "operator" })),
    );
    assert_eq!(s, 201, "{v}");
    let ops = v["token"].as_str().unwrap().to_string();
    let create = |body: Value| call("POST", "/api/v1/sessions", Some(&ops), Some(body));

    // The attacks that the definition alone refuses, in a new session and in a change to an
    // existing one: 400, with what to do instead. Every answer is checked before failing, so
    // that one run shows each rule that does not hold.
    let touch = format!("touch {}", pwned.display());
    let attacks = [
        (
            json!({ "files": { "on_finish": touch } }),
            "commands cannot be set through the API",
        ),
        (json!({ "files": { "dir": outside } }), "is absolute"),
        (json!({ "files": { "dir": "../outside" } }), "climbs out"),
        (
            json!({ "files": false, "tap": { "name": "twsec9", "netns": "/proc/1/ns/net" } }),
            "is a path",
        ),
    ];
    let mut wrong = Vec::new();
    let mut expect_400 = |what: String, (s, v): (u16, Value), needle: &str| {
        let message = v["message"].as_str().unwrap_or_default();
        if s != 400 || !message.contains(needle) {
            wrong.push(format!("{what}: {s} {v}"));
        }
    };
    for (i, (attack, needle)) in attacks.iter().enumerate() {
        let mut body = attack.clone();
        body["name"] = json!(format!("attack{i}"));
        expect_400(format!("create {attack}"), create(body), needle);
    }
    let (s, v) =
        create(json!({ "name": "patched", "mirror_id": 9, "files": { "dir": "patched" } }));
    assert_eq!(s, 201, "{v}");
    for (attack, needle) in &attacks {
        let r = call(
            "PATCH",
            "/api/v1/sessions/patched",
            Some(&ops),
            Some(attack.clone()),
        );
        expect_400(format!("patch {attack}"), r, needle);
    }
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
    let (_, v) = call("GET", "/api/v1/sessions/patched/definition", None, None);
    assert_eq!(v["files"], json!({ "dir": "patched" }), "{v}");

    // Sessions the API may define: a relative directory, a hook by name, TAPs in namespaces
    // by name (one missing, one a plain file, one real).
    let planted = PlantedNetns(PathBuf::from(format!(
        "/run/netns/twlab-{}-sec-plain",
        std::process::id()
    )));
    std::fs::write(&planted.0, b"").unwrap();
    let plain = planted.0.file_name().unwrap().to_str().unwrap().to_string();
    let missing = format!("twlab-{}-sec-missing", std::process::id());
    for (name, id, files, tap) in [
        ("rel", 1, json!({ "dir": "rel/sub" }), Value::Null),
        ("before", 2, json!({ "dir": "before" }), Value::Null),
        ("after", 3, json!({ "dir": "after" }), Value::Null),
        (
            "hooked",
            4,
            json!({ "dir": "hooked", "hook": "mark" }),
            Value::Null,
        ),
        (
            "ns-missing",
            5,
            json!(false),
            json!({ "name": "twsec0", "netns": missing }),
        ),
        (
            "ns-plain",
            6,
            json!(false),
            json!({ "name": "twsec1", "netns": plain }),
        ),
        (
            "ns-real",
            7,
            json!(false),
            json!({ "name": "twsec2", "netns": snd }),
        ),
    ] {
        let mut body = json!({ "name": name, "mirror_id": id, "files": files });
        if !tap.is_null() {
            body["tap"] = tap;
        }
        let (s, v) = create(body);
        assert_eq!(s, 201, "{name}: {v}");
    }

    // Ten packets to each of ERSPAN II sessions 0 to 7 per round; waits until all of them
    // (every round's) are counted and none is pending.
    let send = |round: u32| {
        let opts = MirrorSend {
            many_sessions: 8,
            count: 10,
            start: 10 * (round - 1),
            ..MirrorSend::default()
        };
        let pcap = dir.join(format!("sent-{round}.pcap"));
        let sent = senders::send_mirror(&lab, &snd, &opts, &pcap, false);
        let total = sent
            .sources
            .iter()
            .map(|(k, n)| (k.clone(), n * u64::from(round)))
            .collect();
        c.wait_for_packets(&total, Duration::from_secs(10));
        c.wait_written(Duration::from_secs(10))
    };
    let first = send(1);
    // A relative directory is beneath --out, not the working directory; its files hold every
    // packet, as tshark reads them.
    let rel = pcaps(&out.join("rel/sub"));
    assert_eq!(rel.len(), 1, "{:?}", tree(&out));
    let frames = collector::read_captures(&rel);
    assert_eq!(frames[0].0.len(), 10);
    assert_eq!(session(&first, "rel")["written"], 10);
    // The symlink planted before: refused when the file is made, nothing written through it.
    let before = session(&first, "before");
    assert_eq!(before["written"], 0, "{before}");
    let error = before["files"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("leads out of"), "{before}");
    assert_eq!(before["drops"]["write_error"], 10, "{before}");
    assert_eq!(pcaps(&out.join("after")).len(), 1);
    assert_eq!(session(&first, "after")["written"], 10);

    // Planted after: the directory `after` wrote to becomes a symlink out of --out; then the
    // sessions rotate, and the next file of `after` would be made through it.
    std::fs::rename(out.join("after"), dir.join("after-moved")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("after")).unwrap();
    for s in ["after", "hooked"] {
        let (code, v) = call(
            "POST",
            &format!("/api/v1/sessions/{s}/rotate"),
            Some(&ops),
            None,
        );
        assert_eq!(code, 200, "{s}: {v}");
    }
    // The hook chosen by name runs on the finished file (its command is the file's).
    let hooked = pcaps(&out.join("hooked"));
    assert_eq!(hooked.len(), 1);
    let done = PathBuf::from(format!("{}.done", hooked[0].display()));
    wait_until(Duration::from_secs(5), "the hook to run", || {
        done.exists().then_some(())
    });
    let second = send(2);
    let after = session(&second, "after");
    assert_eq!(
        after["written"], 10,
        "only the packets before the swap: {after}"
    );
    assert!(
        after["files"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("leads out of"),
        "{after}"
    );

    // A namespace name tells nothing of which files exist: the same error for a missing one
    // and a plain file; a real one gets its TAP.
    let tap_error = |s: &str, ns: &str| {
        session(&second, s)["tap"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{s}: no TAP error: {second}"))
            .replace(ns, "NS")
    };
    assert_eq!(
        tap_error("ns-missing", &missing),
        tap_error("ns-plain", &plain)
    );
    assert_eq!(
        tap_error("ns-missing", &missing),
        "network namespace \"NS\" is not available (see `ip netns list`)"
    );
    assert!(
        session(&second, "ns-real")["tap"]["error"].is_null(),
        "{second}"
    );
    lab.exec_ok(&snd, &["ip", "link", "show", "twsec2"]);
    assert!(
        !lab.exec(&col, &["ip", "link", "show", "twsec9"])
            .status
            .success(),
        "a refused TAP was made"
    );

    // What a viewer (localhost without a token) reads: the hook's name, never a command.
    for path in [
        "/api/v1/definitions",
        "/api/v1/audit",
        "/api/v1/sessions/hooked/definition",
    ] {
        let (s, v) = call("GET", path, None, None);
        assert_eq!(s, 200, "{path}: {v}");
        let text = v.to_string();
        assert!(
            !text.contains("touch") && !text.contains("pwned"),
            "{path}: {text}"
        );
    }
    let (_, defs) = call("GET", "/api/v1/definitions", None, None);
    assert!(defs.to_string().contains("\"hook\":\"mark\""), "{defs}");

    c.stop("TERM", STOP_WITHIN);
    // Nothing ran, nothing was written outside --out or in the working directory.
    assert!(!pwned.exists(), "the attack's command ran");
    assert_eq!(
        tree(&outside),
        Vec::<String>::new(),
        "written outside --out"
    );
    assert_eq!(
        tree(&cwd),
        Vec::<String>::new(),
        "written in the working directory"
    );
    let types = run_ok(std::process::Command::new("captype").args(pcaps(&out.join("rel/sub"))));
    assert!(types.trim_end().ends_with(": pcapng"), "{types}");
    drop(planted);
}

/// A probe's stats report of `flows` flows, each with an error string of `pad` bytes (the
/// shape `tapwire-probe` sends).
fn report(flows: usize, pad: usize) -> String {
    let flows: Vec<Value> = (0..flows)
        .map(|i| {
            json!({ "name": format!("vm{i}"), "interface": format!("tap{i}"),
                "collector": "10.0.0.1", "encap": "erspan-ii", "session": 1, "state": "running",
                "error": "x".repeat(pad), "max_payload_bytes": 1450, "counters": {
                "captured": 1, "captured_bytes": 1, "filtered_out": 0, "sampled_out": 0,
                "rate_limited": 0, "kernel_drops": 0, "sent": 1, "sent_bytes": 1,
                "send_errors": 0, "truncated": 0, "reopened": 0 } })
        })
        .collect();
    json!({ "applied_version": 0, "refused": [],
        "stats": { "version": "1", "started": "", "uptime_s": 1.0, "flows": flows } })
    .to_string()
}

/// The VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_probe_token_speaks_for_one_probe_and_what_probes_send_is_bounded() {
    let mut lab = Lab::empty("secprobe");
    let col = lab.add_ns("col");
    let dir = lab.dir().to_path_buf();
    let db = dir.join("control.db");
    let mut c = Collector::start(
        &lab,
        &col,
        &dir.join("out"),
        &[
            "--db",
            db.to_str().unwrap(),
            "--max-probes",
            "3",
            "--probe-max-flows",
            "8",
        ],
    );
    let call = |method: &str, path: &str, token: &str, body: Option<String>| {
        api_raw(&lab, &col, method, path, Some(token), body)
    };
    let admin = std::fs::read_to_string(format!("{}.admin-token", db.display()))
        .unwrap()
        .trim()
        .to_string();
    let (s, v) = call(
        "POST",
        "/api/v1/tokens",
        &admin,
        Some(json!({ "name": "key-1", "role": "probe", "probe": "host1" }).to_string()),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["probe"], "host1", "{v}");
    let key = v["token"].as_str().unwrap().to_string();
    let reg = |name: &str| json!({ "name": name, "version": "1", "interfaces": ["eth0"] });
    let register = |token: &str, name: &str| {
        call(
            "POST",
            "/api/v1/probes/register",
            token,
            Some(reg(name).to_string()),
        )
    };

    // The token speaks for its probe, and for no other: not the token's own name, not host2.
    let (s, v) = register(&key, "host1");
    assert_eq!(s, 200, "{v}");
    for other in ["key-1", "host2"] {
        let (s, v) = register(&key, other);
        assert_eq!(s, 403, "{other}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("bound to probe \"host1\""),
            "{v}"
        );
    }
    let (s, v) = call(
        "POST",
        "/api/v1/probes/host2/stats",
        &key,
        Some(report(1, 0)),
    );
    assert_eq!(s, 403, "a report as another probe: {v}");

    // Reports: a megabyte (the attack's kind, within the HTTP stack's own default limit) is
    // 413, twenty times over, and the collector keeps none of it; more flows than the probe
    // may have is 400; one within bounds is stored.
    let stats = "/api/v1/probes/host1/stats";
    let big = report(3000, 0);
    assert!(big.len() > 900_000, "{}", big.len());
    let rss_before = rss_kib(c.proc.pid());
    for _ in 0..20 {
        let (s, v) = call("POST", stats, &key, Some(big.clone()));
        assert_eq!(s, 413, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("body: larger than 131072 bytes"),
            "{v}"
        );
    }
    let grown_kib = rss_kib(c.proc.pid()).saturating_sub(rss_before);
    assert!(
        grown_kib < 8 << 10,
        "20 refused reports of 1 MB grew the collector by {grown_kib} KiB"
    );
    let (s, v) = call("POST", stats, &key, Some(report(9, 0)));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("more than probe \"host1\" may have (max_flows 8)"),
        "{v}"
    );
    let (s, v) = call("POST", stats, &key, Some(report(8, 100)));
    assert_eq!(s, 200, "{v}");

    // Names: longer than 100 bytes is 400; invented names stop at --max-probes (host1, a, b),
    // whoever sends them, and nothing is kept of the refused ones.
    let (s, v) = register(&admin, &"n".repeat(101));
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("1 to 100"), "{v}");
    for name in ["a", "b"] {
        let (s, v) = register(&admin, name);
        assert_eq!(s, 200, "{name}: {v}");
    }
    for name in ["invented-1", "invented-2"] {
        let (s, v) = register(&admin, name);
        assert_eq!(s, 409, "{name}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("--max-probes 3"),
            "{v}"
        );
    }
    let (s, v) = call("GET", "/api/v1/probes", &admin, None);
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "host1"], "{v}");

    // Every refusal counted by its reason.
    let metrics = c.metrics();
    for (reason, n) in [
        ("body_too_large", 20),
        ("other_probe", 3),
        ("too_many_probes", 2),
        ("too_many_flows", 1),
        ("invalid", 1),
    ] {
        let line = format!("tapwire_probe_refused_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line:?} in:\n{metrics}");
    }
    c.stop("TERM", STOP_WITHIN);
}
