//! The engine as the control plane ([`tapwire_control`]) sees it: [`EngineLink`] implements its
//! [`Engine`] trait over the engine's control channel and the configuration file the engine
//! publishes, with the collector's own session types; [`SystemClock`] is its clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use tapwire_api_types::Action;
use tapwire_api_types::probe::Encapsulation;
use tapwire_control::store::{Load, StoredSession};
use tapwire_control::{Clock, Engine, EngineError};
use tapwire_formats::decap::Kind;

use super::engine::{Control, now_ns};
use crate::config::{self, Config, FilesConfig, SessionConfig, SourceMatch};

/// How long a request to the engine may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The control plane's view of the engine.
pub struct EngineLink {
    control: Sender<Control>,
    /// The configuration file as the engine last loaded it.
    file: Arc<ArcSwap<Config>>,
    /// Files settings API sessions start from (the file's defaults and the flags).
    default_files: FilesConfig,
    /// The engine's latest snapshot: the load reported with each heartbeat.
    snapshot: Option<Arc<ArcSwap<tapwire_api_types::Snapshot>>>,
}

impl EngineLink {
    pub fn new(
        control: Sender<Control>,
        file: Arc<ArcSwap<Config>>,
        default_files: FilesConfig,
    ) -> EngineLink {
        EngineLink {
            control,
            file,
            default_files,
            snapshot: None,
        }
    }

    /// Reports the load of `snapshot` with each heartbeat.
    pub fn with_snapshot(
        mut self,
        snapshot: Arc<ArcSwap<tapwire_api_types::Snapshot>>,
    ) -> EngineLink {
        self.snapshot = Some(snapshot);
        self
    }
}

impl EngineLink {
    /// Sends the request `make` builds around a reply channel, and waits for the answer.
    fn ask<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, String>>) -> Control,
    ) -> Result<T, EngineError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.control
            .send(make(reply))
            .map_err(|_| EngineError::Stopped)?;
        match answer.recv_timeout(ANSWER_WITHIN) {
            Ok(r) => r.map_err(EngineError::Refused),
            Err(_) => Err(EngineError::NoAnswer),
        }
    }
}

/// The decapsulator's kind for a probe's encapsulation.
pub fn kind_of(e: Encapsulation) -> Kind {
    match e {
        Encapsulation::ErspanIi => Kind::ErspanII,
        Encapsulation::ErspanIii => Kind::ErspanIII,
        Encapsulation::Gre => Kind::Gre,
    }
}

impl Engine for EngineLink {
    type Session = SessionConfig;

    fn session(&self, s: &StoredSession) -> Result<SessionConfig, String> {
        config::api_session(
            &s.name,
            s.enabled,
            vec![SourceMatch {
                src: None,
                kind: Some(kind_of(s.encap)),
                ids: Some(s.mirror_id..=s.mirror_id),
            }],
            s.filter.clone(),
            s.files.as_ref(),
            s.tap.as_ref(),
            &config::Defaults {
                files: &self.default_files,
                hooks: &self.file.load().hooks,
                origin: config::Origin::Api,
            },
        )
        .map_err(|e| e.0)
    }

    fn check(&self, sessions: &[SessionConfig]) -> Result<(), String> {
        config::merged(&self.file.load(), sessions)
            .map(drop)
            .map_err(|e| e.0)
    }

    fn queue(&self, sessions: Vec<SessionConfig>) -> Result<(), EngineError> {
        let (reply, _) = crossbeam_channel::bounded(1);
        self.control
            .send(Control::Apply { sessions, reply })
            .map_err(|_| EngineError::Stopped)
    }

    fn apply(&self, sessions: Vec<SessionConfig>) -> Result<(), EngineError> {
        self.ask(|reply| Control::Apply { sessions, reply })
    }

    fn action(&self, session: &str, action: Action) -> Result<String, EngineError> {
        self.ask(|reply| Control::Action {
            session: session.to_string(),
            action,
            reply,
        })
    }

    fn file_session(&self, name: &str) -> bool {
        self.file.load().sessions.iter().any(|s| s.name == name)
    }

    fn file_session_gathering(&self, encap: Encapsulation, id: u32) -> Option<String> {
        let kind = kind_of(encap);
        self.file
            .load()
            .sessions
            .iter()
            .find(|s| {
                s.sources.iter().any(|m| {
                    m.kind.is_none_or(|k| k == kind)
                        && m.ids.as_ref().is_some_and(|r| r.contains(&id))
                })
            })
            .map(|s| s.name.clone())
    }

    fn check_filter(&self, expr: &str) -> Result<(), String> {
        config::compile_check(expr)
    }

    fn load(&self) -> Load {
        let Some(s) = &self.snapshot else {
            return Load::default();
        };
        let s = s.load();
        Load {
            // A fold from 0.0: an empty f64 sum is -0.0, shown as "-0".
            pps: s.sessions.iter().fold(0.0, |a, x| a + x.rates.pps_10s),
            packets: s.totals.packets,
            lost: s.totals.lost,
        }
    }
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}
