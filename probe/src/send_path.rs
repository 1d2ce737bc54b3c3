//! The two ways a capture thread's datagrams leave the host, and the choice between them.
//!
//! - The **fast path** ([`FastSender`]): complete frames through an AF_PACKET transmit ring on
//!   the egress interface, with the next hop's MAC address from [`crate::route`].
//! - The **raw socket** ([`Sender`]): the GRE datagram through a raw IP socket; the kernel
//!   routes it, resolves the next hop and adds the headers. It is always open: it carries
//!   everything the fast path cannot, makes the kernel resolve or confirm the next hop, and
//!   hears the ICMP errors that lower the path MTU.
//!
//! The path is looked at before every batch; when the tracker has published a new one, the
//! batch is built for it (new headers, another interface, or the raw socket), so frames stop
//! going to an old next hop before the next batch. Both paths number from the same sequence
//! counter and carry the same outer source address (the raw socket is connected again when
//! the route's source changes, and the fast path takes the raw socket's), so to the collector
//! they are one stream.

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire_api_types::probe::SendPathStats;
use tapwire_netio::batch::Datagram;

use crate::path::{Fallback, Path, SendMode, mac_text};
use crate::pipeline::Kept;
use crate::route::{PathWatch, describe};
use crate::send::{SendEvent, Sender};
use crate::send_fast::{FastSender, Stop};

/// After a failure of the fast path on an unchanged path, try it again this much later.
const RETRY_FAST: Duration = Duration::from_secs(1);
/// A stale neighbour entry is confirmed (one datagram through the kernel) at most this often.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// The probe-wide send settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    pub mode: SendMode,
    /// Every datagram carries a GRE checksum.
    pub gre_checksum: bool,
}

/// What happened to some of the datagrams given to [`Output::send`] (indices into them).
#[derive(Debug)]
pub enum Sent {
    Fast(Range<usize>),
    Raw(Range<usize>),
    Refused(usize, io::Error),
}

/// One capture thread's way out.
#[derive(Debug)]
pub struct Output {
    mode: SendMode,
    watch: Option<Arc<PathWatch>>,
    generation: u64,
    path: Arc<Path>,
    raw: Sender,
    fast: Option<FastSender>,
    /// The fast path failed on the current path: the error, and when.
    fast_error: Option<(String, Instant)>,
    session: u16,
    mtu_override: Option<u32>,
    first_ident: u16,
    last_confirm: Option<Instant>,
    /// Counts changes of the way out (path taken, fast path failed).
    changes: u64,
}

impl Output {
    /// `watch`: the tracker's path to the collector (none with [`SendMode::Raw`]).
    /// `first_ident`: where this thread's IPv4 identification starts.
    pub fn new(
        mode: SendMode,
        watch: Option<Arc<PathWatch>>,
        raw: Sender,
        session: u16,
        mtu_override: Option<u32>,
        first_ident: u16,
    ) -> Output {
        let mut out = Output {
            mode,
            watch: if mode == SendMode::Raw { None } else { watch },
            generation: 0,
            path: Arc::new(Path::Raw(Fallback::Pending)),
            raw,
            fast: None,
            fast_error: None,
            session,
            mtu_override,
            first_ident,
            last_confirm: None,
            changes: 0,
        };
        if out.mode == SendMode::Raw {
            out.path = Arc::new(Path::Raw(Fallback::Forced));
        } else if out.watch.is_none() {
            out.path = Arc::new(Path::Raw(Fallback::Netlink(
                "route tracking is not running".into(),
            )));
        }
        out.refresh();
        out
    }

    pub fn raw_mut(&mut self) -> &mut Sender {
        &mut self.raw
    }

    /// Takes the tracker's path if it changed (or retries a failed fast path); true when the
    /// way out changed.
    pub fn refresh(&mut self) -> bool {
        let Some(w) = &self.watch else {
            return false;
        };
        let generation = w.generation();
        let retry = self
            .fast_error
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= RETRY_FAST);
        if generation == self.generation && !retry {
            return false;
        }
        self.generation = generation;
        let before = self.stats();
        self.path = w.load();
        self.fast_error = None;
        self.take_path();
        let changed = self.stats() != before;
        self.changes += u64::from(changed);
        changed
    }

    /// Bumped whenever the way out changes, also during [`Output::send`].
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn take_path(&mut self) {
        let Path::Fast(p) = &*self.path else {
            self.fast = None;
            return;
        };
        let mut p = p.clone();
        if self.raw.source() != Some(p.src) {
            // The route's source changed: so does the raw socket's, so that both paths stay one
            // source to the collector.
            if let Ok(s) = Sender::open(self.raw.collector(), self.mtu_override) {
                self.raw = s;
            }
        }
        if let Some(src) = self.raw.source() {
            p.src = src;
        }
        if let Some(f) = &mut self.fast
            && f.retarget(&p, self.session)
        {
            return;
        }
        self.fast = None;
        let ident = self.first_ident;
        match FastSender::open(&p, self.session, ident) {
            Ok(f) => self.fast = Some(f),
            Err(e) => self.fail_fast(format!("transmit ring on {}: {e}", p.interface)),
        }
    }

    fn fail_fast(&mut self, why: String) {
        tracing::warn!(collector = %self.raw.collector(), "fast path unusable, sending through the raw socket: {why}");
        self.fast = None;
        self.fast_error = Some((why, Instant::now()));
        self.changes += 1;
    }

    /// The path MTU in use: `--mtu`, else the fast path's, else the raw socket's.
    pub fn mtu(&self) -> u32 {
        match (self.mtu_override, &self.fast) {
            (Some(m), _) => m,
            (None, Some(f)) => f.path().mtu,
            (None, None) => self.raw.mtu(),
        }
    }

    pub fn ip_header_len(&self) -> usize {
        self.raw.ip_header_len()
    }

    /// The largest GRE datagram that fits the path.
    pub fn max_payload(&self) -> usize {
        (self.mtu() as usize).saturating_sub(self.ip_header_len())
    }

    /// Sends `kept` in order: through the transmit ring when the fast path is in use (but for
    /// one datagram through the kernel when the neighbour entry wants confirming, and any that
    /// do not fit the interface), else through the raw socket.
    pub fn send(&mut self, kept: &[Kept<'_>], mut event: impl FnMut(Sent)) {
        let mut from = 0;
        if let Some(mut fast) = self.fast.take() {
            let confirm = fast.path().confirm
                && self
                    .last_confirm
                    .is_none_or(|t| t.elapsed() >= CONFIRM_EVERY);
            if confirm && !kept.is_empty() {
                self.last_confirm = Some(Instant::now());
                self.send_raw(&kept[..1], 0, &mut event);
                from = 1;
            }
            let mut failed = None;
            while from < kept.len() {
                let base = from;
                let stop = fast.send(&kept[from..], |e| {
                    if let SendEvent::Sent(r) = e {
                        event(Sent::Fast(base + r.start..base + r.end));
                    }
                });
                match stop {
                    None => from = kept.len(),
                    Some((i, Stop::TooBig)) => {
                        self.send_raw(&kept[base + i..base + i + 1], base + i, &mut event);
                        from = base + i + 1;
                    }
                    Some((i, Stop::Failed(e))) => {
                        from = base + i;
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => self.fast = Some(fast),
                Some(e) => self.fail_fast(format!("{}: {e}", fast.path().interface)),
            }
        }
        if from < kept.len() {
            self.send_raw(&kept[from..], from, &mut event);
        }
    }

    fn send_raw(&mut self, kept: &[Kept<'_>], base: usize, event: &mut impl FnMut(Sent)) {
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(kept.len() * 4);
        let mut spans = Vec::with_capacity(kept.len());
        for k in kept {
            let start = iov.len();
            k.push_parts(&mut iov);
            spans.push(start..iov.len());
        }
        let datagrams: Vec<Datagram<'_>> = spans
            .iter()
            .map(|r| Datagram {
                destination: None,
                parts: &iov[r.clone()],
            })
            .collect();
        self.raw.send(&datagrams, |e| match e {
            SendEvent::Sent(r) => event(Sent::Raw(base + r.start..base + r.end)),
            SendEvent::Refused(i, e) => event(Sent::Refused(base + i, e)),
        });
    }

    /// What the stats show about the way out.
    pub fn stats(&self) -> SendPathStats {
        let mut s = SendPathStats {
            mode: self.mode.name().into(),
            ..SendPathStats::default()
        };
        if let Some(f) = &self.fast {
            let p = f.path();
            s.path = "fast".into();
            s.interface = Some(p.interface.clone());
            s.next_hop = Some(p.next_hop.to_string());
            s.next_hop_mac = Some(mac_text(&p.dst_mac));
            s.source = self.raw.source().map(|a: IpAddr| a.to_string());
            s.mtu = Some(p.mtu);
            return s;
        }
        s.path = "raw".into();
        let (code, text) = match (&self.fast_error, &*self.path) {
            (Some((why, _)), _) => ("fast_path_error", why.clone()),
            (None, Path::Raw(f)) => (f.code(), f.to_string()),
            // A fast path not taken yet.
            (None, p @ Path::Fast(_)) => ("pending", describe(p)),
        };
        s.reason_code = Some(code.into());
        s.reason = Some(text);
        s.source = self.raw.source().map(|a| a.to_string());
        s
    }
}
