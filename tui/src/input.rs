//! Terminal events and time, the two other inputs the UI takes from the operating system.
//! [`Terminal`] and [`SystemClock`] are the real ones; [`Script`] and [`FakeClock`] are the
//! scripted ones the tests drive the whole UI with.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Terminal input (keys, resizes).
pub trait Events {
    /// The next event, waiting at most `timeout`; `None` when the time ran out.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

/// Monotonic time since an arbitrary origin.
pub trait Clock {
    fn now(&self) -> Duration;
}

/// crossterm's event queue on the real terminal.
pub struct Terminal;

impl Events for Terminal {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

pub struct SystemClock(Instant);

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told (shared between a test and its [`Script`]).
#[derive(Clone, Default)]
pub struct FakeClock(Rc<Cell<Duration>>);

impl FakeClock {
    pub fn advance(&self, d: Duration) {
        self.0.set(self.0.get() + d);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.0.get()
    }
}

/// One step of a scripted session.
#[derive(Debug, Clone)]
pub enum Step {
    /// An event arrives at once.
    Event(Event),
    /// Nothing arrives: the UI's whole wait passes on the fake clock (so it polls again).
    Idle,
}

/// Scripted terminal input on a [`FakeClock`]. Running out of steps is an error, so that a
/// test whose script forgot to quit fails instead of hanging.
pub struct Script {
    steps: VecDeque<Step>,
    clock: FakeClock,
}

impl Script {
    pub fn new(clock: FakeClock) -> Script {
        Script {
            steps: VecDeque::new(),
            clock,
        }
    }

    pub fn key(mut self, code: KeyCode) -> Script {
        self.steps.push_back(Step::Event(Event::Key(KeyEvent::new(
            code,
            KeyModifiers::NONE,
        ))));
        self
    }

    /// Each character of `s` as a key press.
    pub fn keys(mut self, s: &str) -> Script {
        for c in s.chars() {
            self = self.key(KeyCode::Char(c));
        }
        self
    }

    pub fn ctrl(mut self, c: char) -> Script {
        self.steps.push_back(Step::Event(Event::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::CONTROL,
        ))));
        self
    }

    pub fn event(mut self, e: Event) -> Script {
        self.steps.push_back(Step::Event(e));
        self
    }

    /// `n` idle waits: `n` more polls of the source.
    pub fn idle(mut self, n: usize) -> Script {
        for _ in 0..n {
            self.steps.push_back(Step::Idle);
        }
        self
    }

    pub fn remaining(&self) -> usize {
        self.steps.len()
    }
}

impl Events for Script {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        match self.steps.pop_front() {
            Some(Step::Event(e)) => Ok(Some(e)),
            Some(Step::Idle) => {
                self.clock.advance(timeout);
                Ok(None)
            }
            None => Err(io::Error::other("script ran out of steps before quitting")),
        }
    }
}

/// A key press as the UI sees it: key releases and repeats (reported by some terminals)
/// are not presses.
pub fn press(e: &Event) -> Option<KeyEvent> {
    match e {
        Event::Key(k) if k.kind == KeyEventKind::Press => Some(*k),
        _ => None,
    }
}
