//! One session's file output as the engine sees it: the current file's encoder and buffer, the
//! rotation policy, and what the disk thread reported. All file-system work is requested from
//! the disk thread ([`super::io`]); nothing here blocks. Each buffer handed over carries its
//! packets per source ([`Tally`]): they are pending until the disk thread reports them written
//! or lost.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;
use rustc_hash::FxHashMap;
use tapwire_formats::capture::{Encoder, Format, InterfaceStats, LinkType, PacketInfo};
use tapwire_formats::decap::SourceKey;
use tapwire_formats::index::{FrameKeys, KeyLog, is_gap_comment};

use super::io::{Cmd, DirState, FileId, Loss, OutDir, Prune, Shared, Tally};
use crate::config::{FilesConfig, RotateReason};
use crate::demux::SourceId;
use crate::offline::interface_info;
use tapwire_api_types::time::rfc3339_ns;

/// Buffered bytes per file before they go to disk: large writes keep the disk path fast.
pub const FLUSH_BYTES: usize = 1 << 20;
/// Bytes handed to the disk thread and not yet written, across all files, before new packets
/// are dropped (and counted) instead of queued without bound.
pub const MAX_BACKLOG_BYTES: u64 = 64 << 20;
/// After a failure to open or write, wait this long before trying again, doubling up to
/// [`MAX_RETRY_NS`] while it keeps failing.
const RETRY_NS: u64 = 1_000_000_000;
const MAX_RETRY_NS: u64 = 8_000_000_000;

/// When an output that failed may try again, pure: the delay doubles with each failure that
/// follows a retry; failures reported while waiting (buffers already under way when the first
/// failed) do not extend it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    delay_ns: u64,
    retry_at_ns: u64,
}

impl Backoff {
    pub fn fail(&mut self, now_ns: u64) {
        if now_ns < self.retry_at_ns {
            return;
        }
        self.delay_ns = match self.delay_ns {
            0 => RETRY_NS,
            d => (2 * d).min(MAX_RETRY_NS),
        };
        self.retry_at_ns = now_ns + self.delay_ns;
    }

    pub fn ready(&self, now_ns: u64) -> bool {
        now_ns >= self.retry_at_ns
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// Why a packet was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DiskGuard,
    WriteError,
    Backlog,
}

/// Everything the output needs from the engine to do its work.
pub struct Ctx<'a> {
    pub io: &'a Sender<Cmd>,
    pub shared: &'a Shared,
    pub pool: &'a mut Vec<Vec<u8>>,
    pub next_file_id: &'a mut FileId,
    /// Per-file flush threshold, from the memory budget and the number of open files.
    pub flush_bytes: usize,
}

/// Room past the flush threshold for the record that crosses it (a jumbo frame too), so a
/// buffer does not double: measured, doubled buffers made up half the RSS with 1024 sessions.
pub const BUFFER_SLACK_BYTES: usize = 16 << 10;

/// Whether a spare buffer is worth keeping under the flush threshold `flush_bytes`: one grown
/// under a larger threshold (before more files opened) would keep its touched pages resident.
pub fn buffer_fits(capacity: usize, flush_bytes: usize) -> bool {
    capacity <= 2 * (flush_bytes + BUFFER_SLACK_BYTES)
}

impl Ctx<'_> {
    /// An empty buffer for a file's records: a pooled one if it fits the current threshold.
    fn take_buffer(&mut self) -> Vec<u8> {
        while let Some(mut b) = self.pool.pop() {
            if buffer_fits(b.capacity(), self.flush_bytes) {
                b.clear();
                return b;
            }
        }
        Vec::with_capacity(self.flush_bytes + BUFFER_SLACK_BYTES)
    }
}

/// A source's packets and sequence loss (what its gaps said was lost) as the engine has
/// counted them so far, whatever their session did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub packets: u64,
    pub lost: u64,
}

/// A packet's source's counts before and after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub before: SourceCounts,
    pub after: SourceCounts,
}

/// What one interface of a file saw: the statistics block written when the file ends.
#[derive(Debug, Clone, Copy)]
struct Span {
    iface: u32,
    start_ns: u64,
    first: SourceCounts,
    last: SourceCounts,
}

impl Span {
    fn stats(&self, now_ns: u64) -> InterfaceStats {
        InterfaceStats {
            ts_ns: now_ns,
            start_ns: Some(self.start_ns),
            end_ns: Some(now_ns),
            received: Some(self.last.packets.saturating_sub(self.first.packets)),
            dropped: Some(self.last.lost.saturating_sub(self.first.lost)),
            ..InterfaceStats::default()
        }
    }
}

struct Current {
    id: FileId,
    path: PathBuf,
    enc: Encoder,
    /// Interface id and tally slot of each (source, link type) in this file.
    interfaces: FxHashMap<(SourceId, LinkType), (u32, usize)>,
    /// Per slot: the source, and its packets in the buffer not yet handed to the disk thread.
    slots: Vec<(SourceId, u64)>,
    /// Per slot: what its interface saw, for the statistics block at the end.
    spans: Vec<Span>,
    /// The file header and interface blocks in the buffer not yet handed over.
    blocks: Vec<Range<usize>>,
    opened_ns: u64,
    last_flush_ns: u64,
    bytes: u64,
    packets: u64,
    /// The keys of the packets in the buffer, for the file's index (`None`: not indexed).
    keys: Option<Box<KeyLog>>,
    /// The earliest and latest packet time in the buffer, for the catalog.
    ts: Option<(u64, u64)>,
}

impl Current {
    /// The packets in the buffer, per source; the counts start again from zero.
    fn take_tally(&mut self) -> Tally {
        let tally = self.slots.iter().copied().filter(|s| s.1 > 0).collect();
        for s in &mut self.slots {
            s.1 = 0;
        }
        tally
    }
}

pub struct FileOutput {
    session: Arc<str>,
    pub cfg: FilesConfig,
    dir: OutDir,
    dir_state: Arc<DirState>,
    current: Option<Current>,
    pub files_finished: u64,
    pub error: Option<String>,
    /// The error is the disk being full: it clears when the guard lets writing go on.
    error_disk_full: bool,
    backoff: Backoff,
    /// The last file name's time stamp and how many files already used it, so that files
    /// opened within one millisecond get new, increasing names (`_001`, `_002`...) and a name
    /// is never reused after `max_files` removed it.
    last_stem: (String, u32),
}

impl FileOutput {
    pub fn new(
        session: &str,
        cfg: FilesConfig,
        default_dir: &std::path::Path,
        shared: &Shared,
    ) -> Self {
        let dir = OutDir::of(cfg.dir.as_deref(), default_dir);
        FileOutput {
            session: session.into(),
            dir_state: shared.dir(&dir.path()),
            dir,
            cfg,
            current: None,
            files_finished: 0,
            error: None,
            error_disk_full: false,
            backoff: Backoff::default(),
            last_stem: (String::new(), 0),
        }
    }

    /// The directory, for display.
    pub fn dir(&self) -> PathBuf {
        self.dir.path()
    }

    pub fn current_path(&self) -> Option<&std::path::Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    pub fn current_bytes(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.bytes)
    }

    pub fn current_id(&self) -> Option<FileId> {
        self.current.as_ref().map(|c| c.id)
    }

    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    /// Encodes one packet into the current file's buffer (opening a file first if none is
    /// open); it is pending until the disk thread reports its buffer written or lost.
    /// `keys`: what the file's index records of the frame; `counted`: its source's counts, for
    /// the statistics block at the file's end.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        source: SourceId,
        key: &SourceKey,
        link: LinkType,
        packet: &PacketInfo<'_>,
        keys: &FrameKeys,
        counted: Counted,
        now_ns: u64,
    ) -> Result<(), Refusal> {
        if self.dir_state.low.load(Ordering::Relaxed) {
            return Err(Refusal::DiskGuard);
        }
        if self.error.is_some() && !self.backoff.ready(now_ns) {
            return Err(Refusal::WriteError);
        }
        if ctx.shared.backlog_bytes.load(Ordering::Relaxed) > MAX_BACKLOG_BYTES {
            return Err(Refusal::Backlog);
        }
        if self.current.is_none() {
            self.open(ctx, now_ns);
        }
        let Some(cur) = self.current.as_mut() else {
            return Err(Refusal::WriteError);
        };
        let (iface, slot) = match cur.interfaces.get(&(source, link)) {
            Some(&known) => known,
            None => {
                let start = cur.enc.pending_len();
                let Ok(iface) = cur.enc.add_interface(&interface_info(key, link)) else {
                    return Err(Refusal::WriteError);
                };
                let end = cur.enc.pending_len();
                if end > start {
                    cur.blocks.push(start..end);
                    cur.bytes += (end - start) as u64;
                }
                cur.slots.push((source, 0));
                cur.spans.push(Span {
                    iface,
                    start_ns: now_ns,
                    first: counted.before,
                    last: counted.before,
                });
                let known = (iface, cur.slots.len() - 1);
                cur.interfaces.insert((source, link), known);
                known
            }
        };
        let before = cur.enc.pending_len();
        if cur.enc.packet(iface, packet).is_err() {
            return Err(Refusal::WriteError);
        }
        let end = cur.enc.pending_len();
        cur.bytes += (end - before) as u64;
        if let Some(log) = cur.keys.as_mut() {
            let gap = packet.comment.filter(|c| is_gap_comment(c));
            log.packet(end, packet.ts_ns, iface, keys, gap);
        }
        cur.packets += 1;
        cur.ts = Some(cur.ts.map_or((packet.ts_ns, packet.ts_ns), |(lo, hi)| {
            (lo.min(packet.ts_ns), hi.max(packet.ts_ns))
        }));
        cur.slots[slot].1 += 1;
        cur.spans[slot].last = counted.after;
        if cur.enc.pending_len() >= ctx.flush_bytes {
            self.flush(ctx, now_ns);
        }
        if let Some(reason) = self.due(now_ns) {
            self.finish(ctx, reason, now_ns);
        }
        Ok(())
    }

    fn due(&self, now_ns: u64) -> Option<RotateReason> {
        let c = self.current.as_ref()?;
        self.cfg.rotate.due(c.opened_ns, c.bytes, c.packets, now_ns)
    }

    fn open(&mut self, ctx: &mut Ctx<'_>, now_ns: u64) {
        let id = *ctx.next_file_id;
        *ctx.next_file_id += 1;
        let stamp = compact_utc(now_ns);
        let mut stem = format!("{}_{stamp}", self.session);
        if self.last_stem.0 == stem {
            self.last_stem.1 += 1;
            stem = format!("{stem}_{:03}", self.last_stem.1);
        } else {
            self.last_stem = (stem.clone(), 0);
        }
        let prune = self.cfg.max_files.map(|max_files| Prune {
            session: self.session.to_string(),
            max_files,
        });
        let ext = self.cfg.format.extension();
        let _ = ctx.io.send(Cmd::Open {
            file: id,
            session: self.session.clone(),
            dir: self.dir.clone(),
            stem: stem.clone(),
            ext,
            prune,
        });
        let mut enc = Encoder::new(self.cfg.format);
        let mut buf = ctx.take_buffer();
        // Keep the section header the encoder wrote; give it a pooled buffer behind it.
        buf.extend_from_slice(enc.buffer());
        *enc.buffer() = buf;
        let header = enc.pending_len();
        let mut blocks = Vec::new();
        if header > 0 {
            blocks.push(0..header);
        }
        self.current = Some(Current {
            id,
            path: self.dir.path().join(format!("{stem}.{ext}")),
            bytes: header as u64,
            enc,
            interfaces: FxHashMap::default(),
            slots: Vec::new(),
            spans: Vec::new(),
            blocks,
            opened_ns: now_ns,
            last_flush_ns: now_ns,
            packets: 0,
            keys: ctx.shared.index.then(|| Box::new(KeyLog::new(0))),
            ts: None,
        });
    }

    /// Hands the buffered records to the disk thread.
    pub fn flush(&mut self, ctx: &mut Ctx<'_>, now_ns: u64) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        cur.last_flush_ns = now_ns;
        if cur.enc.pending_len() == 0 {
            return;
        }
        let fresh = ctx.take_buffer();
        let buf = std::mem::replace(cur.enc.buffer(), fresh);
        // The index ranges of this buffer; the next buffer's start at its offset 0.
        let index = cur.keys.as_mut().map(|log| {
            log.finish(buf.len());
            std::mem::replace(log, Box::new(KeyLog::new(0)))
        });
        ctx.shared
            .backlog_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let _ = ctx.io.send(Cmd::Write {
            file: cur.id,
            session: self.session.clone(),
            buf,
            tally: cur.take_tally(),
            blocks: std::mem::take(&mut cur.blocks),
            index,
            ts: cur.ts.take(),
        });
    }

    /// Ends the current file with a statistics block per interface (what its source sent and
    /// lost while the file was open), flushes, closes it and lets the next packet open a new
    /// one.
    pub fn finish(&mut self, ctx: &mut Ctx<'_>, reason: RotateReason, now_ns: u64) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let before = cur.enc.pending_len();
        for span in &cur.spans {
            // The interface exists: it was added before its span.
            let _ = cur.enc.statistics(span.iface, &span.stats(now_ns));
        }
        cur.bytes += (cur.enc.pending_len() - before) as u64;
        self.flush(ctx, now_ns);
        if let Some(cur) = self.current.take() {
            tracing::debug!(session = &*self.session, path = %cur.path.display(), ?reason, "file finished");
            let _ = ctx.io.send(Cmd::Close {
                file: cur.id,
                session: self.session.to_string(),
                on_finish: self.cfg.on_finish.clone(),
            });
            ctx.pool.push(cur.enc.into_buffer());
            self.files_finished += 1;
        }
    }

    /// Periodic work: flush data older than a second, rotate on time.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>, now_ns: u64) {
        // A full disk's error clears once the guard lets writing go on.
        if self.error_disk_full && !self.dir_state.low.load(Ordering::Relaxed) {
            self.clear_error();
        }
        let Some(cur) = self.current.as_ref() else {
            return;
        };
        let stale = now_ns.saturating_sub(cur.last_flush_ns) >= 1_000_000_000
            || cur.enc.pending_len() >= ctx.flush_bytes;
        let has_packets = cur.packets > 0;
        if stale {
            self.flush(ctx, now_ns);
        }
        // Time rotation only for files that hold packets; the next packet opens the next file.
        if has_packets && let Some(reason) = self.due(now_ns) {
            self.finish(ctx, reason, now_ns);
        }
    }

    pub fn opened(&mut self, id: FileId, path: PathBuf) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.id == id) {
            cur.path = path;
            self.clear_error();
        }
    }

    /// A buffer of file `id` is on disk. A full disk's error stays while the guard holds (a
    /// buffer may still fit in what a cut-back freed).
    pub fn written(&mut self, id: FileId) {
        if self.current_id() == Some(id) && !self.error_disk_full {
            self.clear_error();
        }
    }

    fn clear_error(&mut self) {
        if self.error.take().is_some() {
            tracing::info!(session = &*self.session, "output writable again");
        }
        self.error_disk_full = false;
        self.backoff.reset();
    }

    /// The file could not be created: drop it (the packets still in its buffer are returned,
    /// lost; those handed over come back as failed writes) and retry later.
    pub fn open_failed(&mut self, id: FileId, error: String, now_ns: u64) -> Tally {
        let mut lost = Tally::new();
        if let Some(mut cur) = self.current.take_if(|c| c.id == id) {
            lost = cur.take_tally();
        }
        self.error = Some(error);
        self.error_disk_full = false;
        self.backoff.fail(now_ns);
        lost
    }

    /// A buffer could not be written (the file was cut back to its last good length). A full
    /// disk is the guard's to hold; any other error holds this output for the backoff, after
    /// which writing goes on in the same file.
    /// Failures of a file that is no longer the current one (it could not be created, or was
    /// finished) keep the error already shown, which says more.
    pub fn write_failed(&mut self, id: FileId, loss: Loss, error: String, now_ns: u64) {
        if self.error.is_none() || self.current_id() == Some(id) {
            self.error = Some(error);
            self.error_disk_full = loss == Loss::DiskFull;
        }
        if loss == Loss::WriteError {
            self.backoff.fail(now_ns);
        }
    }

    /// The file vanished (its directory was removed): start a new one with the next packet,
    /// without waiting for a retry (the error shows until it opens).
    pub fn vanished(&mut self, ctx: &mut Ctx<'_>, id: FileId, now_ns: u64) {
        if self.current.as_ref().is_some_and(|c| c.id == id) {
            tracing::warn!(session = &*self.session, dir = %self.dir.path().display(), "capture file vanished; starting a new one");
            self.finish(ctx, RotateReason::Requested, now_ns);
            self.backoff.reset();
        }
    }
}

/// `20261121T054100.123Z`: sortable as text, no separators that trouble shells, and fine
/// enough that files rotated within one second still sort in the order written.
pub fn compact_utc(ts_ns: u64) -> String {
    let s = rfc3339_ns(ts_ns);
    // 2026-11-21T05:41:00.123456789Z
    format!(
        "{}{}{}T{}{}{}.{}Z",
        &s[0..4],
        &s[5..7],
        &s[8..10],
        &s[11..13],
        &s[14..16],
        &s[17..19],
        &s[20..23]
    )
}

/// A format's name as the configuration spells it.
pub fn format_name(f: Format) -> &'static str {
    match f {
        Format::Pcapng => "pcapng",
        Format::Pcap { nanos: false } => "pcap",
        Format::Pcap { nanos: true } => "pcap-ns",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_grown_under_a_larger_threshold_are_not_reused() {
        let (io, _rx) = crossbeam_channel::unbounded();
        let shared = Shared::default();
        let mut pool = vec![
            Vec::with_capacity(64 << 10),
            Vec::with_capacity(FLUSH_BYTES),
        ];
        let mut next = 0;
        let mut ctx = Ctx {
            io: &io,
            shared: &shared,
            pool: &mut pool,
            next_file_id: &mut next,
            flush_bytes: 64 << 10,
        };
        // The 1 MiB buffer (last in, first out) is dropped; the 64 KiB one is reused.
        let b = ctx.take_buffer();
        assert!(b.capacity() >= 64 << 10 && b.capacity() < FLUSH_BYTES);
        assert!(ctx.pool.is_empty());
        // An empty pool gives a buffer sized for the threshold and the record crossing it.
        let b = ctx.take_buffer();
        assert!(b.capacity() >= (64 << 10) + BUFFER_SLACK_BYTES);
        assert!(buffer_fits(b.capacity(), 64 << 10));
        assert!(!buffer_fits(FLUSH_BYTES, 64 << 10));
    }

    #[test]
    fn retries_back_off_and_failures_while_waiting_do_not_extend_it() {
        let s = 1_000_000_000;
        let mut b = Backoff::default();
        assert!(b.ready(0));
        b.fail(10 * s);
        assert!(!b.ready(10 * s) && b.ready(11 * s));
        // Buffers already under way fail too: the same outage, the same wait.
        b.fail(10 * s + 1);
        assert!(b.ready(11 * s));
        // Each retry that fails doubles the wait, up to the maximum.
        let mut now = 11 * s;
        for want in [2, 4, 8, 8] {
            b.fail(now);
            assert!(
                !b.ready(now + want * s - 1) && b.ready(now + want * s),
                "{want} s"
            );
            now += want * s;
        }
        b.reset();
        assert!(b.ready(now));
        b.fail(now);
        assert!(b.ready(now + s), "back to 1 s after a success");
    }

    /// Each buffer handed to the disk thread says which packets of which source it holds and
    /// where its header and interface blocks are; what was never handed over comes back from a
    /// failed open.
    #[test]
    fn buffers_carry_their_packets_per_source_and_their_blocks() {
        use tapwire_formats::decap::Kind;
        let (io, rx) = crossbeam_channel::unbounded();
        let shared = Shared::default();
        let dir = std::env::temp_dir().join("tapwire-output-unit-never-created");
        let mut out = FileOutput::new("s", FilesConfig::default(), &dir, &shared);
        let (mut pool, mut next) = (Vec::new(), 1);
        let mut ctx = Ctx {
            io: &io,
            shared: &shared,
            pool: &mut pool,
            next_file_id: &mut next,
            flush_bytes: FLUSH_BYTES,
        };
        let key = |id| SourceKey {
            src: "10.0.0.5".parse().unwrap(),
            kind: Kind::ErspanII,
            id,
        };
        let frame = [0u8; 64];
        let packet = PacketInfo {
            ts_ns: 1,
            orig_len: 64,
            data: &frame,
            direction: None,
            comment: None,
        };
        let write = |out: &mut FileOutput, ctx: &mut Ctx<'_>, sources: &[u32], now_ns| {
            for &source in sources {
                out.write(
                    ctx,
                    SourceId::new(source, 0),
                    &key(source),
                    LinkType::Ethernet,
                    &packet,
                    &FrameKeys::default(),
                    Counted::default(),
                    now_ns,
                )?;
            }
            Ok(())
        };
        write(&mut out, &mut ctx, &[7, 7, 9, 7], 0).unwrap();
        out.flush(&mut ctx, 0);
        write(&mut out, &mut ctx, &[9, 9], 0).unwrap();
        out.flush(&mut ctx, 0);
        write(&mut out, &mut ctx, &[11], 0).unwrap();
        let writes: Vec<(Vec<u8>, Tally, Vec<Range<usize>>)> = rx
            .try_iter()
            .filter_map(|c| match c {
                Cmd::Write {
                    buf, tally, blocks, ..
                } => Some((buf, tally, blocks)),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 2);
        let block_type = |buf: &[u8], r: &Range<usize>| {
            u32::from_ne_bytes(buf[r.start..r.start + 4].try_into().unwrap())
        };
        // Section header, then the interfaces of sources 7 and 9.
        let (buf, tally, blocks) = &writes[0];
        let id = |slot| SourceId::new(slot, 0);
        assert_eq!(tally, &vec![(id(7), 3), (id(9), 1)]);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].start, 0);
        assert_eq!(block_type(buf, &blocks[0]), 0x0A0D_0D0A);
        assert!(blocks[1..].iter().all(|b| block_type(buf, b) == 1));
        // No new interface in the second buffer.
        assert_eq!((&writes[1].1, writes[1].2.len()), (&vec![(id(9), 2)], 0));
        // The file cannot be created: the packet still buffered is returned as lost.
        assert_eq!(out.open_failed(1, "no".into(), 0), vec![(id(11), 1)]);
        assert!(!out.is_open());
        assert_eq!(out.error.as_deref(), Some("no"));
        // Held (packets refused) until the backoff passes, then a new file is tried.
        assert_eq!(
            write(&mut out, &mut ctx, &[11], 1),
            Err(Refusal::WriteError)
        );
        write(&mut out, &mut ctx, &[11], RETRY_NS).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Cmd::Open { file: 2, .. })));
    }

    /// A finished pcapng file ends with one statistics block per interface: its source's
    /// packets and sequence loss between the file's first and last packet of it.
    #[test]
    fn finished_files_end_with_statistics_per_interface() {
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as O;
        use pcap_file::pcapng::{Block, PcapNgReader};
        use tapwire_formats::decap::Kind;
        let (io, rx) = crossbeam_channel::unbounded();
        let shared = Shared::default();
        let dir = std::env::temp_dir().join("tapwire-output-unit-never-created");
        let mut out = FileOutput::new("s", FilesConfig::default(), &dir, &shared);
        let (mut pool, mut next) = (Vec::new(), 1);
        let mut ctx = Ctx {
            io: &io,
            shared: &shared,
            pool: &mut pool,
            next_file_id: &mut next,
            flush_bytes: FLUSH_BYTES,
        };
        let frame = [0u8; 60];
        let packet = PacketInfo {
            ts_ns: 1,
            orig_len: 60,
            data: &frame,
            direction: None,
            comment: None,
        };
        let key = |id| SourceKey {
            src: "10.0.0.5".parse().unwrap(),
            kind: Kind::ErspanII,
            id,
        };
        let counts = |packets, lost| SourceCounts { packets, lost };
        // Source 7: packets 11-13 of it, the 12th after a gap of 4. Source 9: one packet, its
        // 101st, after 100 the session did not write.
        for (source, before, after, now) in [
            (7, counts(10, 2), counts(11, 2), 5),
            (9, counts(100, 0), counts(101, 0), 6),
            (7, counts(11, 2), counts(12, 6), 7),
            (7, counts(12, 6), counts(13, 6), 8),
        ] {
            out.write(
                &mut ctx,
                SourceId::new(source, 0),
                &key(source),
                LinkType::Ethernet,
                &packet,
                &FrameKeys::default(),
                Counted { before, after },
                now,
            )
            .unwrap();
        }
        out.finish(&mut ctx, RotateReason::Shutdown, 20);
        let bytes: Vec<u8> = rx
            .try_iter()
            .filter_map(|c| match c {
                Cmd::Write { buf, .. } => Some(buf),
                _ => None,
            })
            .flatten()
            .collect();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut isbs = Vec::new();
        let mut last_is_isb = false;
        while let Some(block) = r.next_block() {
            let (block, _) = block.unwrap();
            last_is_isb = matches!(block, Block::InterfaceStatistics(_));
            if let Block::InterfaceStatistics(isb) = block {
                isbs.push((isb.interface_id, isb.into_owned().options));
            }
        }
        assert!(last_is_isb, "the statistics end the file");
        let ns = std::time::Duration::from_nanos;
        assert_eq!(
            isbs,
            vec![
                (
                    0,
                    vec![
                        O::IsbStartTime(ns(5)),
                        O::IsbEndTime(ns(20)),
                        O::IsbIfRecv(3),
                        O::IsbIfDrop(4)
                    ]
                ),
                (
                    1,
                    vec![
                        O::IsbStartTime(ns(6)),
                        O::IsbEndTime(ns(20)),
                        O::IsbIfRecv(1),
                        O::IsbIfDrop(0)
                    ]
                ),
            ]
        );
    }

    #[test]
    fn compact_time() {
        assert_eq!(
            compact_utc(1_700_000_000_123_456_789),
            "20231114T221320.123Z"
        );
    }
}
