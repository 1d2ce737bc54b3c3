//! What `tapwire collect --check` prints: the configuration in effect once the file and the
//! flags are merged, session by session, so that an operator sees which rotation, format and
//! hook each session's files will really get. Pure: options in, text out.

use std::fmt::Write as _;
use std::path::Path;

use tapwire_formats::capture::Format;

use crate::collect::CollectOptions;
use crate::config::{FilesConfig, RotatePolicy, SessionConfig, SourceMatch};
use crate::live::select::InputMode;
use crate::offline::Timestamps;

/// The whole report: inputs, collector settings, the files of auto-discovered sessions, then
/// one block per configured session.
pub fn describe(o: &CollectOptions) -> String {
    let s = &o.settings;
    let mut t = String::new();
    let inputs: Vec<String> = o.inputs.iter().map(|i| i.name()).collect();
    let _ = writeln!(t, "inputs: {}", list_or(&inputs, "none"));
    let _ = writeln!(
        t,
        "--input {}: {}",
        o.input_mode,
        match o.input_mode {
            InputMode::Auto =>
                "AF_XDP, else a ring, tried at start on each interface holding a listen address",
            InputMode::Xdp => "AF_XDP tried at start on each interface holding a listen address",
            InputMode::Ring => "a ring on each interface holding a listen address",
            InputMode::Sockets => "the sockets only",
        }
    );
    let _ = writeln!(t, "out: {}", s.out.display());
    let allow: Vec<String> = s.allow.iter().map(ToString::to_string).collect();
    let _ = writeln!(t, "allow: {}", list_or(&allow, "every source"));
    let _ = writeln!(
        t,
        "min free disk: {}",
        o.min_free_disk_bytes.map_or(
            "the smaller of 256 MiB and 5% of the file system".into(),
            size
        )
    );
    let _ = writeln!(
        t,
        "timestamps: {}",
        match s.timestamps {
            Timestamps::Input => "input",
            Timestamps::Erspan => "erspan",
        }
    );
    let l = &s.limits;
    let _ = writeln!(
        t,
        "limits: {} sources, {} auto-discovered sessions, idle after {}, {} live streams",
        l.max_sources,
        l.max_auto_sessions,
        humantime::format_duration(std::time::Duration::from_nanos(l.idle_timeout_ns)),
        s.max_streams
    );
    let _ = writeln!(
        t,
        "packet index: {}; queries refused above {}",
        if o.index { "on" } else { "off (--no-index)" },
        o.query_max_bytes.map_or("no limit".into(), size)
    );
    let hooks: Vec<String> = o.config.hooks.keys().cloned().collect();
    let _ = writeln!(t, "hooks (by name): {}", list_or(&hooks, "none"));
    if let Some(c) = &o.controller {
        let _ = writeln!(t, "probes: at most {}", c.max_probes);
    }
    if s.auto_discover {
        let _ = writeln!(t, "auto-discovered sessions:");
        files(&mut t, Some(&s.default_files), &s.out);
        if let Some(p) = &s.tap_prefix {
            let _ = writeln!(t, "  tap: {p}<n>");
        }
    } else {
        let _ = writeln!(t, "auto-discovered sessions: off (--no-auto)");
    }
    for c in &o.config.sessions {
        session(&mut t, c, &s.out);
    }
    if o.controller.is_some() {
        let _ = writeln!(
            t,
            "sessions of the control plane: in its database (tapwire session list)"
        );
        catalog(&mut t, &s.out, &o.config.sessions);
    }
    t
}

/// Which files the catalog of capture files (with `--db`) lists: those beneath `out`; a
/// session writing elsewhere is named.
fn catalog(t: &mut String, out: &Path, sessions: &[SessionConfig]) {
    let _ = writeln!(
        t,
        "catalog of capture files: in the database, the files beneath {} (GET /api/v1/files)",
        out.display()
    );
    for c in sessions {
        if let Some(d) = c.files.as_ref().and_then(|f| f.dir.as_deref())
            && d.is_absolute()
            && !d.starts_with(out)
        {
            let _ = writeln!(
                t,
                "  session {}: not catalogued (its files go to {}, outside --out)",
                c.name,
                d.display()
            );
        }
    }
}

fn session(t: &mut String, c: &SessionConfig, out: &Path) {
    let _ = writeln!(
        t,
        "session {}:{}",
        c.name,
        if c.enabled { "" } else { " disabled" }
    );
    let rules: Vec<String> = c.sources.iter().map(rule).collect();
    let _ = writeln!(t, "  sources: {}", rules.join(" or "));
    if let Some(f) = &c.filter {
        let _ = writeln!(t, "  filter: {}", f.expr());
    }
    files(t, c.files.as_ref(), out);
    if let Some(tap) = &c.tap {
        let _ = writeln!(
            t,
            "  tap: {}{}",
            tap.name,
            tap.netns
                .as_deref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default()
        );
    }
}

/// The `files` lines of a session: where, which format, when files rotate, how many are kept,
/// what runs on each.
fn files(t: &mut String, f: Option<&FilesConfig>, out: &Path) {
    let Some(f) = f else {
        let _ = writeln!(t, "  files: none");
        return;
    };
    let _ = writeln!(
        t,
        "  files: {} in {}",
        format_name(f.format),
        f.dir.as_deref().unwrap_or(out).display()
    );
    let _ = writeln!(t, "  rotate: {}", rotate(&f.rotate));
    let _ = writeln!(
        t,
        "  max files: {}",
        f.max_files.map_or("unlimited".into(), |n| n.to_string())
    );
    let _ = writeln!(
        t,
        "  on finish: {}",
        f.on_finish.as_deref().unwrap_or("none")
    );
}

/// `size 100 MiB, interval 1h`: every condition that rotates, or `never`.
fn rotate(r: &RotatePolicy) -> String {
    let mut v = Vec::new();
    if let Some(n) = r.size_bytes {
        v.push(format!("size {}", size(n)));
    }
    if let Some(d) = r.duration {
        v.push(format!("duration {}", humantime::format_duration(d)));
    }
    if let Some(d) = r.interval {
        v.push(format!("interval {}", humantime::format_duration(d)));
    }
    if let Some(n) = r.packets {
        v.push(format!("packets {n}"));
    }
    list_or(&v, "never")
}

fn rule(m: &SourceMatch) -> String {
    let mut v = Vec::new();
    if let Some(src) = &m.src {
        v.push(format!("src {src}"));
    }
    if let Some(k) = &m.kind {
        v.push(format!("kind {k}"));
    }
    if let Some(ids) = &m.ids {
        v.push(if ids.start() == ids.end() {
            format!("id {}", ids.start())
        } else {
            format!("id {}-{}", ids.start(), ids.end())
        });
    }
    format!("({})", list_or(&v, "any"))
}

/// The name a user writes in `--format` and `format =`.
pub fn format_name(f: Format) -> &'static str {
    match f {
        Format::Pcapng => "pcapng",
        Format::Pcap { nanos: false } => "pcap",
        Format::Pcap { nanos: true } => "pcap-ns",
    }
}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn list_or(v: &[String], none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sessions_writing_outside_out_are_named_as_not_catalogued() {
        let session = |name: &str, dir: Option<&str>| SessionConfig {
            name: name.into(),
            enabled: true,
            sources: Vec::new(),
            filter: None,
            files: Some(FilesConfig {
                dir: dir.map(Into::into),
                ..FilesConfig::default()
            }),
            tap: None,
        };
        let mut t = String::new();
        catalog(
            &mut t,
            Path::new("/srv/cap"),
            &[
                session("a", None),
                session("b", Some("web")),
                session("c", Some("/srv/cap/c")),
                session("d", Some("/var/d")),
            ],
        );
        assert_eq!(
            t,
            "catalog of capture files: in the database, the files beneath /srv/cap (GET /api/v1/files)\n  session d: not catalogued (its files go to /var/d, outside --out)\n"
        );
    }

    #[test]
    fn settings_read_as_a_user_writes_them() {
        assert_eq!(rotate(&RotatePolicy::default()), "never");
        let r = RotatePolicy {
            size_bytes: Some(100 << 20),
            duration: Some(Duration::from_secs(900)),
            interval: Some(Duration::from_secs(3600)),
            packets: Some(5),
        };
        assert_eq!(
            rotate(&r),
            "size 100.0 MiB, duration 15m, interval 1h, packets 5"
        );
        assert_eq!(format_name(Format::Pcap { nanos: true }), "pcap-ns");
        let m = SourceMatch {
            src: Some("10.0.0.0/8".parse().unwrap()),
            kind: None,
            ids: Some(10..=19),
        };
        assert_eq!(rule(&m), "(src 10.0.0.0/8, id 10-19)");
        assert_eq!(
            rule(&SourceMatch {
                src: None,
                kind: None,
                ids: None
            }),
            "(any)"
        );
    }
}
