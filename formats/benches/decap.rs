//! Per-header parse cost of the encapsulations on the hot path, apart from the pipeline around
//! them (`tapwire-collector`'s `pipeline` bench measures the whole path):
//!
//! - `gre_erspan_ii`: GRE `new_checked` + `Repr::parse`, then ERSPAN II `new_checked` +
//!   `ReprII::parse`, as `decap_gre` does for every Type II packet;
//! - `vxlan`: `new_checked` + `Repr::parse`;
//! - `geneve`: `new_checked` (walks one option) + the accessors `decap_udp` reads.
//!
//! `cargo bench -p tapwire-formats --bench decap`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapwire_formats::wire::erspan::{PacketII, ReprII};
use tapwire_formats::wire::{geneve, gre, vxlan};

/// GRE (S set, 0x88BE, seq 1086760) then the ERSPAN II header of tcpdump's
/// erspan-type-ii-1.pcap (session 666, vlan 342) and the first inner bytes.
const GRE_ERSPAN_II: [u8; 20] = [
    0x10, 0x00, 0x88, 0xbe, 0x00, 0x10, 0x95, 0x28, 0x11, 0x56, 0xc2, 0x9a, 0x00, 0x00, 0x7f, 0xf8,
    0x01, 0x00, 0x5e, 0x00,
];
/// tcpdump's vxlan.pcap: I flag, VNI 100, then inner bytes.
const VXLAN: [u8; 12] = [
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x11, 0x22, 0x33,
];
/// zeek's geneve.pcap: one 8-byte option, Ethernet payload.
const GENEVE: [u8; 20] = [
    0x02, 0x00, 0x65, 0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a,
    0x76, 0xb5, 0x00, 0x11,
];

fn parsers(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));

    group.bench_function("gre_erspan_ii", |b| {
        b.iter(|| {
            let p = gre::Packet::new_checked(black_box(&GRE_ERSPAN_II[..])).ok()?;
            let g = gre::Repr::parse(&p).ok()?;
            let e = PacketII::new_checked(p.payload()).ok()?;
            let r = ReprII::parse(&e).ok()?;
            Some((g.sequence, r.session_id, e.payload().len()))
        });
    });

    group.bench_function("vxlan", |b| {
        b.iter(|| {
            let p = vxlan::Packet::new_checked(black_box(&VXLAN[..])).ok()?;
            let r = vxlan::Repr::parse(&p).ok()?;
            Some((r.vni, p.payload().len()))
        });
    });

    group.bench_function("geneve", |b| {
        b.iter(|| {
            let p = geneve::Packet::new_checked(black_box(&GENEVE[..])).ok()?;
            Some((
                p.version(),
                p.oam(),
                p.protocol(),
                p.vni(),
                p.payload().len(),
            ))
        });
    });
    group.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);
