//! One capture file on disk: an [`Encoder`] whose buffer is written out in large blocks of whole
//! records, so the file is a valid capture up to its last complete record at any moment.
//! The file handle may be closed to respect an open-files bound and reopened for appending.
//! Blocks go to disk through a [`Writer`] thread ([`CaptureFile::flush_to`]), which copies them
//! into the page cache while the caller encodes the next ones.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use rustc_hash::{FxHashMap, FxHashSet};
use tapwire_formats::capture::{EncodeError, Encoder, Format, InterfaceInfo, LinkType, PacketInfo};

use crate::demux::SourceId;

#[derive(Debug)]
pub struct CaptureFile {
    path: PathBuf,
    /// Shared with the [`Writer`] jobs still writing through it.
    file: Option<Arc<File>>,
    enc: Encoder,
    interfaces: FxHashMap<(SourceId, LinkType), u32>,
    /// The interface of the last packet: a per-source file has one, so this always hits.
    last_interface: Option<((SourceId, LinkType), u32)>,
    bytes_written: u64,
    packets: u64,
}

impl CaptureFile {
    /// Creates (or truncates) `path`. Nothing but the header is encoded until packets arrive.
    pub fn create(path: &Path, format: Format) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(CaptureFile {
            path: path.to_path_buf(),
            file: Some(Arc::new(file)),
            enc: Encoder::new(format),
            interfaces: FxHashMap::default(),
            last_interface: None,
            bytes_written: 0,
            packets: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk plus bytes still buffered.
    pub fn size_bytes(&self) -> u64 {
        self.bytes_written + self.enc.pending_len() as u64
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    pub fn pending_bytes(&self) -> usize {
        self.enc.pending_len()
    }

    /// The interface id for `source`'s frames of type `link`, described by `info` when new.
    #[inline]
    pub fn interface(
        &mut self,
        source: SourceId,
        link: LinkType,
        info: impl FnOnce() -> InterfaceInfo,
    ) -> Result<u32, EncodeError> {
        if let Some((k, id)) = self.last_interface
            && k == (source, link)
        {
            return Ok(id);
        }
        let id = match self.interfaces.get(&(source, link)) {
            Some(&id) => id,
            None => {
                let id = self.enc.add_interface(&info())?;
                self.interfaces.insert((source, link), id);
                id
            }
        };
        self.last_interface = Some(((source, link), id));
        Ok(id)
    }

    #[inline]
    pub fn write(&mut self, interface: u32, packet: &PacketInfo<'_>) -> Result<(), EncodeError> {
        self.enc.packet(interface, packet)?;
        self.packets += 1;
        Ok(())
    }

    /// Hands the buffered records to `writer` as job `key` (reopening the file for append if
    /// it was closed), and goes on with `spare` as the buffer. The writer reports the result.
    pub fn flush_to(&mut self, writer: &mut Writer, key: usize, spare: Vec<u8>) -> io::Result<()> {
        if self.enc.pending_len() == 0 {
            return Ok(());
        }
        let file = self.handle()?;
        let buf = std::mem::replace(self.enc.buffer(), spare);
        self.bytes_written += buf.len() as u64;
        writer.write(key, file, buf);
        Ok(())
    }

    /// The open handle, reopened for append if it was closed.
    fn handle(&mut self) -> io::Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(OpenOptions::new().append(true).open(&self.path)?);
        self.file = Some(Arc::clone(&f));
        Ok(f)
    }

    /// Closes the handle without flushing (after [`CaptureFile::flush_to`]: a job still
    /// writing through it keeps it open until done).
    pub fn drop_handle(&mut self) {
        self.file = None;
    }

    /// Drops buffered bytes that could not be written (the disk is full); returns how many.
    pub fn discard_pending(&mut self) -> usize {
        let buf = self.enc.buffer();
        let n = buf.len();
        buf.clear();
        n
    }

    /// Returns excess buffer memory after a burst.
    pub fn shrink(&mut self, keep_bytes: usize) {
        let buf = self.enc.buffer();
        if buf.is_empty() && buf.capacity() > keep_bytes {
            buf.shrink_to(keep_bytes);
        }
    }
}

/// Jobs queued for the [`Writer`] at most: bounds the memory and handles in flight.
const WRITER_QUEUE: usize = 4;

struct Job {
    key: usize,
    file: Arc<File>,
    buf: Vec<u8>,
}

/// What the [`Writer`] did with one job: `result` is `Err` when the write failed, or when an
/// earlier job of the same key had failed and this one was not tried (so that no record lands
/// after a partly written one). The buffer comes back, emptied, for reuse.
#[derive(Debug)]
pub struct Done {
    pub key: usize,
    pub len_bytes: usize,
    pub result: io::Result<()>,
    pub buf: Vec<u8>,
}

/// A thread that writes capture blocks in the order given, so the caller encodes the next
/// block while the kernel copies the last one into the page cache.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start() -> io::Result<Writer> {
        let (jobs, rx) = bounded::<Job>(WRITER_QUEUE);
        // Unbounded, so the thread never waits for the caller; each result holds a buffer the
        // caller gave, so the caller's own pace bounds them.
        let (tx, done) = unbounded();
        let thread = std::thread::Builder::new()
            .name("tapwire-writer".into())
            .spawn(move || {
                let mut failed = FxHashSet::default();
                for Job { key, file, mut buf } in rx {
                    let result = if failed.contains(&key) {
                        Err(io::Error::other("not written after an earlier failure"))
                    } else {
                        (&*file).write_all(&buf)
                    };
                    if result.is_err() {
                        failed.insert(key);
                    }
                    drop(file);
                    let len_bytes = buf.len();
                    buf.clear();
                    let _ = tx.send(Done {
                        key,
                        len_bytes,
                        result,
                        buf,
                    });
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues `buf` for `file`; waits while [`WRITER_QUEUE`] jobs are queued.
    fn write(&mut self, key: usize, file: Arc<File>, buf: Vec<u8>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { key, file, buf });
        }
    }

    /// The jobs done since the last call, in order.
    pub fn finished(&self) -> impl Iterator<Item = Done> + '_ {
        self.done.try_iter()
    }

    /// Waits for every queued job; returns their results, in order.
    pub fn join(&mut self) -> Vec<Done> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done.try_iter().collect()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_keeps_order_and_skips_a_failed_file_only() {
        let dir = std::env::temp_dir().join(format!("tapwire-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        let bad = dir.join("bad");
        std::fs::write(&bad, b"").unwrap();
        let good_file = Arc::new(File::create(&good).unwrap());
        // Opened read-only: every write to it fails.
        let bad_file = Arc::new(File::open(&bad).unwrap());
        let mut w = Writer::start().unwrap();
        w.write(1, Arc::clone(&good_file), b"one ".to_vec());
        w.write(2, Arc::clone(&bad_file), b"lost".to_vec());
        w.write(1, Arc::clone(&good_file), b"two ".to_vec());
        // Would succeed on its own; skipped so nothing follows a partly written block.
        w.write(2, Arc::clone(&bad_file), b"".to_vec());
        w.write(1, good_file, b"three".to_vec());
        let done = w.join();
        let got: Vec<(usize, usize, bool)> = done
            .iter()
            .map(|d| (d.key, d.len_bytes, d.result.is_ok()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 4, true),
                (2, 4, false),
                (1, 4, true),
                (2, 0, false),
                (1, 5, true)
            ]
        );
        assert!(done.iter().all(|d| d.buf.is_empty()));
        assert_eq!(std::fs::read(&good).unwrap(), b"one two three");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
