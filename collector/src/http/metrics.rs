//! `GET /metrics`: the snapshot as Prometheus text.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tapwire_api_types::metrics::{self, Text};
use tapwire_api_types::{InputStats, SessionStats, Snapshot};
use tapwire_control::ProbeRefusal;

use super::ApiState;
use super::auth::{Authed, Read};
use super::serve::{Closed, Gate};

pub(super) async fn metrics(State(s): State<ApiState>, _: Authed<Read>) -> Response {
    let mut body = prometheus(&s.snapshot.load());
    if let Some(c) = &s.controller {
        body.push_str(&probe_refusals(&c.probe_refusals()));
    }
    if let Some(g) = &s.gate {
        body.push_str(&api_connections(g));
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

/// The control plane's refused probe requests, by reason (never by probe name: names are
/// what an attacker invents).
fn probe_refusals(counts: &[(ProbeRefusal, u64)]) -> String {
    let mut t = Text::new();
    t.family(
        "tapwire_probe_refused_total",
        metrics::Kind::Counter,
        "Probe requests refused (and names for new probes), by reason.",
    );
    for (why, n) in counts {
        t.sample("tapwire_probe_refused_total", &[("reason", why.name())], n);
    }
    t.into_string()
}

/// The API's own connections: held, the cap, accepted, and closed or refused by reason.
fn api_connections(g: &Gate) -> String {
    use tapwire_api_types::metrics::Kind::{Counter, Gauge};
    let mut t = Text::new();
    t.family(
        "tapwire_api_connections",
        Gauge,
        "Connections the API holds now.",
    )
    .sample("tapwire_api_connections", &[], g.connections() as u64);
    t.family(
        "tapwire_api_connections_max",
        Gauge,
        "Connections the API may hold (a share of the descriptor limit).",
    )
    .sample(
        "tapwire_api_connections_max",
        &[],
        g.limits().max_connections as u64,
    );
    t.family(
        "tapwire_api_connections_accepted_total",
        Counter,
        "Connections the API accepted.",
    )
    .sample("tapwire_api_connections_accepted_total", &[], g.accepted());
    let name = "tapwire_api_connections_closed_total";
    t.family(
        name,
        Counter,
        "Connections the API refused or closed, by reason.",
    );
    for why in Closed::ALL {
        t.sample(name, &[("reason", why.name())], g.closed(why));
    }
    t.into_string()
}

/// A counter series: name, help, and how to read it.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Renders the snapshot as Prometheus text. Labels stay low-cardinality: session names (which
/// the operator chooses or are one per source), reasons, kinds and inputs; never addresses.
pub fn prometheus(s: &Snapshot) -> String {
    use tapwire_api_types::metrics::Kind::{Counter, Gauge};
    let mut t = Text::new();
    t.family(
        "tapwire_uptime_seconds",
        Gauge,
        "Seconds since the collector started.",
    )
    .sample("tapwire_uptime_seconds", &[], s.uptime_s);
    t.family(
        "tapwire_sources",
        Gauge,
        "Mirrored sources in the table now.",
    )
    .sample("tapwire_sources", &[], s.totals.sources);
    t.family(
        "tapwire_sessions",
        Gauge,
        "Sessions now, configured and auto-discovered.",
    )
    .sample("tapwire_sessions", &[], s.totals.sessions);
    let e = &s.totals.expired;
    t.family(
        "tapwire_expired_total",
        Counter,
        "Sources and auto-discovered sessions removed: idle, or evicted from a full table.",
    );
    for (what, n) in [
        ("source_idle", e.sources),
        ("source_evicted", e.sources_evicted),
        ("auto_session_idle", e.auto_sessions),
    ] {
        t.sample("tapwire_expired_total", &[("what", what)], n);
    }

    let inputs: [Series<InputStats>; 3] = [
        ("input_packets_total", "Packets read per input.", |i| {
            i.packets
        }),
        ("input_bytes_total", "Bytes read per input.", |i| i.bytes),
        (
            "input_kernel_drops_total",
            "Packets the kernel dropped before tapwire read them.",
            |i| i.kernel_drops,
        ),
    ];
    for (name, help, get) in inputs {
        let name = format!("tapwire_{name}");
        t.family(&name, Counter, help);
        for i in &s.inputs {
            t.sample(&name, &[("input", &i.name)], get(i));
        }
    }
    t.family(
        "tapwire_input_refused_packets_total",
        Counter,
        "Mirrored packets refused before a source was made, per input and reason.",
    );
    for i in &s.inputs {
        for (reason, n) in i.refusals.by_reason() {
            t.sample(
                "tapwire_input_refused_packets_total",
                &[("input", &i.name), ("reason", reason)],
                n,
            );
        }
    }
    t.family(
        "tapwire_not_mirror_packets_total",
        Counter,
        "Packets that were not mirror traffic, by kind.",
    );
    for (k, n) in &s.totals.not_mirror {
        t.sample("tapwire_not_mirror_packets_total", &[("kind", k)], n);
    }
    t.family(
        "tapwire_malformed_packets_total",
        Counter,
        "Malformed packets, by reason.",
    );
    for (k, n) in &s.totals.malformed {
        t.sample("tapwire_malformed_packets_total", &[("reason", k)], n);
    }
    let d = &s.totals.defrag;
    let defrag: [(&str, _, &str, u64); 5] = [
        (
            "tapwire_defrag_fragments_total",
            Counter,
            "Outer IP fragments received (AF_PACKET inputs).",
            d.fragments,
        ),
        (
            "tapwire_defrag_held_fragments_total",
            Counter,
            "Outer fragments held until the rest of their datagram arrived.",
            d.held,
        ),
        (
            "tapwire_defrag_reassembled_total",
            Counter,
            "Outer datagrams reassembled from fragments.",
            d.reassembled,
        ),
        (
            "tapwire_defrag_invalid_fragments_total",
            Counter,
            "Outer fragments refused (conflicting overlap, too large).",
            d.invalid,
        ),
        (
            "tapwire_defrag_pending_datagrams",
            Gauge,
            "Outer datagrams waiting for fragments now.",
            d.pending_datagrams,
        ),
    ];
    for (name, kind, help, v) in defrag {
        t.family(name, kind, help).sample(name, &[], v);
    }
    t.family(
        "tapwire_defrag_evicted_datagrams_total",
        Counter,
        "Incomplete outer datagrams dropped, by reason (timeout, memory bound).",
    );
    for (reason, n) in [("timeout", d.evicted_timeout), ("memory", d.evicted_memory)] {
        t.sample(
            "tapwire_defrag_evicted_datagrams_total",
            &[("reason", reason)],
            n,
        );
    }
    t.family(
        "tapwire_refused_packets_total",
        Counter,
        "Packets from sources outside the allow-list.",
    )
    .sample(
        "tapwire_refused_packets_total",
        &[],
        s.totals.refused.values().sum::<u64>(),
    );

    let sessions: [Series<SessionStats>; 7] = [
        (
            "session_packets_total",
            "Mirrored packets received per session.",
            |x| x.packets,
        ),
        (
            "session_bytes_total",
            "Inner-frame bytes received per session.",
            |x| x.bytes,
        ),
        (
            "session_written_packets_total",
            "Packets written per session.",
            |x| x.written,
        ),
        (
            "session_lost_packets_total",
            "Packets lost in transit, from sequence gaps.",
            |x| x.lost,
        ),
        (
            "session_gre_checksum_bad_packets_total",
            "Packets kept although their GRE checksum did not verify.",
            |x| x.gre_checksum_bad,
        ),
        (
            "session_stream_delivered_packets_total",
            "Packets queued for live streams, each subscriber counted.",
            |x| x.streams.delivered,
        ),
        (
            "session_stream_dropped_packets_total",
            "Packets dropped for live streams that read too slowly, each subscriber counted.",
            |x| x.streams.dropped,
        ),
    ];
    for (name, help, get) in sessions {
        let name = format!("tapwire_{name}");
        t.family(&name, Counter, help);
        for x in &s.sessions {
            t.sample(&name, &[("session", &x.name)], get(x));
        }
    }
    t.family(
        "tapwire_session_pending_packets",
        Gauge,
        "Packets accepted for a session's file and not yet on disk.",
    );
    for x in &s.sessions {
        t.sample(
            "tapwire_session_pending_packets",
            &[("session", &x.name)],
            x.pending,
        );
    }
    t.family(
        "tapwire_session_dropped_packets_total",
        Counter,
        "Packets tapwire did not write, by reason.",
    );
    for x in &s.sessions {
        let d = &x.drops;
        for (reason, n) in [
            ("disabled", d.disabled),
            ("filter", d.filter),
            ("disk_guard", d.disk_guard),
            ("disk_full", d.disk_full),
            ("write_error", d.write_error),
            ("backlog", d.backlog),
        ] {
            t.sample(
                "tapwire_session_dropped_packets_total",
                &[("session", &x.name), ("reason", reason)],
                n,
            );
        }
    }
    t.family(
        "tapwire_session_stream_subscribers",
        Gauge,
        "Live streams of a session now.",
    );
    for x in &s.sessions {
        t.sample(
            "tapwire_session_stream_subscribers",
            &[("session", &x.name)],
            x.streams.subscribers.len() as u64,
        );
    }
    t.family(
        "tapwire_session_file_bytes",
        Gauge,
        "Size of the file being written per session.",
    );
    for x in &s.sessions {
        if let Some(f) = &x.files {
            t.sample(
                "tapwire_session_file_bytes",
                &[("session", &x.name)],
                f.current_bytes,
            );
        }
    }
    t.into_string()
}
