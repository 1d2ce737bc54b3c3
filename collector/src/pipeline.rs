//! Decapsulation plus demultiplexing plus accounting: what every input (capture files, raw
//! sockets, UDP sockets, AF_PACKET) feeds, and what every output (files, TAP) is fed from.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tapwire_formats::capture::LinkType;
use tapwire_formats::decap::{self, Config, Decapsulator, Meta, NotMirror, Outcome, SourceKey};
use tapwire_formats::wire::Reason;

use crate::demux::{Demux, SeqEvent, SourceId};

/// Default bound on distinct sources: enough for any real deployment, small enough that a
/// flood of spoofed outer addresses cannot exhaust memory.
pub const MAX_SOURCES: usize = 65_536;

/// Packet counts by outcome, for the whole pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets_read: u64,
    pub decapsulated: u64,
    /// Outer fragments waiting for the rest of their datagram.
    pub held_fragments: u64,
    pub not_mirror: BTreeMap<NotMirror, u64>,
    pub malformed: BTreeMap<Reason, u64>,
    /// Packets of new sources refused because the source table was full.
    pub source_table_full: u64,
}

/// A mirrored frame, demultiplexed and accounted, ready for the outputs.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub source: SourceId,
    pub key: SourceKey,
    /// The first packet of a source not seen before.
    pub new_source: bool,
    pub frame: &'a [u8],
    pub link: LinkType,
    pub meta: Meta,
    pub seq_event: Option<SeqEvent>,
}

impl Delivery<'_> {
    /// Whether [`Delivery::comment`] has anything to say.
    #[inline]
    pub fn has_comment(&self) -> bool {
        self.seq_event.is_some() || self.meta.truncated || self.meta.gre_checksum_bad
    }

    /// The capture-file comment this packet deserves: a sequence gap or restart before it,
    /// the sender's truncation, a GRE checksum that did not verify. Appends to `out`; nothing
    /// for an ordinary packet.
    pub fn comment(&self, out: &mut String) {
        if let Some(ev) = self.seq_event {
            out.push_str(&ev.comment());
        }
        let notes = [
            (
                self.meta.truncated,
                "tapwire: truncated by the sender (ERSPAN T bit)",
            ),
            (
                self.meta.gre_checksum_bad,
                "tapwire: GRE checksum does not verify (frame kept as received)",
            ),
        ];
        for (_, note) in notes.iter().filter(|(on, _)| *on) {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(note);
        }
    }
}

#[derive(Debug)]
pub struct Pipeline {
    decap: Decapsulator,
    ports: decap::Ports,
    demux: Demux,
    totals: Totals,
}

impl Pipeline {
    pub fn new(config: Config, max_sources: usize) -> Self {
        let ports = config.ports.clone();
        Pipeline {
            decap: Decapsulator::new(config),
            ports,
            demux: Demux::new(max_sources),
            totals: Totals::default(),
        }
    }

    pub fn demux(&self) -> &Demux {
        &self.demux
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn defrag_stats(&self) -> tapwire_formats::defrag::Stats {
        self.decap.defrag_stats()
    }

    pub fn pending_datagrams(&self) -> usize {
        self.decap.pending_datagrams()
    }

    /// Drops incomplete outer datagrams older than the reassembly timeout.
    pub fn expire(&mut self, now_ns: u64) {
        self.decap.expire(now_ns);
    }

    /// A link-layer frame from a capture file or an AF_PACKET ring.
    #[inline]
    pub fn link<'a>(
        &'a mut self,
        link: LinkType,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_link(link, data, ts_ns);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// An IP datagram from a raw IPv4 socket.
    pub fn ip<'a>(&'a mut self, data: &'a [u8], ts_ns: u64) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_ip(data, ts_ns);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// A GRE packet from a raw IPv6 socket, sent by `src`.
    pub fn gre<'a>(&'a mut self, src: IpAddr, data: &'a [u8], ts_ns: u64) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = self.decap.decap_gre(src, data);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// A UDP payload sent by `src` to `dst_port`.
    pub fn udp<'a>(
        &'a mut self,
        src: IpAddr,
        dst_port: u16,
        data: &'a [u8],
        ts_ns: u64,
    ) -> Option<Delivery<'a>> {
        self.totals.packets_read += 1;
        let outcome = decap::decap_udp(&self.ports, src, dst_port, data);
        account(&mut self.demux, &mut self.totals, outcome, ts_ns)
    }

    /// The source key of an id handed out in a [`Delivery`].
    pub fn key(&self, id: SourceId) -> SourceKey {
        self.demux.source(id).key
    }
}

#[inline]
fn account<'a>(
    demux: &mut Demux,
    totals: &mut Totals,
    outcome: Outcome<'a>,
    ts_ns: u64,
) -> Option<Delivery<'a>> {
    let m = match outcome {
        Outcome::Mirrored(m) => m,
        Outcome::NotMirror(kind) => {
            *totals.not_mirror.entry(kind).or_default() += 1;
            return None;
        }
        Outcome::Malformed(reason) => {
            *totals.malformed.entry(reason).or_default() += 1;
            return None;
        }
        Outcome::Held => {
            totals.held_fragments += 1;
            return None;
        }
    };
    let Ok((source, new_source)) = demux.source_id(&m.key) else {
        totals.source_table_full += 1;
        return None;
    };
    totals.decapsulated += 1;
    let seq_event = demux.account(source, m.frame.len(), &m.meta, ts_ns);
    Some(Delivery {
        source,
        key: m.key,
        new_source,
        frame: m.frame,
        link: m.link,
        meta: m.meta,
        seq_event,
    })
}
