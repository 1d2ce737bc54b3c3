//! The UI's state and everything it decides without a terminal: which rows are shown (filter,
//! sort, expansion), which one is selected, the rate history, the connection state, dialogs and
//! what a key does. Pure: time comes in as an argument and actions go out as [`Command`]s.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::widgets::TableState;
use tapwire_api_types::{Action, SessionState, SessionStats, Snapshot, SourceStats};

use crate::format::parse_rfc3339;
use crate::history::RateHistory;

/// How long an action's answer stays in the footer.
const STATUS_FOR: Duration = Duration::from_secs(6);

/// The session table's columns, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    Name,
    State,
    Sources,
    Pps1,
    Pps10,
    Bps1,
    Bps10,
    Packets,
    Bytes,
    Lost,
    Drops,
    Truncated,
    LastSeen,
    Size,
    File,
}

impl Column {
    pub const ALL: [Column; 15] = [
        Column::Name,
        Column::State,
        Column::Sources,
        Column::Pps1,
        Column::Pps10,
        Column::Bps1,
        Column::Bps10,
        Column::Packets,
        Column::Bytes,
        Column::Lost,
        Column::Drops,
        Column::Truncated,
        Column::LastSeen,
        Column::Size,
        Column::File,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "SESSION",
            Column::State => "STATE",
            Column::Sources => "SRC",
            Column::Pps1 => "PPS",
            Column::Pps10 => "PPS10",
            Column::Bps1 => "BPS",
            Column::Bps10 => "BPS10",
            Column::Packets => "PKTS",
            Column::Bytes => "BYTES",
            Column::Lost => "LOST",
            Column::Drops => "DROP",
            Column::Truncated => "TRUNC",
            Column::LastSeen => "SEEN",
            Column::Size => "SIZE",
            Column::File => "FILE",
        }
    }

    /// What the column means, for the help overlay.
    pub fn help(self) -> &'static str {
        match self {
            Column::Name => "session name; its sources (outer address, kind, id) below it",
            Column::State => "receiving (packets in the last 5 s), idle, disabled, error",
            Column::Sources => "number of sources",
            Column::Pps1 | Column::Bps1 => "packets/bits per second over the last 1 s",
            Column::Pps10 | Column::Bps10 => "the same over the last 10 s",
            Column::Packets | Column::Bytes => "mirrored packets and inner bytes received",
            Column::Lost => "lost in transit: sequence-number gaps",
            Column::Drops => "not written by tapwire: disabled, filter, disk, write, backlog",
            Column::Truncated => "frames the sender truncated (ERSPAN T bit)",
            Column::LastSeen => "time since the last packet",
            Column::Size | Column::File => "the capture file being written and its size",
        }
    }

    /// Text columns sort A to Z first; numbers biggest first.
    fn descending_first(self) -> bool {
        !matches!(self, Column::Name | Column::State | Column::File)
    }

    fn next(self, step: isize) -> Column {
        let i = Column::ALL.iter().position(|c| *c == self).unwrap_or(0) as isize;
        let n = Column::ALL.len() as isize;
        Column::ALL[(i + step).rem_euclid(n) as usize]
    }
}

/// The link to the collector.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Nothing fetched yet.
    Connecting,
    Connected,
    /// The last fetch failed; `since` is when the first of the failures in a row happened.
    Disconnected {
        error: String,
        since: Duration,
    },
}

/// What a row of the table shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    Session(String),
    /// A session's source, by its label.
    Source(String, String),
}

impl RowKey {
    pub fn session(&self) -> &str {
        match self {
            RowKey::Session(s) | RowKey::Source(s, _) => s,
        }
    }
}

pub struct Row<'a> {
    pub key: RowKey,
    pub session: &'a SessionStats,
    pub source: Option<&'a SourceStats>,
}

/// A destructive action waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub session: String,
    pub action: Action,
}

/// "Save the last N minutes" of a session, N being typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveAsk {
    pub session: String,
    /// The digits typed so far.
    pub minutes: String,
}

/// The minutes a save offers first.
pub const SAVE_MINUTES_DEFAULT: &str = "5";
/// The most a save takes (the collector's bound too).
pub const SAVE_MINUTES_MAX: u32 = 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing the filter.
    Filter,
    Help,
    Confirm(Confirm),
    Save(SaveAsk),
}

/// What the runner must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Quit,
    /// Back to the fleet view (`top --fleet`).
    Back,
    Act {
        session: String,
        action: Action,
    },
    /// Save the session's last `minutes` into a file the collector names.
    Save {
        session: String,
        minutes: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub error: bool,
    pub until: Duration,
}

pub struct App {
    /// Where the data comes from, for the header (`http://127.0.0.1:9750`, `in-process`).
    pub endpoint: String,
    pub snapshot: Option<Arc<Snapshot>>,
    pub link: Link,
    /// Clock time of the last successful fetch.
    pub last_data_at: Option<Duration>,
    /// How often the source is polled (shown while disconnected).
    pub poll_every: Duration,
    history: BTreeMap<String, RateHistory>,
    pub totals_history: RateHistory,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    pub mode: Mode,
    expanded: BTreeSet<String>,
    selected: Option<RowKey>,
    /// Where the selection was, for when its row goes away.
    selected_index: usize,
    pub show_detail: bool,
    /// The UI of `tapwire collect` (quitting stops the collector), not of `tapwire top`.
    pub inline: bool,
    /// Opened from the fleet view: Esc (with no filter) goes back to it.
    pub back: bool,
    /// Whether there is a log pane to show (the inline UI of `collect`) and whether it is shown.
    pub has_logs: bool,
    pub show_logs: bool,
    pub status: Option<Status>,
    /// Clock time, as of the last input or poll.
    pub now: Duration,
    /// Rows the table showed last time (for page up/down), set by the renderer.
    pub page_rows: usize,
    /// Scroll position of the table, kept by the renderer.
    pub table: TableState,
}

impl App {
    pub fn new(endpoint: impl Into<String>) -> App {
        App {
            endpoint: endpoint.into(),
            snapshot: None,
            link: Link::Connecting,
            last_data_at: None,
            poll_every: Duration::from_secs(1),
            history: BTreeMap::new(),
            totals_history: RateHistory::default(),
            sort: Column::Name,
            descending: false,
            filter: String::new(),
            mode: Mode::Normal,
            expanded: BTreeSet::new(),
            selected: None,
            selected_index: 0,
            show_detail: true,
            inline: false,
            back: false,
            has_logs: false,
            show_logs: false,
            status: None,
            now: Duration::ZERO,
            page_rows: 10,
            table: TableState::default(),
        }
    }

    /// Takes a fetched snapshot; returns whether anything on screen may have changed.
    pub fn on_snapshot(&mut self, snap: Arc<Snapshot>, now: Duration) -> bool {
        self.now = now;
        self.last_data_at = Some(now);
        let was_connected = self.link == Link::Connected;
        self.link = Link::Connected;
        if let Some(old) = &self.snapshot
            && (Arc::ptr_eq(old, &snap) || **old == *snap)
        {
            return !was_connected;
        }
        let t = snap.uptime_s;
        // Totals count packets read; the inputs' byte counters add up to the bytes read.
        let bytes_in = snap.inputs.iter().map(|i| i.bytes).sum();
        self.totals_history.push(t, snap.totals.packets, bytes_in);
        for s in &snap.sessions {
            self.history
                .entry(s.name.clone())
                .or_default()
                .push(t, s.packets, s.bytes);
        }
        self.history
            .retain(|name, _| snap.sessions.iter().any(|s| &s.name == name));
        self.snapshot = Some(snap);
        self.resolve_selection();
        true
    }

    /// A failed fetch. The screen changes every time: it says for how long.
    pub fn on_error(&mut self, error: String, now: Duration) -> bool {
        self.now = now;
        match &mut self.link {
            Link::Disconnected { error: e, .. } => *e = error,
            _ => self.link = Link::Disconnected { error, since: now },
        }
        true
    }

    /// Clears an expired status message; returns whether it did.
    pub fn expire(&mut self, now: Duration) -> bool {
        self.now = now;
        if self.status.as_ref().is_some_and(|s| now >= s.until) {
            self.status = None;
            return true;
        }
        false
    }

    /// The answer to an action, for the footer.
    pub fn action_done(&mut self, result: Result<String, String>, now: Duration) {
        let (text, error) = match result {
            Ok(t) => (t, false),
            Err(t) => (t, true),
        };
        self.status = Some(Status {
            text,
            error,
            until: now + STATUS_FOR,
        });
    }

    pub fn history(&self, session: &str) -> Option<&RateHistory> {
        self.history.get(session)
    }

    pub fn is_expanded(&self, session: &str) -> bool {
        self.expanded.contains(session)
    }

    /// The rows shown, in order: sessions that pass the filter, sorted, each followed by its
    /// sources when expanded.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let Some(snap) = &self.snapshot else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        let mut sessions: Vec<&SessionStats> = snap
            .sessions
            .iter()
            .filter(|s| needle.is_empty() || matches(s, &needle))
            .collect();
        sessions.sort_by(|a, b| {
            let o = compare_sessions(self.sort, a, b);
            let o = if self.descending { o.reverse() } else { o };
            o.then_with(|| a.name.cmp(&b.name))
        });
        let mut rows = Vec::new();
        for s in sessions {
            rows.push(Row {
                key: RowKey::Session(s.name.clone()),
                session: s,
                source: None,
            });
            if self.expanded.contains(&s.name) {
                let mut sources: Vec<&SourceStats> = s.sources.iter().collect();
                sources.sort_by(|a, b| {
                    let o = compare_sources(self.sort, a, b);
                    let o = if self.descending { o.reverse() } else { o };
                    o.then_with(|| a.label.cmp(&b.label))
                });
                for src in sources {
                    rows.push(Row {
                        key: RowKey::Source(s.name.clone(), src.label.clone()),
                        session: s,
                        source: Some(src),
                    });
                }
            }
        }
        rows
    }

    /// The index of the selected row among `rows`.
    pub fn selected_in(&self, rows: &[Row<'_>]) -> Option<usize> {
        let key = self.selected.as_ref()?;
        rows.iter().position(|r| &r.key == key)
    }

    pub fn selected(&self) -> Option<&RowKey> {
        self.selected.as_ref()
    }

    /// The session the selection is on (or in).
    pub fn selected_session(&self) -> Option<&SessionStats> {
        let name = self.selected.as_ref()?.session();
        self.snapshot
            .as_ref()?
            .sessions
            .iter()
            .find(|s| s.name == name)
    }

    /// Keeps the selection on a row that exists: the same one if it is still shown, else its
    /// session, else the row now at its old place.
    fn resolve_selection(&mut self) {
        let (key, index) = {
            let rows = self.rows();
            if rows.is_empty() {
                (None, 0)
            } else if let Some(i) = self.selected_in(&rows) {
                (Some(rows[i].key.clone()), i)
            } else if let Some(i) = self.selected.as_ref().and_then(|k| {
                rows.iter()
                    .position(|r| r.key == RowKey::Session(k.session().to_string()))
            }) {
                (Some(rows[i].key.clone()), i)
            } else {
                let i = self.selected_index.min(rows.len() - 1);
                (Some(rows[i].key.clone()), i)
            }
        };
        self.selected = key;
        self.selected_index = index;
    }

    fn move_selection(&mut self, to: impl FnOnce(usize, usize) -> usize) {
        let (key, index) = {
            let rows = self.rows();
            if rows.is_empty() {
                return;
            }
            let cur = self.selected_in(&rows).unwrap_or(0);
            let i = to(cur, rows.len()).min(rows.len() - 1);
            (rows[i].key.clone(), i)
        };
        self.selected = Some(key);
        self.selected_index = index;
    }

    fn move_by(&mut self, delta: isize) {
        self.move_selection(|cur, _| cur.saturating_add_signed(delta));
    }

    fn set_expanded(&mut self, expand: bool) {
        let Some(key) = self.selected.clone() else {
            return;
        };
        let name = key.session().to_string();
        if expand {
            self.expanded.insert(name);
        } else {
            self.expanded.remove(&name);
            self.selected = Some(RowKey::Session(name));
        }
        self.resolve_selection();
    }

    /// Handles one key press.
    pub fn key(&mut self, k: KeyEvent) -> Option<Command> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Command::Quit);
        }
        match self.mode.clone() {
            Mode::Filter => {
                match k.code {
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Esc => {
                        self.filter.clear();
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) => self.filter.push(c),
                    _ => {}
                }
                self.resolve_selection();
                None
            }
            Mode::Help => {
                match k.code {
                    KeyCode::Char('q') => return Some(Command::Quit),
                    KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter => self.mode = Mode::Normal,
                    _ => {}
                }
                None
            }
            Mode::Confirm(c) => {
                match k.code {
                    KeyCode::Char('y' | 'Y') | KeyCode::Enter => {
                        self.mode = Mode::Normal;
                        return Some(Command::Act {
                            session: c.session,
                            action: c.action,
                        });
                    }
                    KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => self.mode = Mode::Normal,
                    _ => {}
                }
                None
            }
            Mode::Save(mut ask) => {
                match k.code {
                    KeyCode::Char(c @ '0'..='9') if ask.minutes.len() < 4 => {
                        ask.minutes.push(c);
                        self.mode = Mode::Save(ask);
                    }
                    KeyCode::Backspace => {
                        ask.minutes.pop();
                        self.mode = Mode::Save(ask);
                    }
                    KeyCode::Enter => {
                        self.mode = Mode::Normal;
                        match ask.minutes.parse::<u32>() {
                            Ok(m) if (1..=SAVE_MINUTES_MAX).contains(&m) => {
                                return Some(Command::Save {
                                    session: ask.session,
                                    minutes: m,
                                });
                            }
                            _ => {
                                let text = format!(
                                    "save: minutes from 1 to {SAVE_MINUTES_MAX}, not {:?}",
                                    ask.minutes
                                );
                                self.action_done(Err(text), self.now);
                            }
                        }
                    }
                    KeyCode::Esc | KeyCode::Char('q') => self.mode = Mode::Normal,
                    _ => self.mode = Mode::Save(ask),
                }
                None
            }
            Mode::Normal => self.normal_key(k),
        }
    }

    fn normal_key(&mut self, k: KeyEvent) -> Option<Command> {
        match k.code {
            KeyCode::Char('q') => return Some(Command::Quit),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-(self.page_rows.max(1) as isize)),
            KeyCode::PageDown => self.move_by(self.page_rows.max(1) as isize),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(|_, _| 0),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(|_, n| n - 1),
            KeyCode::Right | KeyCode::Char('l') => self.set_expanded(true),
            KeyCode::Left | KeyCode::Char('h') => self.set_expanded(false),
            KeyCode::Enter | KeyCode::Char(' ') => {
                let expanded = self
                    .selected
                    .as_ref()
                    .is_some_and(|k| self.expanded.contains(k.session()));
                self.set_expanded(!expanded);
            }
            KeyCode::Char('x') => {
                if self.expanded.is_empty() {
                    if let Some(s) = &self.snapshot {
                        self.expanded = s.sessions.iter().map(|s| s.name.clone()).collect();
                    }
                } else {
                    self.expanded.clear();
                    if let Some(k) = self.selected.clone() {
                        self.selected = Some(RowKey::Session(k.session().to_string()));
                    }
                }
                self.resolve_selection();
            }
            KeyCode::Char('s') => self.sort_by(self.sort.next(1)),
            KeyCode::Char('S') => self.sort_by(self.sort.next(-1)),
            KeyCode::Char('i') => {
                self.descending = !self.descending;
                self.resolve_selection();
            }
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc if self.back && self.filter.is_empty() => return Some(Command::Back),
            KeyCode::Esc => {
                self.filter.clear();
                self.resolve_selection();
            }
            KeyCode::Tab => self.show_detail = !self.show_detail,
            KeyCode::Char('L') if self.has_logs => self.show_logs = !self.show_logs,
            KeyCode::Char('L') => {
                let why = if self.inline {
                    "no log pane: this collector writes its log to its --log-file"
                } else {
                    "no log pane in tapwire top: the collector's log is in its --log-file or journal"
                };
                self.action_done(Err(why.to_string()), self.now);
            }
            KeyCode::Char('e') => {
                return self.selected_session().map(|s| Command::Act {
                    session: s.name.clone(),
                    action: Action::Enable,
                });
            }
            KeyCode::Char('d') => self.ask(Action::Disable),
            KeyCode::Char('r') => self.ask(Action::Rotate),
            KeyCode::Char('w') => self.ask_save(),
            _ => {}
        }
        None
    }

    fn sort_by(&mut self, c: Column) {
        self.sort = c;
        self.descending = c.descending_first();
        self.resolve_selection();
    }

    fn ask(&mut self, action: Action) {
        let Some(s) = self.selected_session() else {
            return;
        };
        if action == Action::Rotate && s.files.is_none() {
            let text = format!("session {} writes no files", s.name);
            self.action_done(Err(text), self.now);
            return;
        }
        self.mode = Mode::Confirm(Confirm {
            session: s.name.clone(),
            action,
        });
    }

    /// Asks how many of the last minutes of the selected session to save.
    fn ask_save(&mut self) {
        let Some(s) = self.selected_session() else {
            return;
        };
        if s.files.is_none() {
            let text = format!("session {} writes no files: nothing to save from", s.name);
            self.action_done(Err(text), self.now);
            return;
        }
        self.mode = Mode::Save(SaveAsk {
            session: s.name.clone(),
            minutes: SAVE_MINUTES_DEFAULT.into(),
        });
    }

    /// Seconds since the last packet of a session or source, as of the snapshot.
    pub fn age_s(&self, last_seen: Option<&str>) -> Option<f64> {
        let snap = self.snapshot.as_ref()?;
        let now = parse_rfc3339(&snap.started)? + snap.uptime_s;
        Some((now - parse_rfc3339(last_seen?)?).max(0.0))
    }
}

fn matches(s: &SessionStats, needle: &str) -> bool {
    let has = |t: &str| t.to_lowercase().contains(needle);
    has(&s.name)
        || has(state_name(s.state))
        || s.files
            .as_ref()
            .and_then(|f| f.current.as_deref())
            .is_some_and(has)
        || s.filter.as_deref().is_some_and(has)
        || s.sources.iter().any(|x| has(&x.label))
}

pub fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Receiving => "receiving",
        SessionState::Idle => "idle",
        SessionState::Disabled => "disabled",
        SessionState::Error => "error",
    }
}

/// Problems first when sorting by state.
fn state_rank(s: SessionState) -> u8 {
    match s {
        SessionState::Error => 0,
        SessionState::Receiving => 1,
        SessionState::Idle => 2,
        SessionState::Disabled => 3,
    }
}

fn last_seen_key(t: Option<&str>) -> f64 {
    t.and_then(parse_rfc3339).unwrap_or(f64::NEG_INFINITY)
}

fn compare_sessions(c: Column, a: &SessionStats, b: &SessionStats) -> Ordering {
    let file = |s: &SessionStats| {
        s.files
            .as_ref()
            .and_then(|f| f.current.clone())
            .unwrap_or_default()
    };
    let size = |s: &SessionStats| s.files.as_ref().map_or(0, |f| f.current_bytes);
    match c {
        Column::Name => a.name.cmp(&b.name),
        Column::State => state_rank(a.state).cmp(&state_rank(b.state)),
        Column::Sources => a.source_count().cmp(&b.source_count()),
        Column::Pps1 => a.rates.pps_1s.total_cmp(&b.rates.pps_1s),
        Column::Pps10 => a.rates.pps_10s.total_cmp(&b.rates.pps_10s),
        Column::Bps1 => a.rates.bps_1s.total_cmp(&b.rates.bps_1s),
        Column::Bps10 => a.rates.bps_10s.total_cmp(&b.rates.bps_10s),
        Column::Packets => a.packets.cmp(&b.packets),
        Column::Bytes => a.bytes.cmp(&b.bytes),
        Column::Lost => a.lost.cmp(&b.lost),
        Column::Drops => a.drops.total().cmp(&b.drops.total()),
        Column::Truncated => a.truncated.cmp(&b.truncated),
        Column::LastSeen => {
            last_seen_key(a.last_seen.as_deref()).total_cmp(&last_seen_key(b.last_seen.as_deref()))
        }
        Column::Size => size(a).cmp(&size(b)),
        Column::File => file(a).cmp(&file(b)),
    }
}

/// Sources sort by the same column where they have it, else by label.
fn compare_sources(c: Column, a: &SourceStats, b: &SourceStats) -> Ordering {
    match c {
        Column::Pps1 => a.rates.pps_1s.total_cmp(&b.rates.pps_1s),
        Column::Pps10 => a.rates.pps_10s.total_cmp(&b.rates.pps_10s),
        Column::Bps1 => a.rates.bps_1s.total_cmp(&b.rates.bps_1s),
        Column::Bps10 => a.rates.bps_10s.total_cmp(&b.rates.bps_10s),
        Column::Packets => a.packets.cmp(&b.packets),
        Column::Bytes => a.bytes.cmp(&b.bytes),
        Column::Lost => a.lost.cmp(&b.lost),
        Column::Drops => a.drops.total().cmp(&b.drops.total()),
        Column::Truncated => a.truncated.cmp(&b.truncated),
        Column::LastSeen => {
            last_seen_key(a.last_seen.as_deref()).total_cmp(&last_seen_key(b.last_seen.as_deref()))
        }
        _ => a.label.cmp(&b.label),
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEvent;

    use super::*;
    use crate::fixture;

    fn app_at(t: u64) -> App {
        let mut app = App::new("test");
        app.on_snapshot(Arc::new(fixture::snapshot(t)), Duration::from_secs(t));
        app
    }

    fn press(app: &mut App, code: KeyCode) -> Option<Command> {
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn type_keys(app: &mut App, s: &str) {
        for c in s.chars() {
            press(app, KeyCode::Char(c));
        }
    }

    fn names(app: &App) -> Vec<String> {
        app.rows()
            .iter()
            .map(|r| match &r.key {
                RowKey::Session(s) => s.clone(),
                RowKey::Source(_, l) => format!("  {l}"),
            })
            .collect()
    }

    #[test]
    fn sessions_sort_by_name_first_and_the_first_row_is_selected() {
        let app = app_at(0);
        assert_eq!(
            names(&app),
            [
                "10.0.0.7_vxlan_100",
                "core-gw",
                "dc2-span",
                "edge-sw1",
                "lab-tap"
            ]
        );
        assert_eq!(
            app.selected(),
            Some(&RowKey::Session("10.0.0.7_vxlan_100".into()))
        );
    }

    #[test]
    fn numeric_columns_sort_biggest_first_and_i_inverts() {
        let mut app = app_at(0);
        // s steps through the columns: STATE, SRC, PPS.
        for _ in 0..3 {
            press(&mut app, KeyCode::Char('s'));
        }
        assert_eq!(app.sort, Column::Pps1);
        assert!(app.descending);
        assert_eq!(
            names(&app),
            [
                "edge-sw1",
                "10.0.0.7_vxlan_100",
                "lab-tap",
                "core-gw",
                "dc2-span"
            ]
        );
        press(&mut app, KeyCode::Char('i'));
        assert_eq!(names(&app)[0], "dc2-span");
        // S goes back to SRC; equal counts fall back to the name.
        press(&mut app, KeyCode::Char('S'));
        assert_eq!(app.sort, Column::Sources);
        assert_eq!(names(&app)[0], "edge-sw1");
        assert_eq!(names(&app)[1], "10.0.0.7_vxlan_100");
    }

    #[test]
    fn state_sorts_problems_first() {
        let mut app = app_at(0);
        press(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, Column::State);
        assert_eq!(
            names(&app),
            [
                "core-gw",
                "10.0.0.7_vxlan_100",
                "edge-sw1",
                "dc2-span",
                "lab-tap"
            ]
        );
    }

    #[test]
    fn every_column_sorts_without_panicking_and_keeps_every_session() {
        let mut app = app_at(3);
        press(&mut app, KeyCode::Char('x'));
        for _ in 0..Column::ALL.len() {
            press(&mut app, KeyCode::Char('s'));
            assert_eq!(app.rows().len(), 5 + 6, "{:?}", app.sort);
        }
        assert_eq!(app.sort, Column::Name, "s wraps around");
    }

    #[test]
    fn sources_follow_their_session_in_the_same_order() {
        let mut app = app_at(0);
        for _ in 0..7 {
            press(&mut app, KeyCode::Char('s'));
        }
        assert_eq!(app.sort, Column::Packets);
        app.expanded.insert("edge-sw1".into());
        let n = names(&app);
        assert_eq!(
            &n[..3],
            [
                "edge-sw1",
                "  10.0.0.5 erspan-ii session 42",
                "  10.0.0.6 erspan-iii session 42"
            ]
        );
    }

    #[test]
    fn filter_matches_names_states_files_and_source_addresses() {
        let mut app = app_at(0);
        press(&mut app, KeyCode::Char('/'));
        type_keys(&mut app, "IDLE");
        assert_eq!(names(&app), ["dc2-span"]);
        assert_eq!(app.selected(), Some(&RowKey::Session("dc2-span".into())));
        // Typing q in the filter is text, not quit.
        press(&mut app, KeyCode::Backspace);
        assert_eq!(app.filter, "IDL");
        type_keys(&mut app, "q");
        assert!(names(&app).is_empty());
        for _ in 0..4 {
            press(&mut app, KeyCode::Backspace);
        }
        type_keys(&mut app, "10.0.0.6");
        press(&mut app, KeyCode::Enter);
        assert_eq!(names(&app), ["edge-sw1"], "matched by a source address");
        assert_eq!(app.mode, Mode::Normal);
        press(&mut app, KeyCode::Esc);
        assert_eq!(names(&app).len(), 5, "Esc clears");
        press(&mut app, KeyCode::Char('/'));
        type_keys(&mut app, "054500Z");
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.filter, "", "Esc while typing clears too");
    }

    #[test]
    fn expansion_and_selection_move_together() {
        let mut app = app_at(0);
        type_keys(&mut app, "jjj");
        assert_eq!(app.selected(), Some(&RowKey::Session("edge-sw1".into())));
        press(&mut app, KeyCode::Enter);
        assert!(app.is_expanded("edge-sw1"));
        press(&mut app, KeyCode::Down);
        let src = RowKey::Source("edge-sw1".into(), "10.0.0.5 erspan-ii session 42".into());
        assert_eq!(app.selected(), Some(&src));
        assert_eq!(
            app.selected_session().map(|s| s.name.as_str()),
            Some("edge-sw1")
        );
        // A new snapshot keeps the selection on the same source.
        app.on_snapshot(Arc::new(fixture::snapshot(1)), Duration::from_secs(1));
        assert_eq!(app.selected(), Some(&src));
        // Collapsing from a source goes back to its session.
        press(&mut app, KeyCode::Left);
        assert_eq!(app.selected(), Some(&RowKey::Session("edge-sw1".into())));
        assert!(!app.is_expanded("edge-sw1"));
        press(&mut app, KeyCode::End);
        assert_eq!(app.selected(), Some(&RowKey::Session("lab-tap".into())));
        press(&mut app, KeyCode::Down);
        assert_eq!(
            app.selected(),
            Some(&RowKey::Session("lab-tap".into())),
            "stays at the end"
        );
        press(&mut app, KeyCode::Home);
        press(&mut app, KeyCode::Up);
        assert_eq!(names(&app)[0], app.selected().unwrap().session());
    }

    #[test]
    fn a_vanished_selection_falls_back_to_its_place() {
        let mut app = app_at(0);
        type_keys(&mut app, "jj");
        assert_eq!(app.selected(), Some(&RowKey::Session("dc2-span".into())));
        let mut s = fixture::snapshot(1);
        s.sessions.retain(|x| x.name != "dc2-span");
        app.on_snapshot(Arc::new(s), Duration::from_secs(1));
        assert_eq!(app.selected(), Some(&RowKey::Session("edge-sw1".into())));
    }

    #[test]
    fn destructive_actions_ask_first() {
        let mut app = app_at(0);
        type_keys(&mut app, "jjj");
        assert_eq!(press(&mut app, KeyCode::Char('d')), None);
        assert_eq!(
            app.mode,
            Mode::Confirm(Confirm {
                session: "edge-sw1".into(),
                action: Action::Disable
            })
        );
        // Other keys are ignored while asking.
        assert_eq!(press(&mut app, KeyCode::Down), None);
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            Some(Command::Act {
                session: "edge-sw1".into(),
                action: Action::Disable
            })
        );
        assert_eq!(app.mode, Mode::Normal);
        press(&mut app, KeyCode::Char('r'));
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(
            press(&mut app, KeyCode::Char('e')),
            Some(Command::Act {
                session: "edge-sw1".into(),
                action: Action::Enable
            }),
            "enabling is not destructive"
        );
    }

    #[test]
    fn rotating_a_session_without_files_says_so_instead_of_asking() {
        let mut s = fixture::snapshot(0);
        for x in &mut s.sessions {
            x.files = None;
        }
        let mut app = App::new("t");
        app.on_snapshot(Arc::new(s), Duration::ZERO);
        press(&mut app, KeyCode::Char('r'));
        assert_eq!(app.mode, Mode::Normal);
        let st = app.status.clone().unwrap();
        assert!(st.error && st.text.contains("writes no files"), "{st:?}");
        assert!(!app.expire(Duration::from_secs(5)));
        assert!(app.expire(Duration::from_secs(6)));
        assert_eq!(app.status, None);
    }

    #[test]
    fn w_asks_how_many_minutes_then_saves() {
        let mut app = app_at(0);
        press(&mut app, KeyCode::Char('w'));
        let Mode::Save(ask) = &app.mode else {
            panic!("{:?}", app.mode)
        };
        let session = ask.session.clone();
        assert_eq!(ask.minutes, SAVE_MINUTES_DEFAULT);
        press(&mut app, KeyCode::Backspace);
        type_keys(&mut app, "15x");
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            Some(Command::Save {
                session,
                minutes: 15
            })
        );
        assert_eq!(app.mode, Mode::Normal);
        // Out of bounds: said, nothing asked of the collector.
        press(&mut app, KeyCode::Char('w'));
        type_keys(&mut app, "0000");
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        assert!(app.status.as_ref().is_some_and(|s| s.error));
        press(&mut app, KeyCode::Char('w'));
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn quit_keys() {
        let mut app = app_at(0);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Some(Command::Quit));
        press(&mut app, KeyCode::Char('/'));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(
            app.key(ctrl_c),
            Some(Command::Quit),
            "Ctrl-C quits while typing"
        );
        app.mode = Mode::Help;
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn rate_history_is_kept_per_session_and_pruned() {
        let mut app = app_at(0);
        for t in 1..=3 {
            app.on_snapshot(Arc::new(fixture::snapshot(t)), Duration::from_secs(t));
        }
        let h = app.history("edge-sw1").unwrap();
        assert_eq!(h.samples().len(), 3);
        let want =
            fixture::snapshot(3).sessions[0].packets - fixture::snapshot(2).sessions[0].packets;
        assert_eq!(h.samples()[2].pps, want as f64);
        let mut s = fixture::snapshot(4);
        s.sessions.truncate(1);
        app.on_snapshot(Arc::new(s), Duration::from_secs(4));
        assert!(app.history("lab-tap").is_none());
    }

    #[test]
    fn link_state_follows_fetches() {
        let mut app = App::new("t");
        assert_eq!(app.link, Link::Connecting);
        assert!(app.on_error("connection refused".into(), Duration::from_secs(1)));
        app.on_error("timed out".into(), Duration::from_secs(2));
        assert_eq!(
            app.link,
            Link::Disconnected {
                error: "timed out".into(),
                since: Duration::from_secs(1)
            },
            "since is the first failure in a row"
        );
        let snap = Arc::new(fixture::snapshot(0));
        assert!(app.on_snapshot(snap.clone(), Duration::from_secs(3)));
        assert_eq!(app.link, Link::Connected);
        assert!(!app.on_snapshot(snap, Duration::from_secs(4)), "same data");
    }

    #[test]
    fn ages_come_from_the_snapshots_own_clock() {
        let app = app_at(0);
        let dc2 = &app.snapshot.as_ref().unwrap().sessions[2];
        assert_eq!(dc2.name, "dc2-span");
        // Last packet at 05:59:18.4, snapshot at 06:00:00.0 (started + uptime).
        let age = app.age_s(dc2.last_seen.as_deref()).unwrap();
        assert!((age - 41.6).abs() < 1e-3, "{age}");
        assert_eq!(app.age_s(None), None);
        assert_eq!(app.age_s(Some("yesterday")), None);
    }
}
