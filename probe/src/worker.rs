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

use tapwire_api_types::probe::{FlowSpec, FlowState};
use tapwire_netio::batch::Datagram;
use tapwire_netio::ring::{Block, Fanout, FanoutMode, Ring, RingConfig};
use tapwire_netio::{ifindex, is_interface_gone, raw_os_error};

use crate::filter::Program;
use crate::pipeline::Pipeline;
use crate::send::{SendEvent, Sender};
use crate::seq::Sequence;
use crate::stats::{SharedCounters, Status};

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
        let mut sender = loop {
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
        let mut pipeline = Pipeline::new(&spec, sender.max_payload(), sender.ip_header_len());
        self.status.set_max_payload(sender.max_payload() as u32);
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
                mtu = sender.mtu(),
                "capturing"
            );
            let mut last_check = Instant::now();
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                match ring.next_block(POLL) {
                    Ok(Some(block)) => {
                        self.forward(&block, &mut pipeline, &mut sender);
                        drop(block);
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
                    if sender.refresh_mtu() {
                        self.path_mtu_changed(&sender, &mut pipeline);
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

    fn path_mtu_changed(&self, sender: &Sender, pipeline: &mut Pipeline) {
        tracing::info!(
            flow = %self.spec.name,
            mtu = sender.mtu(),
            "path MTU to the collector changed"
        );
        pipeline.set_max_payload(sender.max_payload());
        self.status.set_max_payload(sender.max_payload() as u32);
    }

    /// Encapsulates and sends one block's worth of packets, then publishes the counts.
    fn forward(&self, block: &Block<'_>, pipeline: &mut Pipeline, sender: &mut Sender) {
        let kept = pipeline.select(block.packets(), &self.seq);
        if !kept.is_empty() {
            let mut iov = Vec::with_capacity(kept.len() * 4);
            let mut spans = Vec::with_capacity(kept.len());
            for k in &kept {
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
            let mut too_big = false;
            let mut last_error: Option<io::Error> = None;
            sender.send(&datagrams, |event| match event {
                SendEvent::Sent(r) => pipeline.count_sent(&kept[r]),
                SendEvent::Refused(_, e) => {
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
            if too_big && sender.refresh_mtu() {
                self.path_mtu_changed(sender, pipeline);
            }
        }
        self.counters.add(&pipeline.take_counters());
    }
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
