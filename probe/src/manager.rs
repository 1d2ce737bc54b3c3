//! The flows a probe runs, each started and stopped on its own.
//!
//! A flow is prepared first ([`FlowManager::prepare`]: checked, its kernel filter compiled),
//! which is where a bad definition is refused; starting it then only spawns its capture
//! threads, which open their rings and sockets themselves and retry what fails. Stopping a
//! flow stops and joins its threads and nothing else: other flows, their rings and the shared
//! sequence counters are untouched. This is the interface a controller will drive.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tapwire_api_types::probe::{FlowSpec, FlowStats};

use crate::config;
use crate::filter::{self, Program};
use crate::path::SendMode;
use crate::route::Tracker;
use crate::send_path::SendOptions;
use crate::seq::{SeqCounters, SeqKey};
use crate::stats::{self, SharedCounters, Status};
use crate::worker::Worker;

/// Why a flow was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

/// A checked flow with its compiled kernel filter.
#[derive(Debug, Clone)]
pub struct Prepared {
    spec: FlowSpec,
    program: Program,
}

impl Prepared {
    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Instructions of the kernel filter.
    pub fn program_len(&self) -> usize {
        self.program.len()
    }
}

struct Thread {
    counters: Arc<SharedCounters>,
    status: Arc<Status>,
    join: Option<JoinHandle<()>>,
}

struct Running {
    /// Which start this is (each start of any flow gets the next number).
    serial: u64,
    spec: FlowSpec,
    stop: Arc<AtomicBool>,
    threads: Vec<Thread>,
}

pub struct FlowManager {
    seqs: SeqCounters,
    /// GRE to these addresses is never captured (the probe's own tunnels).
    collectors: Vec<IpAddr>,
    flows: BTreeMap<String, Running>,
    next_fanout_group: u16,
    starts: u64,
    send: SendOptions,
    /// Route and neighbour tracking, started with the first flow that may use the fast path.
    tracker: Option<Arc<Tracker>>,
}

impl FlowManager {
    /// `collectors`: every collector the probe will send to; each flow's kernel filter excludes
    /// GRE to all of them, so that no flow captures another flow's tunnel either.
    pub fn new(collectors: Vec<IpAddr>) -> FlowManager {
        FlowManager {
            seqs: SeqCounters::new(),
            collectors,
            flows: BTreeMap::new(),
            // Fanout group ids are per interface in the kernel; start from the pid's low bits
            // so that two probes on one host are unlikely to collide.
            next_fanout_group: (std::process::id() & 0x7fff) as u16,
            starts: 0,
            send: SendOptions::default(),
            tracker: None,
        }
    }

    /// How flows started from now on send (`--send-path`, `--gre-checksum`).
    pub fn set_send_options(&mut self, send: SendOptions) {
        self.send = send;
    }

    fn tracker(&mut self) -> Option<Arc<Tracker>> {
        if self.tracker.is_none() {
            match Tracker::start() {
                Ok(t) => self.tracker = Some(Arc::new(t)),
                Err(e) => {
                    tracing::warn!("route tracking thread: {e}; sending through the raw socket")
                }
            }
        }
        self.tracker.clone()
    }

    /// Checks `spec` and compiles its filter (the error is libpcap's message).
    pub fn prepare(&self, spec: FlowSpec) -> Result<Prepared, FlowError> {
        config::validate(&spec).map_err(|e| FlowError(e.0))?;
        let mut collectors = self.collectors.clone();
        if !collectors.contains(&spec.collector) {
            collectors.push(spec.collector);
        }
        let program = filter::flow_program(spec.direction, &collectors, spec.filter.as_deref())
            .map_err(|e| {
                FlowError(format!(
                    "flow {:?}: filter {:?}: {e}",
                    spec.name,
                    spec.filter.as_deref().unwrap_or("")
                ))
            })?;
        Ok(Prepared { spec, program })
    }

    /// Starts a prepared flow's capture threads.
    pub fn start(&mut self, prepared: Prepared) -> Result<(), FlowError> {
        let Prepared { spec, program } = prepared;
        if self.flows.contains_key(&spec.name) {
            return Err(FlowError(format!(
                "a flow named {:?} is running",
                spec.name
            )));
        }
        let seq = self.seqs.get(SeqKey {
            collector: spec.collector,
            encap: spec.encap,
            session: spec.session,
        });
        let fanout_group = (spec.threads > 1).then(|| {
            self.next_fanout_group = self.next_fanout_group.wrapping_add(1);
            self.next_fanout_group
        });
        let watch = match self.send.mode {
            SendMode::Raw => None,
            SendMode::Auto | SendMode::Fast => self.tracker().map(|t| t.watch(spec.collector)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let shared_spec = Arc::new(spec.clone());
        let program = Arc::new(program);
        let mut threads = Vec::new();
        for index in 0..spec.threads {
            let counters = Arc::new(SharedCounters::default());
            let status = Arc::new(Status::default());
            let worker = Worker {
                spec: Arc::clone(&shared_spec),
                program: Arc::clone(&program),
                index,
                fanout_group,
                seq: seq.clone(),
                counters: Arc::clone(&counters),
                status: Arc::clone(&status),
                stop: Arc::clone(&stop),
                send: self.send,
                watch: watch.clone(),
            };
            let join = std::thread::Builder::new()
                .name(format!("probe-{}-{index}", spec.name))
                .spawn(move || worker.run());
            match join {
                Ok(join) => threads.push(Thread {
                    counters,
                    status,
                    join: Some(join),
                }),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    for mut t in threads {
                        if let Some(j) = t.join.take() {
                            let _ = j.join();
                        }
                    }
                    return Err(FlowError(format!(
                        "flow {:?}: cannot start a thread: {e}",
                        spec.name
                    )));
                }
            }
        }
        self.starts += 1;
        self.flows.insert(
            spec.name.clone(),
            Running {
                serial: self.starts,
                spec,
                stop,
                threads,
            },
        );
        Ok(())
    }

    /// Stops one flow, waits for its threads (each notices within 100 ms) and returns its
    /// final stats; `None` when no flow has that name.
    pub fn stop(&mut self, name: &str) -> Option<FlowStats> {
        let mut flow = self.flows.remove(name)?;
        flow.stop.store(true, Ordering::Relaxed);
        for t in &mut flow.threads {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
        Some(flow_stats(&flow))
    }

    /// Stops every flow (all are told first, then all are joined); returns their final stats.
    pub fn stop_all(&mut self) -> Vec<FlowStats> {
        for f in self.flows.values() {
            f.stop.store(true, Ordering::Relaxed);
        }
        let names: Vec<String> = self.flows.keys().cloned().collect();
        names.iter().filter_map(|n| self.stop(n)).collect()
    }

    /// Which start of a flow the running flow `name` is: it changes when the flow is
    /// restarted, and only then.
    pub fn serial(&self, name: &str) -> Option<u64> {
        self.flows.get(name).map(|f| f.serial)
    }

    /// The definition of the running flow `name`.
    pub fn spec(&self, name: &str) -> Option<&FlowSpec> {
        self.flows.get(name).map(|f| &f.spec)
    }

    /// Adds a collector whose GRE every flow prepared from now on excludes; `false` when it
    /// was known. Flows already running keep their filters: restart them to exclude it.
    pub fn add_collector(&mut self, addr: IpAddr) -> bool {
        if self.collectors.contains(&addr) {
            return false;
        }
        self.collectors.push(addr);
        true
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flows.keys().map(String::as_str)
    }

    pub fn stats(&self) -> Vec<FlowStats> {
        self.flows.values().map(flow_stats).collect()
    }
}

fn flow_stats(f: &Running) -> FlowStats {
    let statuses: Vec<_> = f.threads.iter().map(|t| t.status.get()).collect();
    let counters = f
        .threads
        .iter()
        .map(|t| t.counters.load())
        .fold(Default::default(), |a, b| stats::sum(&a, &b));
    FlowStats {
        name: f.spec.name.clone(),
        interface: f.spec.interface.clone(),
        collector: f.spec.collector.to_string(),
        encap: f.spec.encap,
        session: f.spec.session,
        state: stats::worst(statuses.iter().map(|s| s.0)),
        error: statuses.iter().find_map(|s| s.1.clone()),
        max_payload_bytes: statuses.iter().map(|s| s.2).max().unwrap_or(0),
        counters,
        // The threads of a flow share the collector, so they share the path; the first shows it.
        send: f
            .threads
            .first()
            .map(|t| t.status.send())
            .unwrap_or_default(),
    }
}

impl Drop for FlowManager {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_flow as spec;

    #[test]
    fn bad_filter_is_refused_with_libpcaps_message() {
        let m = FlowManager::new(vec![]);
        let e = m.prepare(spec("a", Some("tcp port"))).expect_err("syntax");
        assert!(e.0.contains("flow \"a\": filter \"tcp port\": "), "{e}");
        assert!(e.0.contains("syntax error"), "{e}");
        let p = m
            .prepare(spec("a", Some("tcp port 443")))
            .expect("compiles");
        assert!(p.program_len() > 10);
    }

    #[test]
    fn flows_start_and_stop_independently() {
        let mut m = FlowManager::new(vec![]);
        for name in ["a", "b"] {
            let p = m.prepare(spec(name, None)).expect("valid");
            m.start(p).expect("starts");
        }
        let p = m.prepare(spec("a", None)).expect("valid");
        assert!(m.start(p).is_err(), "names are unique");
        assert_eq!(m.names().collect::<Vec<_>>(), ["a", "b"]);
        let a = m.stop("a").expect("was running");
        assert_eq!(a.state, tapwire_api_types::probe::FlowState::Stopped);
        assert!(m.stop("a").is_none());
        assert_eq!(m.names().collect::<Vec<_>>(), ["b"]);
        let stats = m.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].name, "b");
        m.stop_all();
        assert!(m.stats().is_empty());
    }
}
