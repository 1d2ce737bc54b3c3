//! One input capture file mapped read-only, so that `tapwire decap` parses its records in place
//! (no read copy into a buffer), with the pages behind the reader let go as it advances: the
//! process's resident memory stays bounded by [`RELEASE_STEP`] plus the kernel's read-ahead
//! whatever the file's size.
//!
//! Only regular files are mapped; pipes, terminals and other streams (stdin) go through the
//! read path, as does a file that cannot be mapped.
//!
//! A file changed while it is mapped: the mapping covers the size the file had when it was
//! opened, so bytes appended later are not read (a capture still being written ends at that
//! size, its last record possibly cut short: `capture_truncated_record`). Bytes rewritten in
//! place are seen as they are when read, like the read path would see them; every record is
//! still checked by the parser. A file *truncated* by another process while it is mapped makes
//! the next access past its new end fault with SIGBUS, which ends `tapwire decap` (the output
//! files are valid up to their last flushed block). That is accepted for offline input: the
//! alternatives (a SIGBUS handler that unwinds out of the parser, or reading everything through
//! a buffer) cost more than the case, in which the input is gone anyway, is worth.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;
use std::io;

use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};

/// Bytes read between two releases of the pages behind the reader.
pub const RELEASE_STEP: usize = 8 << 20;
/// Release boundaries are kept to whole pages of this size (4 KiB, or a multiple of it).
const PAGE: usize = 4096;

#[derive(Debug)]
pub struct MappedFile {
    map: Mmap,
    /// Pages before this offset have been let go.
    released: Cell<usize>,
    /// The next offset at which [`MappedFile::advance`] lets go of what is behind.
    next_release: Cell<usize>,
}

impl MappedFile {
    /// Maps `file` when it is a non-empty regular file; `None` for anything else (pipes,
    /// character devices, empty files) and when the file system cannot map it.
    pub fn open(file: &File) -> io::Result<Option<Self>> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() || meta.len() == 0 {
            return Ok(None);
        }
        // SAFETY: a read-only shared mapping of a regular file. The slice it gives is only read.
        // Another process may change the file while it is mapped (see the module doc): bytes
        // rewritten in place are read as they are, and every byte goes through the bounds-checked
        // parser, so that can change what is decoded but not make it read outside the mapping;
        // a truncation faults with SIGBUS, ending the process, which is accepted for offline
        // input.
        let map = match unsafe { MmapOptions::new().map(file) } {
            Ok(map) => map,
            Err(_) => return Ok(None),
        };
        // Read-ahead in large windows; a hint only.
        let _ = map.advise(Advice::Sequential);
        Ok(Some(MappedFile {
            map,
            released: Cell::new(0),
            next_release: Cell::new(RELEASE_STEP),
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tells the mapping that the reader is at `offset`: every [`RELEASE_STEP`] bytes, the
    /// whole pages before it are unmapped from the process (they stay in the page cache).
    #[inline]
    pub fn advance(&self, offset: usize) {
        if offset >= self.next_release.get() {
            self.release_before(offset);
        }
    }

    #[cold]
    fn release_before(&self, offset: usize) {
        let end = offset.min(self.map.len()) / PAGE * PAGE;
        let start = self.released.get();
        self.next_release.set(offset.saturating_add(RELEASE_STEP));
        if end <= start {
            return;
        }
        // SAFETY: MADV_DONTNEED on a shared file mapping only drops the page-table entries: a
        // later access to those pages faults them in again from the file (from the page cache),
        // with the same contents. Borrows of the mapping (records being processed) therefore
        // stay valid; nothing past `offset` is still needed by the caller anyway. Failure only
        // means the pages stay resident.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
        self.released.set(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("tapwire-mapfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..3 * RELEASE_STEP).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        drop(f);
        let m = MappedFile::open(&File::open(&path).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(m.bytes().len(), data.len());
        // Released pages read back the same.
        m.advance(RELEASE_STEP + 10);
        assert_eq!(m.released.get(), RELEASE_STEP);
        assert_eq!(m.bytes(), &data[..]);
        m.advance(RELEASE_STEP + 20);
        assert_eq!(m.released.get(), RELEASE_STEP);
        m.advance(usize::MAX);
        assert_eq!(m.released.get(), data.len());
        assert_eq!(m.bytes(), &data[..]);

        File::create(dir.join("empty")).unwrap();
        assert!(
            MappedFile::open(&File::open(dir.join("empty")).unwrap())
                .unwrap()
                .is_none()
        );
        let (r, _w) = std::io::pipe().unwrap();
        let r = File::from(std::os::fd::OwnedFd::from(r));
        assert!(MappedFile::open(&r).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
