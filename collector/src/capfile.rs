//! One capture file on disk: an [`Encoder`] whose buffer is written out in large blocks of whole
//! records, so the file is a valid capture up to its last complete record at any moment.
//! The file handle may be closed to respect an open-files bound and reopened for appending.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use tapwire_formats::capture::{EncodeError, Encoder, Format, InterfaceInfo, LinkType, PacketInfo};

use crate::demux::SourceId;

#[derive(Debug)]
pub struct CaptureFile {
    path: PathBuf,
    file: Option<File>,
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
            file: Some(file),
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

    /// Writes the buffered records to disk, reopening the file for append if it was closed.
    /// On error the buffer is kept: nothing encoded is lost until the caller gives up.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.enc.pending_len() == 0 {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        }
        let buf = self.enc.buffer();
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf)?;
        }
        self.bytes_written += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Drops buffered bytes that could not be written (the disk is full); returns how many.
    pub fn discard_pending(&mut self) -> usize {
        let buf = self.enc.buffer();
        let n = buf.len();
        buf.clear();
        n
    }

    /// Flushes and closes the handle; the file can still be written later.
    pub fn close_handle(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file = None;
        Ok(())
    }

    /// Returns excess buffer memory after a burst.
    pub fn shrink(&mut self, keep_bytes: usize) {
        let buf = self.enc.buffer();
        if buf.is_empty() && buf.capacity() > keep_bytes {
            buf.shrink_to(keep_bytes);
        }
    }
}
