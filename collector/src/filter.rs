//! tcpdump-syntax filters on inner frames, compiled by libpcap and run in user space.
//!
//! Compiling is the costly part: libpcap's optimizer is superlinear in the number of terms
//! (`scripts/bench-filter-compile.sh`), so a [`Filter`] is compiled once per distinct text,
//! by whoever checks a definition (the configuration file's reader, the control plane's
//! request), never by the engine, which is handed compiled programs. Every compilation is
//! bounded:
//! - in size: at most [`MAX_FILTER_BYTES`] and [`MAX_FILTER_TERMS`] primitives, checked
//!   before libpcap sees the text;
//! - in time: it runs on a worker thread and the caller waits at most [`COMPILE_DEADLINE`]; a
//!   filter that takes longer is refused and the worker's result is thrown away when it ends.
//!   At most [`MAX_WORKERS`] workers run at once, so refused filters cannot pile up CPU;
//! - in repetition: the results of the last [`CACHE_ENTRIES`] texts are kept (errors too, a
//!   filter refused for its time for [`SLOW_REFUSAL_KEPT`]), so an unchanged filter is never
//!   compiled again when another session changes.
//!
//! libpcap 1.10 (Debian bookworm) compiles re-entrantly (its scanner and parser are pure and
//! the compiler's state is per call since 1.8), so workers need no lock; a program, once
//! compiled, is only read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pcap::{BpfProgram, Capture, Linktype};
use tapwire_formats::capture::LinkType;

/// The longest filter text accepted.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The most primitives (`host a`, `port 80`, `vlan`, ...) a filter may join with `and`/`or`.
/// The costliest primitive measured (`portrange`) took 0.11 s at 32 terms, 0.7 s at 64 and
/// 2.5 s at 96 (both link types; `scripts/bench-filter-compile.sh` on a shared 2-core
/// machine); lists of hosts, ports or nets took at most 0.12 s at 64.
pub const MAX_FILTER_TERMS: usize = 64;
/// How long a caller waits for a compilation.
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(2);
/// Compilations running at once; a caller waits for a free worker within its deadline.
pub const MAX_WORKERS: usize = 2;
/// Distinct filter texts whose results are kept.
pub const CACHE_ENTRIES: usize = 256;
/// How long a filter refused for its time stays refused without a new try: asking again
/// costs no CPU, and a refusal caused by a busy machine does not stay for good.
pub const SLOW_REFUSAL_KEPT: Duration = Duration::from_secs(60);

/// Why a filter was refused; phrased for the operator, naming the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{bytes} bytes long: filters are limited to {max} bytes")]
    TooLong { bytes: usize, max: usize },
    #[error("{terms} terms: filters are limited to {max} terms (primitives joined by and/or)")]
    TooManyTerms { terms: usize, max: usize },
    #[error("took longer than {} ms to compile: simplify it", .limit.as_millis())]
    TooSlow { limit: Duration },
    #[error("the filter compiler is busy with slow filters: try again shortly")]
    Busy,
    /// libpcap's own message.
    #[error("{0}")]
    Invalid(String),
}

/// A compiled filter for inner frames of either link type tapwire writes. Clones share the
/// program; two filters are equal when their texts are.
#[derive(Clone)]
pub struct Filter {
    expr: Arc<str>,
    programs: Arc<Programs>,
}

impl Filter {
    /// Compiles `expr` (or takes it from the cache) within the limits above.
    pub fn new(expr: &str) -> Result<Filter, FilterError> {
        COMPILER.filter(expr)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    #[inline]
    pub fn matches(&self, link: LinkType, frame: &[u8]) -> bool {
        match link {
            LinkType::Raw => self
                .programs
                .raw
                .as_ref()
                .is_some_and(|p| p.0.filter(frame)),
            _ => self.programs.ethernet.0.filter(frame),
        }
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.expr == other.expr
    }
}

impl Eq for Filter {}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Filter").field(&self.expr).finish()
    }
}

/// The text of a filter for a message: whole when short, else its start and its length.
pub fn shown(expr: &str) -> String {
    const SHOWN_CHARS: usize = 60;
    if expr.chars().count() <= SHOWN_CHARS {
        format!("{expr:?}")
    } else {
        let head: String = expr.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({} bytes)", expr.len())
    }
}

/// The number of primitives in `expr`: one more than its `and`/`or` operators (`not` and
/// parentheses add none; `host a or b` is two).
pub fn terms(expr: &str) -> usize {
    let spaced = expr
        .replace("&&", " and ")
        .replace("||", " or ")
        .replace(['(', ')', '!'], " ");
    1 + spaced
        .split_ascii_whitespace()
        .filter(|w| w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or"))
        .count()
}

/// How many compilations libpcap has run in this process (cache hits and refusals before
/// libpcap are not counted).
pub fn n_compiled() -> u64 {
    COMPILER.n_compiled.load(Ordering::Relaxed)
}

static COMPILER: LazyLock<Compiler> = LazyLock::new(|| Compiler::new(COMPILE_DEADLINE));

/// One libpcap program, run by any thread.
struct Program(BpfProgram);

// SAFETY: a `bpf_program` is never changed after `pcap_compile` made it (only freed, on drop,
// which takes ownership); `pcap_offline_filter` reads its instructions and keeps its scratch
// memory on its own stack, so running it from several threads at once is sound.
#[allow(unsafe_code)]
unsafe impl Sync for Program {}

struct Programs {
    ethernet: Program,
    /// Frames that are raw IP (ERSPAN III FT=2, GENEVE carrying IP); `None` when the expression
    /// only makes sense for Ethernet (`ether host ...`), in which case they never match.
    raw: Option<Program>,
}

impl Programs {
    /// The programs for both link types; the error is libpcap's own message.
    fn compile(expr: &str) -> Result<Programs, FilterError> {
        let ethernet = compile(Linktype::ETHERNET, expr).map_err(FilterError::Invalid)?;
        // pcap_open_dead takes a DLT, and DLT_RAW is 12 on Linux (LINKTYPE_RAW, 101, is the
        // file-format number).
        let raw = compile(Linktype(12), expr).ok();
        Ok(Programs {
            ethernet: Program(ethernet),
            raw: raw.map(Program),
        })
    }
}

fn compile(link: Linktype, expr: &str) -> Result<BpfProgram, String> {
    let dead = Capture::dead(link).map_err(|e| e.to_string())?;
    dead.compile(expr, true).map_err(|e| e.to_string())
}

type Compiled = Result<Arc<Programs>, FilterError>;

/// The cache and the workers.
struct Compiler {
    deadline: Duration,
    cache: Mutex<Cache>,
    slots: Arc<Slots>,
    n_compiled: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Compiler {
    fn new(deadline: Duration) -> Compiler {
        Compiler {
            deadline,
            cache: Mutex::new(Cache::default()),
            slots: Arc::new(Slots {
                busy: Mutex::new(0),
                freed: Condvar::new(),
            }),
            n_compiled: AtomicU64::new(0),
        }
    }

    fn filter(&self, expr: &str) -> Result<Filter, FilterError> {
        if expr.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong {
                bytes: expr.len(),
                max: MAX_FILTER_BYTES,
            });
        }
        let n = terms(expr);
        if n > MAX_FILTER_TERMS {
            return Err(FilterError::TooManyTerms {
                terms: n,
                max: MAX_FILTER_TERMS,
            });
        }
        // The cache is not locked while compiling.
        let hit = lock(&self.cache).get(expr);
        let programs = match hit {
            Some(hit) => hit,
            None => {
                let got = self.compile(expr);
                if !matches!(got, Err(FilterError::Busy)) {
                    lock(&self.cache).put(expr, got.clone());
                }
                got
            }
        }?;
        Ok(Filter {
            expr: Arc::from(expr),
            programs,
        })
    }

    /// Compiles on a worker and waits for it until the deadline.
    fn compile(&self, expr: &str) -> Compiled {
        let until = Instant::now() + self.deadline;
        let Some(slot) = self.slots.take(until) else {
            tracing::warn!(
                filter = %shown(expr),
                "filter refused: every compiler is busy"
            );
            return Err(FilterError::Busy);
        };
        self.n_compiled.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let text = expr.to_string();
        let worker = std::thread::Builder::new()
            .name("tapwire-filter".into())
            .spawn(move || {
                let t0 = Instant::now();
                let got = Programs::compile(&text).map(Arc::new);
                tracing::debug!(
                    filter = %shown(&text),
                    ms = t0.elapsed().as_millis() as u64,
                    ok = got.is_ok(),
                    "filter compiled"
                );
                // A caller that gave up is gone: the result is dropped with the channel.
                let _ = tx.send(got);
                drop(slot);
            });
        if let Err(e) = worker {
            tracing::warn!(error = %e, "filter compiler thread did not start");
            return Err(FilterError::Busy);
        }
        match rx.recv_deadline(until) {
            Ok(got) => got,
            Err(_) => {
                tracing::warn!(
                    filter = %shown(expr),
                    limit_ms = self.deadline.as_millis() as u64,
                    "filter refused: it compiles too slowly"
                );
                Err(FilterError::TooSlow {
                    limit: self.deadline,
                })
            }
        }
    }
}

/// A counting semaphore of workers; a slot is given back when its worker ends, also after
/// its caller stopped waiting.
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Slots>, until: Instant) -> Option<Slot> {
        let mut busy = lock(&self.busy);
        while *busy >= MAX_WORKERS {
            let left = until.checked_duration_since(Instant::now())?;
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += 1;
        Some(Slot(Arc::clone(self)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *lock(&self.0.busy) -= 1;
        self.0.freed.notify_one();
    }
}

/// The last results by text, least recently used out first.
#[derive(Default)]
struct Cache {
    entries: HashMap<Arc<str>, Cached>,
    clock: u64,
}

struct Cached {
    got: Compiled,
    used: u64,
    /// A refusal for time is forgotten then.
    until: Option<Instant>,
}

impl Cache {
    fn get(&mut self, expr: &str) -> Option<Compiled> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(expr)?;
        if e.until.is_some_and(|t| Instant::now() >= t) {
            self.entries.remove(expr);
            return None;
        }
        e.used = now;
        Some(e.got.clone())
    }

    fn put(&mut self, expr: &str, got: Compiled) {
        if self.entries.len() >= CACHE_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| Arc::clone(k))
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        let until = matches!(got, Err(FilterError::TooSlow { .. }))
            .then(|| Instant::now() + SLOW_REFUSAL_KEPT);
        self.entries.insert(
            Arc::from(expr),
            Cached {
                got,
                used: self.clock,
                until,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(dst_port: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0x30, 0x39]);
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    /// `n` primitives joined by `or`, each a port range (the costliest primitive measured).
    fn portranges(n: usize) -> String {
        (0..n)
            .map(|i| format!("portrange {}-{}", i + 1, i + 5))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// `n` ports joined by `or`.
    fn ports(n: usize) -> String {
        (1..=n)
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    #[test]
    fn filters_ethernet_and_raw_ip() {
        let f = Filter::new("udp port 53").unwrap();
        assert!(f.matches(LinkType::Ethernet, &udp_frame(53)));
        assert!(!f.matches(LinkType::Ethernet, &udp_frame(54)));
        assert!(f.matches(LinkType::Raw, &udp_frame(53)[14..]));
        let e = Filter::new("ether host 02:00:00:00:00:01").unwrap();
        assert!(e.matches(LinkType::Ethernet, &udp_frame(1)));
        assert!(!e.matches(LinkType::Raw, &udp_frame(1)[14..]));
    }

    #[test]
    fn bad_filter_gives_libpcap_message() {
        let e = Filter::new("tcp port").unwrap_err();
        assert!(
            matches!(&e, FilterError::Invalid(m) if m.contains("syntax error")),
            "{e}"
        );
    }

    #[test]
    fn terms_are_the_primitives_between_and_and_or() {
        assert_eq!(terms("tcp"), 1);
        assert_eq!(terms("tcp port 443 and not host 10.0.0.1"), 2);
        assert_eq!(terms("host a or b or c"), 3);
        assert_eq!(terms("(port 1)or(port 2)&&!(port 3)||port 4"), 4);
        assert_eq!(terms("ip[0] + ip[1] & 0xf > 0"), 1);
        assert_eq!(terms(&ports(300)), 300);
    }

    #[test]
    fn a_filter_over_a_limit_is_refused_naming_it_before_libpcap_sees_it() {
        let c = Compiler::new(COMPILE_DEADLINE);
        let e = c.filter(&ports(300)).unwrap_err();
        assert_eq!(
            e,
            FilterError::TooManyTerms {
                terms: 300,
                max: MAX_FILTER_TERMS
            }
        );
        assert!(e.to_string().contains("limited to 64 terms"), "{e}");
        let long = format!("host 10.0.0.1 and len > {}", "9".repeat(MAX_FILTER_BYTES));
        let e = c.filter(&long).unwrap_err();
        assert!(
            matches!(
                e,
                FilterError::TooLong {
                    max: MAX_FILTER_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("limited to 4096 bytes"), "{e}");
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 0);
        assert!(shown(&long).ends_with(&format!("... ({} bytes)", long.len())));
        // At the limit, libpcap decides.
        c.filter(&ports(MAX_FILTER_TERMS)).unwrap();
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_text_is_compiled_once_and_its_error_is_kept_too() {
        let c = Compiler::new(COMPILE_DEADLINE);
        let a = c.filter("udp port 4242").unwrap();
        let b = c.filter("udp port 4242").unwrap();
        assert_eq!(a, b);
        assert!(
            Arc::ptr_eq(&a.programs, &b.programs),
            "the program is shared"
        );
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 1);
        assert!(c.filter("udp port").is_err());
        assert!(c.filter("udp port").is_err());
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 2);
        c.filter("udp port 4243").unwrap();
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_cache_forgets_the_least_recently_used_text() {
        let c = Compiler::new(COMPILE_DEADLINE);
        for i in 0..CACHE_ENTRIES {
            c.filter(&format!("udp port {}", i + 1)).unwrap();
        }
        // Port 1 is used again: port 2 is now the oldest and goes first.
        c.filter("udp port 1").unwrap();
        c.filter("udp port 9999").unwrap();
        let n = c.n_compiled.load(Ordering::Relaxed);
        c.filter("udp port 1").unwrap();
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), n, "port 1 was kept");
        c.filter("udp port 2").unwrap();
        assert_eq!(
            c.n_compiled.load(Ordering::Relaxed),
            n + 1,
            "port 2 was not"
        );
        assert_eq!(lock(&c.cache).entries.len(), CACHE_ENTRIES);
    }

    #[test]
    fn a_slow_compilation_is_refused_at_the_deadline_and_remembered() {
        // 64 port ranges take far more than 1 ms: the caller is refused at its deadline and
        // the worker's program is thrown away.
        let c = Compiler::new(Duration::from_millis(1));
        let slow = portranges(MAX_FILTER_TERMS);
        let t0 = Instant::now();
        let e = c.filter(&slow).unwrap_err();
        assert_eq!(
            e,
            FilterError::TooSlow {
                limit: Duration::from_millis(1)
            }
        );
        assert!(e.to_string().contains("longer than 1 ms"), "{e}");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        // Asking again costs nothing: the refusal is kept, for a while.
        assert!(c.filter(&slow).is_err());
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 1);
        lock(&c.cache).entries.get_mut(slow.as_str()).unwrap().until = Some(Instant::now());
        assert!(c.filter(&slow).is_err());
        assert_eq!(c.n_compiled.load(Ordering::Relaxed), 2, "tried again");
    }

    #[test]
    fn workers_are_bounded_and_a_caller_waits_for_one_within_its_deadline() {
        let c = Compiler::new(Duration::from_millis(1));
        // Both workers busy with refused filters still compiling.
        c.filter(&portranges(MAX_FILTER_TERMS)).unwrap_err();
        c.filter(&portranges(MAX_FILTER_TERMS - 1)).unwrap_err();
        assert_eq!(*lock(&c.slots.busy), MAX_WORKERS);
        assert_eq!(c.filter("udp port 7").unwrap_err(), FilterError::Busy);
        // Busy is not remembered: once the workers end, the same text compiles.
        let t0 = Instant::now();
        while *lock(&c.slots.busy) > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "workers never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let patient = Compiler {
            deadline: COMPILE_DEADLINE,
            ..c
        };
        patient.filter("udp port 7").unwrap();
    }
}
