//! The probe's link to a controller (`--controller URL[,URL...] --token T --name HOST`).
//!
//! Several URLs are the collectors of one fleet (they share one database, so any live one
//! serves the same flow set): the link uses one, and turns to the next when it stops
//! answering, without waiting while some of them have not been tried in this round.
//!
//! Two threads: **sync** registers (name, version, interfaces) and then long-polls
//! `GET /api/v1/probes/{name}/flows?after=VERSION`, handing every new flow set to the main
//! thread, which applies the difference ([`apply`]) and saves the set to the state file;
//! **report** posts the stats every interval the controller asked for, and at once after a
//! new set was applied. Errors back off exponentially with full jitter (0.5 s doubling to
//! 30 s) and the probe keeps running its last flow set meanwhile, also across its own
//! restarts (the state file is read at start).
//!
//! A 401 or 403 means the token was revoked (or never allowed this probe): the probe stops
//! every flow, removes its state file, and exits with status 3. A controller that lost the
//! probe (404) is registered with again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tapwire_api_types::control::{DEFAULT_WAIT_S, FlowSet, ProbeReport, Refusal, Register};
use tapwire_api_types::probe::{FlowSpec, ProbeStats};
use tapwire_client::{Client, HttpError};

use crate::manager::FlowManager;

pub struct LinkOptions {
    /// The controllers, in the order they are tried.
    pub urls: Vec<String>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub name: String,
}

/// What the link tells the main thread.
#[derive(Debug)]
pub enum Event {
    /// A flow set newer than the one running.
    FlowSet(FlowSet),
    /// The controller refused the token: stop everything.
    Revoked(String),
}

/// What the main thread tells the report thread: the version it runs and what it refused.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub version: u64,
    pub refused: Vec<Refusal>,
}

/// Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base·2ⁿ)].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        // At least a tenth of the ceiling, so that a dead controller is not hammered.
        ceiling.mul_f64(0.1 + 0.9 * frac)
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Sleeps `d`, waking early when `stop` is set; returns whether it was.
fn sleep(d: Duration, stop: &AtomicBool) -> bool {
    sleep_unless(d, stop, None)
}

/// [`sleep`], also ending early when `wake` becomes set (which it clears first).
fn sleep_unless(d: Duration, stop: &AtomicBool, wake: Option<&AtomicBool>) -> bool {
    if let Some(w) = wake {
        w.store(false, Ordering::Relaxed);
    }
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if stop.load(Ordering::Relaxed) || wake.is_some_and(|w| w.load(Ordering::Relaxed)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - std::time::Instant::now()));
    }
    stop.load(Ordering::Relaxed)
}

/// Between the two threads: the report interval the controller asked for, whether a report
/// just got through (the controller is back: the sync thread, backing off, retries at once
/// instead of waiting out its backoff), and which controller the sync thread uses now (the
/// report thread follows it).
#[derive(Default)]
struct Signals {
    interval_s: AtomicU64,
    reachable: AtomicBool,
    current: std::sync::atomic::AtomicUsize,
}

/// One controller: a client for short requests and one for the long-poll.
#[derive(Clone)]
struct Controller {
    short: Client,
    poll: Client,
}

/// Starts the sync and report threads. `known`: the version of the flow set already running
/// (from the state file), which the controller is asked to better.
pub fn spawn(
    opts: LinkOptions,
    known: Option<u64>,
    stats: Arc<ArcSwap<ProbeStats>>,
    applied: Arc<ArcSwap<Applied>>,
    stop: Arc<AtomicBool>,
    events: std::sync::mpsc::Sender<Event>,
) -> Result<(), String> {
    let wait = Duration::from_secs(DEFAULT_WAIT_S);
    if opts.urls.is_empty() {
        return Err("--controller: no URL".into());
    }
    let controllers = opts
        .urls
        .iter()
        .map(|url| {
            Ok(Controller {
                poll: Client::new(
                    url,
                    opts.token.clone(),
                    opts.ca.as_deref(),
                    wait + Duration::from_secs(10),
                )?,
                short: Client::new(
                    url,
                    opts.token.clone(),
                    opts.ca.as_deref(),
                    Duration::from_secs(10),
                )?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let signals = Arc::new(Signals {
        interval_s: AtomicU64::new(5),
        ..Signals::default()
    });
    let name = opts.name.clone();
    {
        let (stop, events, signals, controllers) = (
            stop.clone(),
            events.clone(),
            signals.clone(),
            controllers.clone(),
        );
        std::thread::Builder::new()
            .name("probe-sync".into())
            .spawn(move || sync(&name, &controllers, known, &signals, &stop, &events))
            .map_err(|e| format!("sync thread: {e}"))?;
    }
    let name = opts.name;
    std::thread::Builder::new()
        .name("probe-report".into())
        .spawn(move || {
            report(
                &name,
                &controllers,
                &stats,
                &applied,
                &signals,
                &stop,
                &events,
            )
        })
        .map_err(|e| format!("report thread: {e}"))?;
    Ok(())
}

fn interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    // The controller takes no more (a hypervisor with more VM taps names the first ones).
    v.truncate(tapwire_api_types::control::MAX_INTERFACES);
    v
}

/// After a failure: the next controller, at once while some were not tried since the last
/// success; after a whole round, the backoff.
fn next_controller(
    n: usize,
    signals: &Signals,
    untried: &mut usize,
    backoff: &mut Backoff,
    stop: &AtomicBool,
) {
    if n > 1 {
        let next = (signals.current.load(Ordering::Relaxed) + 1) % n;
        signals.current.store(next, Ordering::Relaxed);
    }
    if *untried > 1 {
        *untried -= 1;
        return;
    }
    *untried = n;
    sleep_unless(backoff.next_wait(), stop, Some(&signals.reachable));
}

fn sync(
    name: &str,
    controllers: &[Controller],
    mut version: Option<u64>,
    signals: &Signals,
    stop: &AtomicBool,
    events: &std::sync::mpsc::Sender<Event>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), seed());
    let mut failing = false;
    let mut untried = controllers.len();
    let revoked = |e: &HttpError| {
        tracing::error!(error = %e, "the controller refused this probe's token");
        let _ = events.send(Event::Revoked(e.message.clone()));
    };
    'register: while !stop.load(Ordering::Relaxed) {
        let c = &controllers[signals.current.load(Ordering::Relaxed) % controllers.len()];
        let (short, poll) = (&c.short, &c.poll);
        let req = Register {
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            interfaces: interfaces(),
        };
        match short.register(&req) {
            Ok(r) => {
                signals
                    .interval_s
                    .store(r.report_interval_s.max(1), Ordering::Relaxed);
                tracing::info!(
                    controller = short.base(),
                    version = r.flows_version,
                    "registered with the controller"
                );
                backoff.reset();
                untried = controllers.len();
            }
            Err(e) if e.is_auth() => return revoked(&e),
            Err(e) => {
                if !failing {
                    tracing::warn!(controller = short.base(), error = %e, "controller unreachable; running the last known flows, retrying");
                    failing = true;
                } else {
                    tracing::debug!(controller = short.base(), error = %e, "controller still unreachable");
                }
                next_controller(controllers.len(), signals, &mut untried, &mut backoff, stop);
                continue;
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match poll.flows(name, version) {
                Ok(set) => {
                    backoff.reset();
                    if Some(set.version) != version {
                        version = Some(set.version);
                        if events.send(Event::FlowSet(set)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) if e.is_auth() => return revoked(&e),
                Err(e) => {
                    tracing::warn!(controller = poll.base(), error = %e, "lost the controller; running the last known flows");
                    failing = true;
                    next_controller(controllers.len(), signals, &mut untried, &mut backoff, stop);
                    continue 'register;
                }
            }
        }
    }
}

fn report(
    name: &str,
    controllers: &[Controller],
    stats: &ArcSwap<ProbeStats>,
    applied: &ArcSwap<Applied>,
    signals: &Signals,
    stop: &AtomicBool,
    events: &std::sync::mpsc::Sender<Event>,
) {
    let mut last: Option<(std::time::Instant, u64)> = None;
    loop {
        if sleep(Duration::from_millis(200), stop) {
            return;
        }
        // Every interval, and at once when a new flow set was applied (the controller shows
        // its flows' states sooner).
        let a = applied.load_full();
        let every = Duration::from_secs(signals.interval_s.load(Ordering::Relaxed));
        let due = last.is_none_or(|(t, v)| t.elapsed() >= every || v != a.version);
        if !due {
            continue;
        }
        last = Some((std::time::Instant::now(), a.version));
        let client =
            &controllers[signals.current.load(Ordering::Relaxed) % controllers.len()].short;
        let body = ProbeReport {
            applied_version: a.version,
            stats: ProbeStats::clone(&stats.load()),
            refused: a.refused.clone(),
        };
        match client.report(name, &body) {
            Ok(_) => signals.reachable.store(true, Ordering::Relaxed),
            Err(e) if e.is_auth() => {
                tracing::error!(error = %e, "the controller refused this probe's token");
                let _ = events.send(Event::Revoked(e.message));
                return;
            }
            // Not registered yet, or the controller is away: the sync thread deals with it.
            Err(e) => tracing::debug!(error = %e, "stats report not delivered"),
        }
    }
}

/// Applies `set` to the running flows: those gone or changed are stopped, new or changed
/// ones started; the others are not touched. A collector not seen before is added to every
/// flow's exclusion (running flows are restarted for it: rare, the address is the
/// controller's). Returns the flows refused, with why.
pub fn apply(manager: &mut FlowManager, set: &FlowSet) -> Vec<Refusal> {
    let mut refused = Vec::new();
    let mut new_collector = false;
    for f in &set.flows {
        new_collector |= manager.add_collector(f.collector);
    }
    let wanted: BTreeMap<&str, &FlowSpec> =
        set.flows.iter().map(|f| (f.name.as_str(), f)).collect();
    let running: Vec<String> = manager.names().map(String::from).collect();
    for name in running {
        let keep = !new_collector
            && wanted
                .get(name.as_str())
                .is_some_and(|w| manager.spec(&name) == Some(*w));
        if !keep {
            manager.stop(&name);
            tracing::info!(flow = name, "flow stopped");
        }
    }
    for (name, spec) in wanted {
        if manager.spec(name).is_some() {
            continue;
        }
        let started = manager
            .prepare((*spec).clone())
            .and_then(|p| manager.start(p));
        match started {
            Ok(()) => tracing::info!(flow = name, interface = spec.interface, "flow started"),
            Err(e) => {
                tracing::error!(flow = name, error = %e, "flow refused");
                refused.push(Refusal {
                    name: name.to_string(),
                    error: e.0,
                });
            }
        }
    }
    refused
}

/// Reads a saved flow set; `None` (with a warning) when absent or unreadable.
pub fn load_state(path: &Path) -> Option<FlowSet> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "state file unreadable; starting without flows");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "state file damaged; starting without flows");
            None
        }
    }
}

/// Saves the flow set atomically (a temporary file renamed over the old one).
pub fn save_state(path: &Path, set: &FlowSet) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(set).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_flow as spec;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 42);
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        for (n, w) in waits.iter().enumerate() {
            let ceiling = Duration::from_millis(500 << n.min(16)).min(Duration::from_secs(30));
            assert!(
                *w <= ceiling && *w >= ceiling / 10,
                "wait {n}: {w:?} vs {ceiling:?}"
            );
        }
        // Jittered: not all equal at the cap.
        assert!(waits[8..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(500));
    }

    #[test]
    fn apply_starts_and_stops_only_what_changed() {
        let mut m = FlowManager::new(vec!["127.0.0.1".parse().expect("addr")]);
        let set = |flows| FlowSet { version: 1, flows };
        assert!(apply(&mut m, &set(vec![spec("a", None), spec("b", None)])).is_empty());
        assert_eq!(m.names().collect::<Vec<_>>(), ["a", "b"]);
        // b changes, c is new, a stays: a must not be restarted.
        let (a_before, b_before) = (m.serial("a"), m.serial("b"));
        let refused = apply(
            &mut m,
            &set(vec![
                spec("a", None),
                spec("b", Some("tcp")),
                spec("c", Some("tcp port")),
            ]),
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].name, "c");
        assert!(refused[0].error.contains("syntax error"), "{refused:?}");
        assert_eq!(m.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.spec("b").and_then(|s| s.filter.as_deref()), Some("tcp"));
        assert_eq!(m.serial("a"), a_before);
        assert_ne!(m.serial("b"), b_before);
        // A new collector address restarts every flow (their filters must exclude it).
        let mut moved = spec("b", Some("tcp"));
        moved.collector = "127.0.0.2".parse().expect("addr");
        assert!(apply(&mut m, &set(vec![spec("a", None), moved])).is_empty());
        assert_ne!(m.serial("a"), a_before);
        assert!(apply(&mut m, &set(vec![])).is_empty());
        assert_eq!(m.names().count(), 0);
    }

    #[test]
    fn state_round_trips_and_damage_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tapwire-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.json");
        let set = FlowSet {
            version: 7,
            flows: vec![spec("a", None)],
        };
        save_state(&path, &set).expect("save");
        assert_eq!(load_state(&path), Some(set));
        std::fs::write(&path, "{").expect("damage");
        assert_eq!(load_state(&path), None);
        assert_eq!(load_state(&dir.join("absent")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
