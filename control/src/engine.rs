//! What the control plane is given of the collector it runs in: a narrow [`Engine`] (check and
//! apply the API's sessions, act on a session, what the configuration file defines) and a
//! [`Clock`]. The collector implements both; tests give stand-ins. Nothing here knows the
//! engine's types: a session is the engine's own [`Engine::Session`], made from a stored
//! definition by the engine and only compared and handed back by the controller.

use std::time::Instant;

use tapwire_api_types::Action;
use tapwire_api_types::probe::Encapsulation;

use crate::store::{Load, StoredSession};

/// Why the engine did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The engine is gone: the collector is stopping.
    Stopped,
    /// It did not answer in time.
    NoAnswer,
    /// It answered no, with its reason (an unknown session, a clash with a file reloaded in
    /// between).
    Refused(String),
}

/// The collector's engine as the control plane sees it.
pub trait Engine: Send + Sync + 'static {
    /// A session as the engine runs it.
    type Session: Clone + PartialEq + Send + 'static;

    /// An API session's definition checked alone (name, filter, files, TAP) and made into the
    /// engine's session; the error names the field at fault.
    fn session(&self, def: &StoredSession) -> Result<Self::Session, String>;
    /// The API's sessions merged with the configuration file's: the error names the clash
    /// (a name or a TAP used twice).
    fn check(&self, sessions: &[Self::Session]) -> Result<(), String>;
    /// Hands the API's sessions (all of them) to an engine that has not started yet: it
    /// applies them before its first packet. Does not wait.
    fn queue(&self, sessions: Vec<Self::Session>) -> Result<(), EngineError>;
    /// Applies the API's sessions (all of them) as a reload is applied, and waits for the
    /// engine's answer.
    fn apply(&self, sessions: Vec<Self::Session>) -> Result<(), EngineError>;
    /// Enables, disables or rotates a running session; the answer is the engine's message.
    fn action(&self, session: &str, action: Action) -> Result<String, EngineError>;
    /// Whether the configuration file defines a session of this name (names are shared).
    fn file_session(&self, name: &str) -> bool;
    /// The configuration file's session whose source rules gather `encap` with mirror id
    /// `id`, if any: API sessions come first and would take its traffic.
    fn file_session_gathering(&self, encap: Encapsulation, id: u32) -> Option<String>;
    /// Checks a tcpdump expression as the collector compiles its filters.
    fn check_filter(&self, expr: &str) -> Result<(), String>;
    /// What the collector carries now, reported with each heartbeat: the fleet places new
    /// sessions on the least loaded collector. Read from memory, never waits.
    fn load(&self) -> Load {
        Load::default()
    }
}

/// Where the controller's time comes from: no clock is read inside the control plane.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, nanoseconds since the Unix epoch: what definitions, probes and audit
    /// rows are stamped with.
    fn now_ns(&self) -> u64;
    /// Monotonic time, for how long ago a probe was heard from.
    fn monotonic(&self) -> Instant;
}
