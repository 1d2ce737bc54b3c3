//! Terminal events and time, the two other inputs the UI takes from the operating system.
//! [`Terminal`] and [`SystemClock`] are the real ones; [`Script`] and [`FakeClock`] are the
//! scripted ones the tests drive the whole UI with.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
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
///
/// The wait itself is a `poll(2)` on stdin, not crossterm's: when the terminal hangs up (the
/// SSH session or the tmux pane goes away), crossterm 0.29 reads end-of-file in a loop that
/// never returns and burns a core. Here a hang-up ends the UI with an error instead (and the
/// inline collector stops cleanly). crossterm is only asked for events that are already
/// there: the ones it has buffered, or when stdin is readable.
pub struct Terminal;

impl Events for Terminal {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            // crossterm reads /dev/tty then; there is no fd of ours to watch.
            return if event::poll(timeout)? {
                event::read().map(Some)
            } else {
                Ok(None)
            };
        }
        // Keys crossterm has already read (several come in one read) go first.
        wait_stdin(&stdin, Duration::ZERO)?;
        if event::poll(Duration::ZERO)? {
            return event::read().map(Some);
        }
        if !wait_stdin(&stdin, timeout)? {
            return Ok(None);
        }
        if event::poll(Duration::ZERO)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Waits up to `timeout` for stdin to be readable; an error when the terminal hung up.
fn wait_stdin(stdin: &io::Stdin, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the terminal went away",
        ));
    }
    Ok(revents.contains(PollFlags::POLLIN))
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
