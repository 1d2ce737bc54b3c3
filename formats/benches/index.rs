//! What indexing costs the collector per packet: `FrameKeys::of` (the inner frame's addresses,
//! ports and protocol) and `KeyLog::packet` for each packet of a buffer, then, once per buffer,
//! `finish` + `encode` of its index records, as the disk thread does. Frames: 60 and 1414 bytes,
//! IPv4 UDP/TCP between 10,000 client addresses and 50 servers (the query benchmark's mix),
//! 1 MiB buffers. Compare with the collector's whole per-packet cost (`tapwire-collector`'s
//! `pipeline` bench, `scripts/bench-collect.sh`).
//!
//! `cargo bench -p tapwire-formats --bench index`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapwire_formats::capture::LinkType;
use tapwire_formats::index::{FrameKeys, KeyLog};

fn frame(n: u32, size: usize) -> Vec<u8> {
    let h = (n.wrapping_mul(2_654_435_761) >> 8) % 10_000;
    let client = [10, 0, (h >> 8) as u8, h as u8];
    let server = [172, 16, 0, 1 + (n % 50) as u8];
    let tcp = !n.is_multiple_of(5);
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
    let ip_len = (size - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, if tcp { 6 } else { 17 }, 0, 0]);
    f.extend_from_slice(&client);
    f.extend_from_slice(&server);
    f.extend_from_slice(&(1024 + (n % 60_000) as u16).to_be_bytes());
    f.extend_from_slice(&[443u16, 53, 80, 22, 8080][(n % 5) as usize].to_be_bytes());
    f.resize(size, 0);
    f
}

fn index(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for size in [60usize, 1414] {
        // A 1 MiB buffer's packets (pcapng EPB: 32 bytes of header and trailer each).
        let record = size.next_multiple_of(4) + 32;
        let n = (1 << 20) / record;
        let frames: Vec<Vec<u8>> = (0..n as u32).map(|i| frame(i, size)).collect();
        group.throughput(Throughput::Elements(n as u64));
        let mut out = Vec::with_capacity(1 << 16);
        group.bench_function(format!("buffer_of_{size}B_frames"), |b| {
            let mut log = KeyLog::new(0);
            b.iter(|| {
                log.reset(0);
                let mut end = 0;
                for (i, f) in frames.iter().enumerate() {
                    end += record;
                    let keys = FrameKeys::of(LinkType::Ethernet, black_box(f));
                    log.packet(end, i as u64, 0, &keys, None);
                }
                log.finish(end);
                out.clear();
                black_box(log.encode(0, None, &mut out))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, index);
criterion_main!(benches);
