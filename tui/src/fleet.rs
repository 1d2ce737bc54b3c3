//! `tapwire top --fleet`: every collector of a fleet (`GET /api/v1/fleet`), one row each;
//! Enter opens the usual session view on the selected collector's API, Esc comes back.
//!
//! [`FleetApp`] is the state and what keys do (pure), [`draw`] renders it, [`HttpFleet`] polls
//! the API and [`start`] runs both views on one terminal.

use std::io;
use std::time::Duration;

use ratatui::Frame;
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState};
use tapwire_api_types::control::{CollectorState, ControlState, Fleet, FleetMember};
use tapwire_client::Client;

use crate::client::{Actions, Source};
use crate::input::{self, Clock, Events};
use crate::state::{App, Command, Link};
use crate::{Options, RunStats, format};

/// Where the fleet is read.
pub const FLEET_PATH: &str = "/api/v1/fleet";

const DIM: Style = Style::new().fg(Color::DarkGray);
const BAD: Style = Style::new().fg(Color::Red);
const GOOD: Style = Style::new().fg(Color::Green);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);

/// Gives the fleet as one collector sees it, or says why it cannot.
pub trait FleetSource {
    fn fetch(&mut self) -> Result<Fleet, String>;
}

impl<F: FnMut() -> Result<Fleet, String>> FleetSource for F {
    fn fetch(&mut self) -> Result<Fleet, String> {
        self()
    }
}

/// Polls `GET /api/v1/fleet` with the bearer token when one is given.
pub struct HttpFleet {
    client: Client,
}

impl HttpFleet {
    pub fn new(base: &str, token: Option<String>) -> HttpFleet {
        let client = Client::builder(base)
            .token(token)
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .max_body_bytes(16 << 20)
            .build();
        HttpFleet {
            // Only a CA file can fail, and none is given.
            client: client.unwrap_or_else(|e| unreachable!("HTTP client without a CA: {e}")),
        }
    }
}

impl FleetSource for HttpFleet {
    fn fetch(&mut self) -> Result<Fleet, String> {
        self.client.get(FLEET_PATH).map_err(|e| e.message)
    }
}

/// What the runner must do after a key in the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetCommand {
    Quit,
    /// Show this collector's sessions: its name and API URL.
    Open {
        name: String,
        api_url: String,
    },
}

/// The fleet view's state.
pub struct FleetApp {
    /// The collector asked, for the header.
    pub endpoint: String,
    pub fleet: Option<Fleet>,
    pub link: Link,
    pub poll_every: Duration,
    /// The selected collector, by name (rows keep their order by name).
    pub selected: Option<String>,
    /// A message for the footer (a collector without an API URL).
    pub status: Option<String>,
    pub now: Duration,
    pub table: TableState,
}

impl FleetApp {
    pub fn new(endpoint: impl Into<String>) -> FleetApp {
        FleetApp {
            endpoint: endpoint.into(),
            fleet: None,
            link: Link::Connecting,
            poll_every: Duration::from_secs(1),
            selected: None,
            status: None,
            now: Duration::ZERO,
            table: TableState::default(),
        }
    }

    /// The collectors, by name.
    pub fn members(&self) -> Vec<&FleetMember> {
        let mut v: Vec<&FleetMember> = self.fleet.iter().flat_map(|f| &f.collectors).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn selected_index(&self) -> Option<usize> {
        let m = self.members();
        if m.is_empty() {
            return None;
        }
        Some(
            self.selected
                .as_ref()
                .and_then(|s| m.iter().position(|c| &c.name == s))
                .unwrap_or(0),
        )
    }

    pub fn on_fleet(&mut self, fleet: Fleet, now: Duration) {
        self.now = now;
        self.link = Link::Connected;
        self.fleet = Some(fleet);
        let i = self.selected_index();
        self.selected = i.map(|i| self.members()[i].name.clone());
    }

    /// A failed fetch: the last fleet stays on screen, the header says why.
    pub fn on_error(&mut self, error: String, now: Duration) {
        self.now = now;
        match &mut self.link {
            Link::Disconnected { error: e, .. } => *e = error,
            _ => self.link = Link::Disconnected { error, since: now },
        }
    }

    pub fn key(&mut self, k: KeyEvent) -> Option<FleetCommand> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(FleetCommand::Quit);
        }
        self.status = None;
        let n = self.members().len();
        let i = self.selected_index();
        let step =
            |d: isize| i.map(|i| (i as isize + d).clamp(0, n.saturating_sub(1) as isize) as usize);
        let to = match k.code {
            KeyCode::Char('q') => return Some(FleetCommand::Quit),
            KeyCode::Up | KeyCode::Char('k') => step(-1),
            KeyCode::Down | KeyCode::Char('j') => step(1),
            KeyCode::Home | KeyCode::Char('g') => step(-(n as isize)),
            KeyCode::End | KeyCode::Char('G') => step(n as isize),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => {
                let c = self.members().get(i?).map(|c| (*c).clone())?;
                return match c.api_url {
                    Some(api_url) => Some(FleetCommand::Open {
                        name: c.name,
                        api_url,
                    }),
                    None => {
                        self.status = Some(format!("collector {} has no API URL", c.name));
                        None
                    }
                };
            }
            _ => None,
        };
        if let Some(to) = to {
            self.selected = Some(self.members()[to].name.clone());
        }
        None
    }
}

/// Draws the fleet view: header (who answered, its link to the database), one row per
/// collector, the footer.
pub fn draw(f: &mut Frame<'_>, app: &mut FleetApp) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let mut first = vec![
        Span::styled(" tapwire fleet ", BOLD),
        Span::raw(app.endpoint.clone()),
        Span::raw("  "),
    ];
    match &app.link {
        Link::Connecting => first.push(Span::styled("connecting…", DIM)),
        Link::Connected => first.push(Span::styled("● connected", GOOD)),
        Link::Disconnected { error, since } => first.push(Span::styled(
            format!(
                "✖ DISCONNECTED: {error} · retrying every {} · for {}",
                format::duration(app.poll_every.as_secs_f64()),
                format::duration(app.now.saturating_sub(*since).as_secs_f64())
            ),
            BAD.add_modifier(Modifier::BOLD),
        )),
    }
    let mut lines = vec![Line::from(first)];
    if let Some(fl) = &app.fleet {
        let live = fl
            .collectors
            .iter()
            .filter(|c| c.state == CollectorState::Live)
            .count();
        let dead = fl.collectors.len() - live;
        let n_sessions: usize = fl.collectors.iter().map(|c| c.sessions.len()).sum();
        let mut second = vec![Span::raw(format!(
            " answered by {} · {live} live",
            fl.collector
        ))];
        if dead > 0 {
            second.push(Span::styled(format!(" · {dead} dead"), BAD));
        }
        second.push(Span::raw(format!(" · {n_sessions} sessions · ")));
        second.push(match fl.control {
            ControlState::Disconnected => Span::styled(
                "control: disconnected (the list is as last read)",
                BAD.add_modifier(Modifier::BOLD),
            ),
            ControlState::Connected => Span::styled("control: connected", GOOD),
            ControlState::Off => Span::styled("control: off", DIM),
        });
        lines.push(Line::from(second));
    }
    f.render_widget(Paragraph::new(lines), header);

    let members: Vec<FleetMember> = app.members().into_iter().cloned().collect();
    if members.is_empty() {
        let text = match (&app.link, &app.fleet) {
            (_, Some(_)) => "No collector in this fleet yet".to_string(),
            (Link::Disconnected { error, .. }, None) => {
                format!("No fleet from {}: {error}", app.endpoint)
            }
            _ => format!("Asking {} for its fleet", app.endpoint),
        };
        f.render_widget(Paragraph::new(Line::styled(text, BOLD)).centered(), body);
    } else {
        draw_table(f, app, &members, body);
    }

    let line = match &app.status {
        Some(s) => Line::styled(format!(" {s}"), BAD),
        None => Line::styled(
            " q quit  ↑↓ select  Enter sessions of the collector (Esc comes back)",
            DIM,
        ),
    };
    f.render_widget(Paragraph::new(line), footer);
}

fn draw_table(
    f: &mut Frame<'_>,
    app: &mut FleetApp,
    members: &[FleetMember],
    area: ratatui::layout::Rect,
) {
    let name_w = members
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(10, 24) as u16;
    let header = Row::new(
        [
            "COLLECTOR",
            "STATE",
            "LEASE",
            "SESSIONS",
            "PKT/S",
            "LOST",
            "PACKETS",
            "API",
        ]
        .map(Cell::from),
    )
    .style(BOLD.fg(Color::Black).bg(Color::Gray));
    let rows = members.iter().map(|c| {
        let (state, style) = match c.state {
            CollectorState::Live => ("live", GOOD),
            CollectorState::Dead => ("DEAD", BAD.add_modifier(Modifier::BOLD)),
        };
        let lost =
            Cell::from(format::count(c.lost)).style(if c.lost > 0 { BAD } else { Style::new() });
        let dim_if_dead = if c.state == CollectorState::Dead {
            DIM
        } else {
            Style::new()
        };
        Row::new(vec![
            Cell::from(c.name.clone()),
            Cell::from(state).style(style),
            Cell::from(lease(c.lease_age_s)),
            Cell::from(c.sessions.len().to_string()),
            Cell::from(format::pps(c.pps)).style(dim_if_dead),
            lost,
            Cell::from(format::count(c.packets)).style(dim_if_dead),
            Cell::from(c.api_url.clone().unwrap_or_else(|| "-".into())),
        ])
    });
    let widths = [
        Constraint::Length(name_w),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    let selected = app
        .selected
        .as_ref()
        .and_then(|s| members.iter().position(|c| &c.name == s));
    app.table.select(selected);
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always)
        .column_spacing(1);
    // One line under the table: the selected collector's sessions.
    let [t, s] = Layout::vertical([Constraint::Min(2), Constraint::Length(2)]).areas(area);
    f.render_stateful_widget(table, t, &mut app.table);
    if let Some(c) = selected.map(|i| &members[i]) {
        let list = if c.sessions.is_empty() {
            "none".to_string()
        } else {
            c.sessions.join(", ")
        };
        let lines = vec![
            Line::raw(""),
            Line::from(vec![
                Span::styled(format!(" {} sessions: ", c.name), BOLD),
                Span::raw(list),
                Span::styled(
                    format!(
                        "  · mirrors to {} · v{}",
                        c.advertise.as_deref().unwrap_or("-"),
                        c.version
                    ),
                    DIM,
                ),
            ]),
        ];
        f.render_widget(Paragraph::new(lines), s);
    }
}

/// A lease's age: tenths of a second while it is within a lease or two (about 6 s).
fn lease(age_s: f64) -> String {
    if age_s < 60.0 {
        format!("{age_s:.1}s")
    } else {
        format::duration(age_s)
    }
}

/// Opens a collector's session view: its stats source and actions, by API URL.
pub trait Opener {
    fn open(&mut self, api_url: &str) -> (Box<dyn Source>, Box<dyn Actions>);
}

impl<F: FnMut(&str) -> (Box<dyn Source>, Box<dyn Actions>)> Opener for F {
    fn open(&mut self, api_url: &str) -> (Box<dyn Source>, Box<dyn Actions>) {
        self(api_url)
    }
}

/// Runs the fleet view until `q` or Ctrl-C; Enter runs the session view of the selected
/// collector (through `opener`) until Esc brings the fleet back.
pub fn start<B: Backend>(
    terminal: &mut Terminal<B>,
    fleet: &mut dyn FleetSource,
    opener: &mut dyn Opener,
    events: &mut dyn Events,
    clock: &dyn Clock,
    opts: Options,
) -> io::Result<RunStats> {
    let mut app = FleetApp::new(opts.endpoint);
    app.poll_every = opts.poll_every;
    let mut stats = RunStats::default();
    let mut next_poll = clock.now();
    let mut dirty = true;
    loop {
        let now = clock.now();
        if now >= next_poll {
            stats.n_polls += 1;
            match fleet.fetch() {
                Ok(f) => app.on_fleet(f, clock.now()),
                Err(e) => app.on_error(e, clock.now()),
            }
            dirty = true;
            next_poll = now + app.poll_every;
        }
        if dirty {
            terminal
                .draw(|f| draw(f, &mut app))
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
            Some(FleetCommand::Quit) => break,
            Some(FleetCommand::Open { name, api_url }) => {
                let (mut source, mut actions) = opener.open(&api_url);
                let mut one = App::new(format!("{name} {api_url}"));
                one.poll_every = app.poll_every;
                one.back = true;
                let (s, end) = crate::run(
                    terminal,
                    &mut one,
                    source.as_mut(),
                    actions.as_mut(),
                    events,
                    clock,
                    &None,
                    &None,
                )?;
                stats.n_polls += s.n_polls;
                stats.n_draws += s.n_draws;
                if end == Command::Quit {
                    break;
                }
                // The fleet again, fresh.
                next_poll = clock.now();
            }
            None => {}
        }
    }
    Ok(stats)
}
