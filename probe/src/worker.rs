//! One capture thread of a flow: its ring, its socket to the collector, its pipeline.
//!
//! The thread survives everything the outside world does: an interface that does not exist
//! yet or disappears is reported (state `waiting`) and its ring opened again once an interface
//! of that name exists; an interface that goes down is reported (state `down`) and the same
//! ring resumes when it comes up; a collector without a route is retried. It ends only when
//! its flow is stopped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tapwire_api_types::probe::{FlowCounters, FlowSpec, FlowState};
use tapwire_netio::ring::{Block, Fanout, FanoutMode, Ring, RingConfig};
use tapwire_netio::{ifindex, is_interface_gone, raw_os_error};

use crate::filter::Program;
use crate::path::SendMode;
use crate::pipeline::Pipeline;
use crate::route::PathWatch;
use crate::send::Sender;
use crate::send_path::{Output, SendOptions, Sent};
use crate::seq::Sequence;
use crate::stats::{SharedCounters, Status, send_path_text};

/// How long one wait for a block lasts: the bound on noticing a stop.
const POLL: Duration = Duration::from_millis(100);
/// How often a missing interface or collector route is tried again, and the ring's drop
/// counter, the interface and the path MTU are checked.
const RETRY: Duration = Duration::from_secs(1);

pub struct Worker {
    pub spec: Arc<FlowSpec>,
    pub program: Arc<Program>,
    /// 0-based thread number within the flow.
    pub index: u16,
    /// The flow's fanout group, when it has several threads.
    pub fanout_group: Option<u16>,
    pub seq: Sequence,
    pub counters: Arc<SharedCounters>,
    pub status: Arc<Status>,
    pub stop: Arc<AtomicBool>,
    pub send: SendOptions,
    /// The tracker's path to the collector; none with the raw socket forced.
    pub watch: Option<Arc<PathWatch>>,
}

impl Worker {
    fn ring_config(&self) -> RingConfig {
        let s = &self.spec;
        RingConfig {
            block_size_bytes: s.block_size_bytes,
            block_count: s.block_count,
            block_timeout_ms: s.block_timeout_ms,
            fanout: self.fanout_group.map(|group_id| Fanout {
                group_id,
                // By flow: one connection's packets stay on one thread, in order.
                mode: FanoutMode::Hash,
            }),
            promiscuous: s.promiscuous,
            // `in` only: the kernel does not even clone outgoing packets for this socket.
            ignore_outgoing: s.direction == tapwire_api_types::probe::Direction::In,
            snaplen: s.snaplen,
            ..RingConfig::default()
        }
    }

    /// Sleeps `d` unless the flow is stopped meanwhile; true when it was.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        self.stop.load(Ordering::Relaxed)
    }

    fn report(&self, state: FlowState, error: String) {
        let (before, last, _) = self.status.get();
        if before != state || last.as_deref() != Some(error.as_str()) {
            tracing::warn!(
                flow = %self.spec.name,
                thread = self.index,
                state = ?state,
                "{error}"
            );
        }
        self.status.set(state, Some(error));
    }

    pub fn run(self) {
        let spec = Arc::clone(&self.spec);
        let raw = loop {
            match Sender::open(spec.collector, spec.mtu) {
                Ok(s) => break s,
                Err(e) => {
                    self.report(FlowState::Error, e.to_string());
                    if self.pause(RETRY) {
                        self.status.set(FlowState::Stopped, None);
                        return;
                    }
                }
            }
        };
        let mut out = Output::new(
            self.send.mode,
            self.watch.clone(),
            raw,
            spec.session,
            spec.mtu,
            first_ident(self.index),
        );
        let mut pipeline = Pipeline::new(&spec, out.max_payload(), out.ip_header_len());
        pipeline.set_gre_checksum(self.send.gre_checksum);
        self.status.set_max_payload(out.max_payload() as u32);
        self.publish_send(&out);
        let mut seen_changes = out.changes();
        let config = self.ring_config();
        let mut opened_before = false;

        while !self.stop.load(Ordering::Relaxed) {
            let mut ring = match Ring::open_with_filter(&spec.interface, &config, &self.program) {
                Ok(r) => r,
                Err(e) => {
                    let state = if is_missing(&e) {
                        FlowState::Waiting
                    } else {
                        FlowState::Error
                    };
                    self.report(state, format!("capture on {}: {e}", spec.interface));
                    if self.pause(RETRY) {
                        break;
                    }
                    continue;
                }
            };
            if opened_before {
                pipeline_count_reopen(&self.counters);
            }
            opened_before = true;
            let mut kernel_drops_seen = 0u64;
            let ring_ifindex = ring.ifindex();
            self.status.set(FlowState::Running, None);
            tracing::info!(
                flow = %spec.name,
                thread = self.index,
                interface = %spec.interface,
                ifindex = ring.ifindex(),
                collector = %spec.collector,
                mtu = out.mtu(),
                path = %send_path_text(&out.stats()),
                "capturing"
            );
            let mut last_check = Instant::now();
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                match ring.next_block(POLL) {
                    Ok(Some(block)) => {
                        // Before every batch: a path the tracker replaced is not used again.
                        out.refresh();
                        self.forward(&block, &mut pipeline, &mut out);
                        drop(block);
                        if out.changes() != seen_changes {
                            seen_changes = out.changes();
                            self.way_out_changed(&out, &mut pipeline);
                        }
                        if self.status.get().0 != FlowState::Running {
                            tracing::info!(flow = %spec.name, thread = self.index, "capturing again");
                            self.status.set(FlowState::Running, None);
                        }
                    }
                    Ok(None) => {}
                    Err(e) if is_interface_gone(&e) => {
                        if ifindex(&spec.interface).ok() == Some(ring_ifindex) {
                            self.report(FlowState::Down, format!("{} is down", spec.interface));
                        } else {
                            self.report(
                                FlowState::Waiting,
                                format!("{} disappeared", spec.interface),
                            );
                            break;
                        }
                    }
                    Err(e) => {
                        self.report(FlowState::Error, e.to_string());
                        if self.pause(POLL) {
                            break;
                        }
                    }
                }
                if last_check.elapsed() >= RETRY {
                    last_check = Instant::now();
                    if let Ok(s) = ring.stats() {
                        self.add_kernel_drops(s.n_drops, &mut kernel_drops_seen);
                    }
                    match ifindex(&spec.interface) {
                        Ok(i) if i == ring_ifindex => {
                            if self.status.get().0 == FlowState::Down && is_up(&spec.interface) {
                                self.status.set(FlowState::Running, None);
                            }
                        }
                        _ => {
                            self.report(
                                FlowState::Waiting,
                                format!("{} disappeared", spec.interface),
                            );
                            break;
                        }
                    }
                    out.raw_mut().refresh_mtu();
                    out.refresh();
                    if out.changes() != seen_changes {
                        seen_changes = out.changes();
                        self.way_out_changed(&out, &mut pipeline);
                    } else if out.max_payload() != pipeline.max_payload() {
                        self.path_mtu_changed(&out, &mut pipeline);
                    }
                }
            }
            if let Ok(s) = ring.stats() {
                self.add_kernel_drops(s.n_drops, &mut kernel_drops_seen);
            }
            self.counters.add(&pipeline.take_counters());
        }
        self.counters.add(&pipeline.take_counters());
        self.status.set(FlowState::Stopped, None);
    }

    fn add_kernel_drops(&self, ring_total: u64, seen: &mut u64) {
        let delta = ring_total.saturating_sub(*seen);
        *seen = ring_total;
        self.counters.add(&tapwire_api_types::probe::FlowCounters {
            kernel_drops: delta,
            ..Default::default()
        });
    }

    fn path_mtu_changed(&self, out: &Output, pipeline: &mut Pipeline) {
        tracing::info!(
            flow = %self.spec.name,
            mtu = out.mtu(),
            "path MTU to the collector changed"
        );
        pipeline.set_max_payload(out.max_payload());
        self.status.set_max_payload(out.max_payload() as u32);
    }

    /// The path, the interface, the next hop or the fast path's health changed: counted,
    /// shown in the stats, and the MTU taken.
    fn way_out_changed(&self, out: &Output, pipeline: &mut Pipeline) {
        self.counters.add(&FlowCounters {
            path_changes: 1,
            ..Default::default()
        });
        self.publish_send(out);
        if out.max_payload() != pipeline.max_payload() {
            self.path_mtu_changed(out, pipeline);
        }
    }

    fn publish_send(&self, out: &Output) {
        let send = out.stats();
        tracing::info!(
            flow = %self.spec.name,
            thread = self.index,
            "sending {}",
            send_path_text(&send)
        );
        if self.send.mode == SendMode::Fast && send.path != "fast" {
            // `--send-path fast`: still delivered (through the raw socket), but an error.
            let (state, _, _) = self.status.get();
            self.status.set(
                state,
                Some(format!(
                    "fast path required but unavailable: {}",
                    send_path_text(&send)
                )),
            );
        }
        self.status.set_send(send);
    }

    /// Encapsulates and sends one block's worth of packets, then publishes the counts.
    fn forward(&self, block: &Block<'_>, pipeline: &mut Pipeline, out: &mut Output) {
        let kept = pipeline.select(block.packets(), &self.seq);
        let mut n_fast = 0;
        if !kept.is_empty() {
            let mut too_big = false;
            let mut last_error: Option<io::Error> = None;
            out.send(&kept, |event| match event {
                Sent::Fast(r) => {
                    n_fast += r.len() as u64;
                    pipeline.count_sent(&kept[r]);
                }
                Sent::Raw(r) => pipeline.count_sent(&kept[r]),
                Sent::Refused(_, e) => {
                    pipeline.count_send_error();
                    too_big |= raw_os_error(&e) == Some(libc::EMSGSIZE);
                    last_error = Some(e);
                }
            });
            if let Some(e) = last_error {
                let msg = format!("send to {}: {e}", self.spec.collector);
                let (state, last, _) = self.status.get();
                if last.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(flow = %self.spec.name, thread = self.index, "{msg}");
                    self.status.set(state, Some(msg));
                }
            }
            if too_big && out.raw_mut().refresh_mtu() && out.max_payload() != pipeline.max_payload()
            {
                self.path_mtu_changed(out, pipeline);
            }
        }
        let mut c = pipeline.take_counters();
        c.sent_fast = n_fast;
        self.counters.add(&c);
    }
}

/// Where a thread's IPv4 identification starts: apart from other threads and other runs.
fn first_ident(index: u16) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(16) ^ (u32::from(index) << 11)) as u16
}

fn pipeline_count_reopen(counters: &SharedCounters) {
    counters.add(&tapwire_api_types::probe::FlowCounters {
        reopened: 1,
        ..Default::default()
    });
}

/// The interface does not exist (not yet, or any more).
fn is_missing(e: &io::Error) -> bool {
    matches!(raw_os_error(e), Some(libc::ENODEV | libc::ENXIO)) || is_interface_gone(e)
}

/// IFF_UP from sysfs (of the network namespace the probe runs in); true when unknown.
fn is_up(interface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_none_or(|flags| flags & libc::IFF_UP as u32 != 0)
}
