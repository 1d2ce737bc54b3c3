//! What tshark says a capture of mirror traffic carries: the inner frames of every source
//! (outer source, kind, id), in packet order, cut from tshark's own decode (`-x`). Outer IPv4
//! fragments are put back together from the fragments tshark lists; for IPv6, tshark prints
//! the reassembled data itself.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::tshark::{self, Raw, num};

/// (outer source, kind, id): how tapwire keys a source.
pub type Key = (String, String, u64);

/// Inner frames per source, in order.
pub type Frames = BTreeMap<Key, Vec<Vec<u8>>>;

/// The mirrored frames tshark finds in `path`, grouped by source, in packet order.
pub fn mirrored_frames(path: &Path) -> Frames {
    decode(path).0
}

/// [`mirrored_frames`] and how many packets of the capture were cut short by its snap length
/// (`frame.cap_len < frame.len`).
pub fn decode(path: &Path) -> (Frames, usize) {
    let packets = tshark::packets(path);
    let out = from_packets(&packets);
    let cut = packets
        .iter()
        .filter(|l| {
            let n = |f: &str| tshark::field(l, "frame", f).map(|v| num(&v));
            n("frame.cap_len") < n("frame.len")
        })
        .count();
    (out, cut)
}

/// The mirrored frames in packets tshark decoded ([`tshark::packets`]).
pub fn from_packets(packets: &[Value]) -> Frames {
    let mut out = Frames::new();
    for l in packets {
        if let Some((key, inner)) = mirrored(l, packets) {
            out.entry(key).or_default().push(inner);
        }
    }
    out
}

/// Per source, in packet order: whether tshark found its GRE checksum bad
/// (`gre.checksum.status` 0; 1 is good). Packets without a GRE checksum count as good.
pub fn gre_checksum_bad(packets: &[Value]) -> BTreeMap<Key, Vec<bool>> {
    let mut out: BTreeMap<Key, Vec<bool>> = BTreeMap::new();
    for l in packets {
        if let Some((key, _)) = mirrored(l, packets) {
            let status = tshark::field(l, "gre", "gre.checksum.status");
            out.entry(key)
                .or_default()
                .push(status.as_deref() == Some("0"));
        }
    }
    out
}

/// The frames of a capture as tshark reads them (for tapwire's output files).
pub fn frames(path: &Path) -> Vec<Vec<u8>> {
    tshark::packets(path)
        .iter()
        .map(tshark::frame_bytes)
        .collect()
}

/// The source and inner frame of one decoded packet, if tshark sees mirror traffic in it.
pub fn mirrored(l: &Value, all: &[Value]) -> Option<(Key, Vec<u8>)> {
    let protos = tshark::protocols(l);
    let count = |upto: usize, p: &str| protos[..upto].iter().filter(|x| *x == p).count();
    // The first mirror encapsulation is the one tapwire removes; anything inside stays.
    let i = protos.iter().enumerate().position(|(i, p)| {
        matches!(p.as_str(), "erspan" | "vxlan" | "geneve" | "tzsp")
            || (p == "gre" && protos.get(i + 1).is_some_and(|n| n == "eth"))
    })?;
    let j = i + 1;
    if protos.get(j).map(String::as_str) != Some("eth") {
        return None;
    }
    let (kind, id) = match protos[i].as_str() {
        "erspan" => match tshark::field(l, "erspan", "erspan.version").as_deref() {
            Some("1") => (
                "erspan-ii",
                num(&tshark::field(l, "erspan", "erspan.spanid")?),
            ),
            Some("2") => (
                "erspan-iii",
                num(&tshark::field(l, "erspan", "erspan.spanid")?),
            ),
            _ => ("erspan-i", 0),
        },
        "gre" => (
            "gre",
            tshark::field_nth(l, "gre", count(i, "gre"), "gre.key").map_or(0, |k| num(&k)),
        ),
        "vxlan" => (
            "vxlan",
            num(&tshark::field_nth(l, "vxlan", 0, "vxlan.vni")?),
        ),
        "geneve" => (
            "geneve",
            num(&tshark::field_nth(l, "geneve", 0, "geneve.vni")?),
        ),
        _ => ("tzsp", 0),
    };
    let outer_ip = protos[..i].iter().find(|p| *p == "ip" || *p == "ipv6")?;
    let src = tshark::field_nth(l, outer_ip, 0, &format!("{outer_ip}.src"))?;
    let eth: Raw = tshark::raws(l, "eth").get(count(j, "eth"))?.clone();

    let ip0 = tshark::all(l, outer_ip).into_iter().next()?;
    let inner = if outer_ip == "ip" && ip0.get("ip.fragments").is_some() {
        let payload = reassemble(&ip0, all)?;
        payload.get(eth.offset..)?.to_vec()
    } else if let Some(frags) = ip0.get("ipv6.fragments") {
        // Offsets are into the reassembled fragmentable part, which tshark prints whole.
        let data = frags
            .get("ipv6.reassembled.data")?
            .as_str()?
            .replace(':', "");
        hex::decode(data).ok()?.get(eth.offset..)?.to_vec()
    } else {
        let frame = tshark::frame_bytes(l);
        let ip_raw = tshark::raws(l, outer_ip).into_iter().next()?;
        let end = if outer_ip == "ip" {
            ip_raw.offset + num(&tshark::field_nth(l, "ip", 0, "ip.len")?) as usize
        } else {
            ip_raw.offset + 40 + num(&tshark::field_nth(l, "ipv6", 0, "ipv6.plen")?) as usize
        };
        frame.get(eth.offset..end.min(frame.len()))?.to_vec()
    };
    Some(((src, kind.to_string(), id), inner))
}

/// The IPv4 payload reassembled from the frames tshark lists in `ip.fragments`.
fn reassemble(ip: &Value, all: &[Value]) -> Option<Vec<u8>> {
    let mut parts = Vec::new();
    for n in tshark::field_values(ip, "ip.fragment") {
        let l = all.get(num(&n) as usize - 1)?;
        let frame = tshark::frame_bytes(l);
        let raw = tshark::raws(l, "ip").into_iter().next()?;
        let hdr = num(&tshark::field_nth(l, "ip", 0, "ip.hdr_len")?) as usize;
        let len = num(&tshark::field_nth(l, "ip", 0, "ip.len")?) as usize;
        // tshark 4.0 shows the offset in 8-byte units.
        let off = num(&tshark::field_nth(l, "ip", 0, "ip.frag_offset")?) as usize * 8;
        parts.push((off, frame.get(raw.offset + hdr..raw.offset + len)?.to_vec()));
    }
    parts.sort_by_key(|(o, _)| *o);
    let mut out = Vec::new();
    for (off, p) in parts {
        out.resize(off, 0);
        out.extend_from_slice(&p);
    }
    Some(out)
}

/// Compares what tapwire wrote with what tshark expects, source by source and frame by frame;
/// panics naming the first difference.
pub fn assert_same_frames(what: &str, expected: &Frames, got: &Frames) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: sources differ from tshark's"
    );
    for (key, frames) in expected {
        let ours = &got[key];
        for (n, (a, b)) in ours.iter().zip(frames).enumerate() {
            assert!(
                a == b,
                "{what} {key:?} packet {n}: inner frame differs\n ours   {}\n tshark {}",
                hex::encode(a),
                hex::encode(b)
            );
        }
        assert_eq!(
            ours.len(),
            frames.len(),
            "{what} {key:?}: packet count differs from tshark's"
        );
    }
}
