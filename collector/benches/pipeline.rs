//! Per-packet cost of the collector's hot path on ERSPAN Type II with 60-byte inner frames:
//!
//! - `decap_link`: `Decapsulator::decap_link` alone (Ethernet, IPv4, GRE, ERSPAN II);
//! - `pipeline_link`: `Pipeline::link`, that is decap plus source lookup plus sequence tracking,
//!   over 8 sessions interleaved round-robin;
//! - `pipeline_link_encode`: the same plus encoding each delivered frame into a pcapng
//!   `Encoder` (one interface per source), its buffer cleared past 1 MiB as a file sink would.
//!
//! Every iteration rewrites the GRE sequence numbers so that each session stays contiguous and
//! the trackers see the in-order case, as on a loss-free link.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall-clock: on a
//! machine shared with other work, wall time counts the periods the thread was not running.
//! `TAPWIRE_BENCH_WALL=1` measures wall-clock time instead.
//!
//! `cargo bench -p tapwire-collector --bench pipeline`

// Test code: a setup step that fails ends the run with its name.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapwire_collector::demux::SourceId;
use tapwire_collector::offline::interface_info;
use tapwire_collector::pipeline::{AdmitAll, MAX_SOURCES, Pipeline};
use tapwire_formats::capture::{Encoder, Format, LinkType, PacketInfo};
use tapwire_formats::decap::{Config, Decapsulator, Outcome};
use tapwire_formats::wire::erspan::{Cos, Encap, Index, PacketII, ReprII, SessionId, VlanId};
use tapwire_formats::wire::ethernet::{self, EtherType, Frame};
use tapwire_formats::wire::ip::Protocol;
use tapwire_formats::wire::{gre, ipv4};

const SESSIONS: u32 = 8;
/// Packets per iteration: 1024 per session.
const BATCH: u32 = SESSIONS * 1024;
const INNER_BYTES: usize = 60;
/// Where the GRE sequence number sits in the frame: Ethernet, IPv4, GRE flags and protocol.
const SEQ_AT: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 4;
const FLUSH_BYTES: usize = 1 << 20;

/// One ERSPAN II frame of `session` from `src`, with an Ethernet/IPv4 inner frame.
fn erspan_frame(src: Ipv4Addr, session: u16) -> Vec<u8> {
    let gre = gre::Repr {
        protocol: gre::Protocol::Erspan,
        checksum: false,
        key: None,
        sequence: Some(0),
    };
    let ers = ReprII {
        vlan: VlanId::from_bits(0),
        cos: Cos::from_bits(0),
        encap: Encap::Untagged,
        truncated: false,
        session_id: SessionId::from_bits(session),
        index: Index::from_bits(1),
    };
    let ip_payload = gre.buffer_len() + ers.buffer_len() + INNER_BYTES;
    let mut f = vec![0u8; ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + ip_payload];
    ethernet::Repr {
        dst_addr: [2, 0, 0, 0, 0, 0xfe],
        src_addr: [2, 0, 0, 0, 0, 0xfd],
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut Frame::new_unchecked(&mut f[..]));
    let ip = &mut f[ethernet::HEADER_LEN..];
    ipv4::Repr {
        src_addr: src,
        dst_addr: Ipv4Addr::new(10, 1, 255, 254),
        protocol: Protocol::Gre,
        payload_len: ip_payload,
        ttl: 64,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut *ip));
    let g = &mut ip[ipv4::MIN_HEADER_LEN..];
    gre.emit(&mut gre::Packet::new_unchecked(&mut *g));
    let e = &mut g[gre.buffer_len()..];
    ers.emit(&mut PacketII::new_unchecked(&mut *e));
    let inner = &mut e[ers.buffer_len()..];
    inner[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    inner[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// `BATCH` frames, sessions 1..=8 from four outer addresses, interleaved round-robin.
struct Traffic {
    frames: Vec<Vec<u8>>,
    round: u32,
}

impl Traffic {
    fn new() -> Self {
        let frames = (0..BATCH)
            .map(|i| {
                let s = (i % SESSIONS) as u16 + 1;
                erspan_frame(Ipv4Addr::new(10, 1, 0, 1 + (s as u8 - 1) % 4), s)
            })
            .collect();
        Traffic { frames, round: 0 }
    }

    /// Numbers the next round: each session's sequence goes on where the last round ended.
    fn next_round(&mut self) -> u64 {
        let per_session = BATCH / SESSIONS;
        for (i, f) in self.frames.iter_mut().enumerate() {
            let seq = self.round * per_session + i as u32 / SESSIONS;
            f[SEQ_AT..SEQ_AT + 4].copy_from_slice(&seq.to_be_bytes());
        }
        self.round += 1;
        1_700_000_000_000_000_000 + u64::from(self.round) * 1_000_000
    }
}

/// CPU time of the calling thread in nanoseconds, or wall-clock time since the first call when
/// `TAPWIRE_BENCH_WALL` is set or the thread clock cannot be read.
struct ThreadTime {
    wall_since: Option<Instant>,
}

impl ThreadTime {
    fn new() -> Self {
        let wall = std::env::var_os("TAPWIRE_BENCH_WALL").is_some() || thread_cpu_ns().is_none();
        ThreadTime {
            wall_since: wall.then(Instant::now),
        }
    }

    fn now_ns(&self) -> u64 {
        match self.wall_since {
            Some(t) => t.elapsed().as_nanos() as u64,
            None => thread_cpu_ns().unwrap_or_default(),
        }
    }
}

/// The calling thread's CPU time. `/proc/thread-self/schedstat` would do without `unsafe` but
/// lags by up to a scheduler tick, longer than criterion's first samples.
#[allow(unsafe_code)]
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

impl Measurement for ThreadTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        self.now_ns()
    }

    fn end(&self, start: u64) -> u64 {
        self.now_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

/// Formats nanosecond values like criterion's own wall-time formatter.
struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical_ns: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iter, unit) = match *throughput {
            Throughput::Elements(n) => (n as f64 / 1e6, "Melem/s"),
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (n as f64 / 1e6, "MB/s"),
            _ => (1.0 / 1e6, "M/s"),
        };
        values.iter_mut().for_each(|v| *v = per_iter * 1e9 / *v);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn benches(c: &mut Criterion<ThreadTime>) {
    let mut group = c.benchmark_group("erspan_ii_60B");
    group.throughput(Throughput::Elements(u64::from(BATCH)));

    let mut traffic = Traffic::new();
    let mut decap = Decapsulator::new(Config::default());
    group.bench_function("decap_link", |b| {
        b.iter(|| {
            let ts = traffic.next_round();
            for (i, f) in traffic.frames.iter().enumerate() {
                let out = decap.decap_link(LinkType::Ethernet, f, ts + i as u64);
                debug_assert!(matches!(out, Outcome::Mirrored(_)));
                black_box(out);
            }
        });
    });

    let mut traffic = Traffic::new();
    let mut pipeline = Pipeline::new(Config::default(), MAX_SOURCES);
    group.bench_function("pipeline_link", |b| {
        b.iter(|| {
            let ts = traffic.next_round();
            for (i, f) in traffic.frames.iter().enumerate() {
                black_box(pipeline.link(&mut AdmitAll, LinkType::Ethernet, f, ts + i as u64));
            }
        });
    });
    assert_eq!(pipeline.demux().len(), SESSIONS as usize);
    assert!((0..SESSIONS).all(|slot| pipeline.demux().sequence(SourceId::new(slot, 0)).lost == 0));

    let mut traffic = Traffic::new();
    let mut pipeline = Pipeline::new(Config::default(), MAX_SOURCES);
    let mut enc = Encoder::new(Format::Pcapng);
    let mut interfaces: Vec<Option<u32>> = Vec::new();
    group.bench_function("pipeline_link_encode", |b| {
        b.iter(|| {
            let ts = traffic.next_round();
            for (i, f) in traffic.frames.iter().enumerate() {
                let ts_ns = ts + i as u64;
                let Some(d) = pipeline
                    .link(&mut AdmitAll, LinkType::Ethernet, f, ts_ns)
                    .delivered()
                else {
                    continue;
                };
                let id = d.source.slot();
                if interfaces.len() <= id {
                    interfaces.resize(id + 1, None);
                }
                let iface = match interfaces[id] {
                    Some(iface) => iface,
                    None => {
                        let iface = enc
                            .add_interface(&interface_info(&d.key, d.link))
                            .expect("pcapng takes any link type");
                        interfaces[id] = Some(iface);
                        iface
                    }
                };
                enc.packet(
                    iface,
                    &PacketInfo {
                        ts_ns,
                        orig_len: d.frame.len() as u32,
                        data: d.frame,
                        direction: d.meta.direction,
                        comment: None,
                    },
                )
                .expect("frame fits the snapshot length");
                if enc.pending_len() > FLUSH_BYTES {
                    black_box(enc.buffer()).clear();
                }
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = pipeline;
    config = Criterion::default().with_measurement(ThreadTime::new());
    targets = benches
}
criterion_main!(pipeline);
