//! One session's file output as the engine sees it: the current file's encoder and buffer, the
//! rotation policy, and what the disk thread reported. All file-system work is requested from
//! the disk thread ([`super::io`]); nothing here blocks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;
use rustc_hash::FxHashMap;
use tapwire_formats::capture::{Encoder, Format, LinkType, PacketInfo};
use tapwire_formats::decap::SourceKey;

use super::io::{Cmd, DirState, FileId, Prune, Shared};
use crate::config::{FilesConfig, RotateReason};
use crate::demux::SourceId;
use crate::offline::interface_info;
use tapwire_api_types::time::rfc3339_ns;

/// Buffered bytes per file before they go to disk: large writes keep the disk path fast.
pub const FLUSH_BYTES: usize = 1 << 20;
/// Bytes handed to the disk thread and not yet written, across all files, before new packets
/// are dropped (and counted) instead of queued without bound.
pub const MAX_BACKLOG_BYTES: u64 = 64 << 20;
/// After a failure to open, wait this long before trying again.
const RETRY_NS: u64 = 2_000_000_000;

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

struct Current {
    id: FileId,
    path: PathBuf,
    enc: Encoder,
    interfaces: FxHashMap<(SourceId, LinkType), u32>,
    opened_ns: u64,
    last_flush_ns: u64,
    bytes: u64,
    packets: u64,
    /// Packets encoded but not yet handed to the disk thread.
    pending_packets: u64,
}

pub struct FileOutput {
    session: String,
    pub cfg: FilesConfig,
    dir: PathBuf,
    dir_state: Arc<DirState>,
    current: Option<Current>,
    pub files_finished: u64,
    pub error: Option<String>,
    retry_at_ns: u64,
    /// Ids of the current and recently finished files, whose writes may still be reported.
    recent: std::collections::VecDeque<FileId>,
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
        let dir = cfg.dir.clone().unwrap_or_else(|| default_dir.to_path_buf());
        FileOutput {
            session: session.to_string(),
            dir_state: shared.dir(&dir),
            dir,
            cfg,
            current: None,
            files_finished: 0,
            error: None,
            retry_at_ns: 0,
            recent: std::collections::VecDeque::new(),
            last_stem: (String::new(), 0),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
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

    /// Whether file `id` is this output's, current or recently finished.
    pub fn owns(&self, id: FileId) -> bool {
        self.recent.contains(&id)
    }

    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    /// The disk guard or an open failure holds this output.
    pub fn held(&self) -> bool {
        self.dir_state.low.load(Ordering::Relaxed) || self.error.is_some()
    }

    /// Writes one packet, opening a file first if none is open.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        source: SourceId,
        key: &SourceKey,
        link: LinkType,
        packet: &PacketInfo<'_>,
        now_ns: u64,
    ) -> Result<(), Refusal> {
        if self.dir_state.low.load(Ordering::Relaxed) {
            return Err(Refusal::DiskGuard);
        }
        if self.error.is_some() && now_ns < self.retry_at_ns {
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
        let iface = cur.interfaces.get(&(source, link)).copied().map_or_else(
            || cur.enc.add_interface(&interface_info(key, link)).ok(),
            Some,
        );
        let Some(iface) = iface else {
            return Err(Refusal::WriteError);
        };
        cur.interfaces.insert((source, link), iface);
        let before = cur.enc.pending_len();
        if cur.enc.packet(iface, packet).is_err() {
            return Err(Refusal::WriteError);
        }
        cur.bytes += (cur.enc.pending_len() - before) as u64;
        cur.packets += 1;
        cur.pending_packets += 1;
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
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        let prune = self.cfg.max_files.map(|max_files| Prune {
            session: self.session.clone(),
            max_files,
        });
        let ext = self.cfg.format.extension();
        let _ = ctx.io.send(Cmd::Open {
            file: id,
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
        self.current = Some(Current {
            id,
            path: self.dir.join(format!("{stem}.{ext}")),
            bytes: enc.pending_len() as u64,
            enc,
            interfaces: FxHashMap::default(),
            opened_ns: now_ns,
            last_flush_ns: now_ns,
            packets: 0,
            pending_packets: 0,
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
        ctx.shared
            .backlog_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let _ = ctx.io.send(Cmd::Write {
            file: cur.id,
            buf,
            packets: cur.pending_packets,
        });
        cur.pending_packets = 0;
    }

    /// Flushes, closes the current file and lets the next packet open a new one.
    pub fn finish(&mut self, ctx: &mut Ctx<'_>, reason: RotateReason, now_ns: u64) {
        if self.current.is_none() {
            return;
        }
        self.flush(ctx, now_ns);
        if let Some(cur) = self.current.take() {
            tracing::debug!(session = self.session, path = %cur.path.display(), ?reason, "file finished");
            let _ = ctx.io.send(Cmd::Close {
                file: cur.id,
                session: self.session.clone(),
                on_finish: self.cfg.on_finish.clone(),
            });
            ctx.pool.push(cur.enc.into_buffer());
            self.files_finished += 1;
        }
    }

    /// Periodic work: flush data older than a second, rotate on time.
    pub fn tick(&mut self, ctx: &mut Ctx<'_>, now_ns: u64) {
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
        }
        if self.error.take().is_some() {
            tracing::info!(session = self.session, "output writable again");
        }
    }

    /// The file could not be created: drop it and retry later.
    pub fn open_failed(&mut self, id: FileId, error: String, now_ns: u64) -> u64 {
        let mut lost = 0;
        if let Some(cur) = self.current.take_if(|c| c.id == id) {
            lost = cur.packets;
        }
        self.error = Some(error);
        self.retry_at_ns = now_ns + RETRY_NS;
        lost
    }

    pub fn write_failed(&mut self, error: String) {
        self.error = Some(error);
        self.retry_at_ns = 0;
    }

    /// The file vanished (its directory was removed): start a new one with the next packet.
    pub fn vanished(&mut self, ctx: &mut Ctx<'_>, id: FileId, now_ns: u64) {
        if self.current.as_ref().is_some_and(|c| c.id == id) {
            tracing::warn!(session = self.session, dir = %self.dir.display(), "capture file vanished; starting a new one");
            self.finish(ctx, RotateReason::Requested, now_ns);
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
    fn compact_time() {
        assert_eq!(
            compact_utc(1_700_000_000_123_456_789),
            "20231114T221320.123Z"
        );
    }
}
