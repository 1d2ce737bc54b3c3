//! tapwire-tui: the terminal UI of the collector, `tapwire top` and the inline view of
//! `tapwire collect`.
//!
//! Everything it takes from the operating system comes in through [`start`]: a [`Source`] of
//! snapshots (the stats API over HTTP, the engine's own snapshot in-process, or a fake), an
//! [`Actions`] sink (HTTP, the engine's control channel, or a fake), terminal [`Events`]
//! (crossterm or a [`input::Script`]), a [`Clock`] and a ratatui `Terminal` (crossterm or
//! `TestBackend`). So the whole UI runs in tests, frame by frame.
//!
//! - [`state`]: what is shown and what keys do; pure and unit-tested.
//! - [`history`]: rates between polled snapshots, for the charts.
//! - [`render`]: drawing the state into a frame.
//! - [`client`], [`input`], [`logs`]: the shells (HTTP, terminal, clock, log buffer).
//!
//! `tapwire top` (interactive, `--raw`, `--json`) and the inline entry point are the `tapwire`
//! binary's (`cli/src/top.rs`), which plug the real terminal, clock and client in here.
//!
//! The UI polls once per `poll_every` and draws only when the snapshot, the link state, the
//! log pane or the input changed; between polls it sleeps in the terminal's event wait.

pub mod client;
pub mod fixture;
pub mod fleet;
pub mod format;
pub mod history;
pub mod input;
pub mod logs;
pub mod render;
pub mod state;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::Event;

pub use client::{Actions, Source};
pub use input::{Clock, Events};
use logs::LogBuffer;
use state::{App, Command};

/// How one UI session runs.
pub struct Options {
    /// What the header says the data comes from.
    pub endpoint: String,
    pub poll_every: Duration,
    /// The log pane's lines (inline `collect`); `None`: no log pane.
    pub logs: Option<LogBuffer>,
    /// Set by someone else to end the UI (the collector stopping on SIGTERM).
    pub stop: Option<Arc<AtomicBool>>,
    /// The UI runs inside `tapwire collect` (quitting it stops the collector), not in
    /// `tapwire top`.
    pub inline: bool,
}

impl Options {
    pub fn new(endpoint: impl Into<String>) -> Options {
        Options {
            endpoint: endpoint.into(),
            poll_every: Duration::from_secs(1),
            logs: None,
            stop: None,
            inline: false,
        }
    }
}

/// What a UI session did, for tests and measurements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub n_polls: u64,
    pub n_draws: u64,
}

/// Runs the UI until `q`, Ctrl-C or `opts.stop`. The only entry point: every input is a
/// parameter.
pub fn start<B: Backend>(
    terminal: &mut Terminal<B>,
    source: &mut dyn Source,
    actions: &mut dyn Actions,
    events: &mut dyn Events,
    clock: &dyn Clock,
    opts: Options,
) -> io::Result<RunStats> {
    let mut app = App::new(opts.endpoint);
    app.poll_every = opts.poll_every;
    app.inline = opts.inline;
    app.has_logs = opts.logs.is_some();
    app.show_logs = app.has_logs;
    run(
        terminal, &mut app, source, actions, events, clock, &opts.logs, &opts.stop,
    )
    .map(|(stats, _)| stats)
}

/// The session view's loop; ends with what ended it (`Quit`, or `Back` to the fleet view).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    source: &mut dyn Source,
    actions: &mut dyn Actions,
    events: &mut dyn Events,
    clock: &dyn Clock,
    logs: &Option<LogBuffer>,
    stop: &Option<Arc<AtomicBool>>,
) -> io::Result<(RunStats, Command)> {
    let mut stats = RunStats::default();
    let mut next_poll = clock.now();
    let mut dirty = true;
    let mut logs_seen = 0;
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let now = clock.now();
        if now >= next_poll {
            stats.n_polls += 1;
            dirty |= match source.fetch() {
                Ok(s) => app.on_snapshot(s, clock.now()),
                Err(e) => app.on_error(e, clock.now()),
            };
            dirty |= app.expire(clock.now());
            next_poll = now + app.poll_every;
        }
        if let Some(l) = logs {
            let n = l.n_pushed();
            dirty |= n != logs_seen && app.show_logs;
            logs_seen = n;
        }
        if dirty {
            terminal
                .draw(|f| render::draw(f, app, logs.as_ref()))
                .map_err(|e| io::Error::other(e.to_string()))?;
            stats.n_draws += 1;
            dirty = false;
        }
        let Some(event) = events.next(next_poll.saturating_sub(clock.now()))? else {
            continue;
        };
        app.now = clock.now();
        if let Event::Resize(..) = event {
            dirty = true;
            continue;
        }
        let Some(key) = input::press(&event) else {
            continue;
        };
        dirty = true;
        match app.key(key) {
            Some(c @ (Command::Quit | Command::Back)) => return Ok((stats, c)),
            Some(Command::Act { session, action }) => {
                let result = actions.act(&session, action);
                app.action_done(result, clock.now());
                // Show the effect as soon as the collector publishes it.
                next_poll = clock.now();
            }
            Some(Command::Save { session, minutes }) => {
                let result = actions.save(&session, minutes);
                app.action_done(result, clock.now());
            }
            None => {}
        }
    }
    Ok((stats, Command::Quit))
}
