//! Monitor interfaces: a session's inner frames written live to a TAP device for an IDS or a
//! tcpdump to read, optionally inside another network namespace.
//!
//! The engine never waits for a TAP: it copies the frame into a bounded queue that a writer
//! thread drains into the device. When the queue is full the frame is dropped for this TAP only
//! and counted (`tap_dropped`); files and other outputs are unaffected.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tapwire_formats::capture::LinkType;
use tapwire_formats::wire::ethernet::{self, EtherType};

use crate::config::{NETNS_DIR, validate_netns_name};
pub use crate::config::{TapConfig, validate_tap_name as validate_name};
use crate::filter::Filter;

/// Counters of one TAP output.
#[derive(Debug, Default)]
pub struct TapCounters {
    pub written: AtomicU64,
    /// Dropped because the queue was full: the device or its reader could not keep up.
    pub dropped: AtomicU64,
    /// Writes the kernel refused.
    pub errors: AtomicU64,
    /// Not sent: the TAP's own filter did not match.
    pub filtered: AtomicU64,
}

/// The engine's handle on a running TAP output.
pub struct TapOutput {
    pub config: TapConfig,
    pub counters: Arc<TapCounters>,
    filter: Option<Filter>,
    /// `None` once dropping: the writer sees the queue close, finishes, and closes the device.
    queue: Option<Sender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Whether the collector created the device (and so removes it unless persistent).
    pub created: bool,
}

impl Drop for TapOutput {
    /// Waits for the writer to close the device, so that a TAP of the same name can be created
    /// right after (a reconfigured session).
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl TapOutput {
    /// Creates or attaches the device and starts its writer thread. A name that belongs to an
    /// interface that is not a TAP is refused: tapwire never takes over a foreign interface.
    pub fn start(config: TapConfig) -> Result<TapOutput, String> {
        validate_name(&config.name)?;
        // Compiled when the definition was checked.
        let filter = config.filter.clone();
        let (device, created) = open_in(config.netns.as_deref(), &config)?;
        let counters = Arc::new(TapCounters::default());
        let (queue, rx) = bounded::<Vec<u8>>(config.queue_frames);
        let (free_tx, free) = bounded::<Vec<u8>>(config.queue_frames);
        let c = counters.clone();
        let name = config.name.clone();
        let writer = std::thread::Builder::new()
            .name(format!("tapwire-tap-{name}"))
            .spawn(move || writer(device, &rx, &free_tx, &c, &name))
            .map_err(|e| e.to_string())?;
        tracing::info!(
            tap = config.name,
            netns = config.netns,
            created,
            "monitor interface ready"
        );
        Ok(TapOutput {
            config,
            counters,
            filter,
            queue: Some(queue),
            free,
            writer: Some(writer),
            created,
        })
    }

    /// Queues one frame; never blocks. `vlan`/`cos`: the ERSPAN header's, for a frame that
    /// lost its tag.
    pub fn send(&self, link: LinkType, frame: &[u8], vlan: Option<u16>, cos: Option<u8>) {
        if link != LinkType::Ethernet {
            // A TAP carries Ethernet; raw IP frames (ERSPAN III FT=2) have no place on it.
            self.counters.filtered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(f) = &self.filter
            && !f.matches(link, frame)
        {
            self.counters.filtered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.clear();
        match vlan {
            Some(vid) if self.config.restore_vlan && !tagged(frame) => {
                let tci = (u16::from(cos.unwrap_or(0)) << 13) | vid;
                if ethernet::insert_vlan_tag(frame, tci, &mut buf).is_err() {
                    buf.extend_from_slice(frame);
                }
            }
            _ => buf.extend_from_slice(frame),
        }
        let Some(queue) = &self.queue else { return };
        match queue.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn tagged(frame: &[u8]) -> bool {
    frame.len() >= 14 && EtherType::from(u16::from_be_bytes([frame[12], frame[13]])).is_vlan_tag()
}

fn writer(
    device: tun_rs::SyncDevice,
    rx: &Receiver<Vec<u8>>,
    free: &Sender<Vec<u8>>,
    c: &TapCounters,
    name: &str,
) {
    let mut logged = false;
    // Ends when the engine drops the output (the queue's sender); the device goes with it.
    while let Ok(buf) = rx.recv() {
        match device.send(&buf) {
            Ok(_) => {
                c.written.fetch_add(1, Ordering::Relaxed);
                logged = false;
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if !logged {
                    tracing::warn!(tap = name, error = %e, "write to monitor interface failed");
                    logged = true;
                }
            }
        }
        let _ = free.try_send(buf);
    }
}

/// Opens the device in `netns` (or here). The thread that creates a TAP decides its namespace,
/// so creation happens on a short-lived thread that joined the namespace first; the file
/// descriptor keeps working from any namespace afterwards.
fn open_in(netns: Option<&str>, config: &TapConfig) -> Result<(tun_rs::SyncDevice, bool), String> {
    let Some(ns) = netns else { return open(config) };
    let file = open_netns(ns)?;
    let config = config.clone();
    let ns = ns.to_string();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                tracing::debug!(netns = ns, error = %e, "setns refused");
                unavailable(&ns)
            })?;
            open(&config)
        })
        .join()
        .map_err(|_| "TAP creation thread panicked".to_string())?
    })
}

/// The namespace file of `ns`: a name is looked up in [`NETNS_DIR`] only (no symlink
/// followed), and whatever is wrong with it gets one message, so that no one learns which
/// files exist; a path (the configuration file's own) is opened as given.
fn open_netns(ns: &str) -> Result<OwnedFd, String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    if ns.contains('/') {
        return open(
            Path::new(ns),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("network namespace {ns}: {e}"));
    }
    validate_netns_name(ns)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    open(
        Path::new(NETNS_DIR),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .and_then(|dir| openat2(&dir, ns, how))
    .map_err(|e| {
        tracing::debug!(netns = ns, error = %e, "network namespace not opened");
        unavailable(ns)
    })
}

/// The one answer for a namespace name that cannot be entered, whatever the reason.
fn unavailable(ns: &str) -> String {
    format!("network namespace {ns:?} is not available (see `ip netns list`)")
}

fn open(config: &TapConfig) -> Result<(tun_rs::SyncDevice, bool), String> {
    let name = &config.name;
    let sys = Path::new("/sys/class/net").join(name);
    let existed = sys.exists();
    if existed && !sys.join("tun_flags").exists() {
        return Err(format!(
            "interface {name} exists and is not a TAP device; refusing to take it over"
        ));
    }
    let device = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L2)
        .build_sync()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => format!("TAP {name} is in use by another process"),
            _ => format!("create TAP {name}: {e}"),
        })?;
    if let Err(e) = device.set_mtu(config.mtu) {
        tracing::warn!(tap = name, error = %e, "cannot set MTU");
    }
    device
        .enabled(true)
        .map_err(|e| format!("bring TAP {name} up: {e}"))?;
    if config.persistent && !existed {
        device
            .persist()
            .map_err(|e| format!("make TAP {name} persistent: {e}"))?;
    }
    Ok((device, !existed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("tw-ids0").is_ok());
        assert!(validate_name("this-name-is-too-long").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
    }

    /// A namespace name is only ever looked up in the namespace directory, and what is wrong
    /// with it is not told: a missing one reads as any other that cannot be entered.
    #[test]
    fn a_namespace_name_that_cannot_be_entered_tells_nothing_more() {
        let missing = "tapwire-unit-no-such-namespace";
        assert_eq!(
            open_netns(missing).unwrap_err(),
            format!("network namespace {missing:?} is not available (see `ip netns list`)")
        );
        assert!(
            open_netns("..")
                .unwrap_err()
                .contains("1 to 255 characters")
        );
    }

    #[test]
    fn tag_detection() {
        let mut f = vec![0u8; 18];
        f[12] = 0x81;
        assert!(tagged(&f));
        f[12] = 0x08;
        assert!(!tagged(&f));
        assert!(!tagged(&f[..10]));
    }
}
