//! Drawing: the state in, a frame out. Layout from top to bottom: header (link, uptime,
//! totals, inputs), the session table, the detail pane of the selected session, the log pane
//! (inline `collect` only), the footer; dialogs and help float above.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Clear, Paragraph, RenderDirection, Row as TableRow, Sparkline, Table,
};
use tapwire_api_types::control::ControlState;
use tapwire_api_types::{Action, Drops, SessionState, SessionStats, Snapshot, SourceStats};

use crate::format::{self, count, percent};
use crate::logs::LogBuffer;
use crate::state::{App, Column, Link, Mode, Row, SAVE_MINUTES_MAX, SaveAsk, state_name};

const DIM: Style = Style::new().fg(Color::DarkGray);
const BAD: Style = Style::new().fg(Color::Red);
const WARN: Style = Style::new().fg(Color::Yellow);
const GOOD: Style = Style::new().fg(Color::Green);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
/// A session or source with no packet for this long is shown as idle.
const IDLE_S: f64 = 5.0;

pub fn draw(f: &mut Frame<'_>, app: &mut App, logs: Option<&LogBuffer>) {
    let area = f.area();
    let header_h = if area.height >= 30 { 3 } else { 2 };
    let logs_h = match logs {
        Some(_) if app.show_logs => (area.height / 5).clamp(3, 8),
        _ => 0,
    };
    let detail_min = match area.height {
        36.. => 16,
        20..36 => 10,
        _ => 0,
    };
    let detail_h = if app.show_detail && app.selected_session().is_some() && detail_min > 0 {
        // The table gets the lines it needs (its header and one per row), the detail pane
        // the rest: a tall terminal shows taller charts and more facts, not blank lines.
        let table_h = (app.rows().len() as u16 + 1).max(3);
        let rest = area.height.saturating_sub(header_h + table_h + logs_h + 1);
        detail_min.max(rest)
    } else {
        0
    };
    let [header, body, detail, log_area, footer] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Min(3),
        Constraint::Length(detail_h),
        Constraint::Length(logs_h),
        Constraint::Length(1),
    ])
    .areas(area);

    draw_header(f, app, header);
    match &app.snapshot {
        Some(_) => draw_table(f, app, body),
        None => draw_waiting(f, app, body),
    }
    if detail_h > 0 {
        draw_detail(f, app, detail);
    }
    if let Some(logs) = logs
        && logs_h > 0
    {
        draw_logs(f, logs, log_area);
    }
    draw_footer(f, app, footer);
    match &app.mode {
        Mode::Help => draw_help(f, app, area),
        Mode::Confirm(c) => draw_confirm(f, &c.session, c.action, area),
        Mode::Save(ask) => draw_save(f, ask, area),
        _ => {}
    }
}

fn draw_header(f: &mut Frame<'_>, app: &App, area: Rect) {
    let mut first = vec![
        Span::styled(" tapwire ", BOLD),
        Span::raw(app.endpoint.clone()),
        Span::raw("  "),
    ];
    match &app.link {
        Link::Connecting => first.push(Span::styled("connecting…", WARN)),
        Link::Connected => first.push(Span::styled("● connected", GOOD)),
        Link::Disconnected { error, since } => {
            let mut text = format!(
                "✖ DISCONNECTED: {error} · retrying every {} · for {}",
                format::duration(app.poll_every.as_secs_f64()),
                format::duration(app.now.saturating_sub(*since).as_secs_f64())
            );
            if let Some(at) = app.last_data_at {
                text += &format!(
                    " · data {} old",
                    format::duration(app.now.saturating_sub(at).as_secs_f64())
                );
            }
            first.push(Span::styled(text, BAD.add_modifier(Modifier::BOLD)));
        }
    }
    if let Some(s) = &app.snapshot {
        first.push(Span::raw(format!(
            "  up {}  v{}",
            format::duration(s.uptime_s),
            s.version
        )));
        // A collector of a fleet: which one, and whether its database answers.
        if let Some(c) = &s.control {
            first.push(Span::raw(format!("  collector {}  ", c.collector)));
            first.push(match c.state {
                ControlState::Disconnected => {
                    Span::styled("control: disconnected", BAD.add_modifier(Modifier::BOLD))
                }
                ControlState::Connected => Span::styled("control: connected", GOOD),
                ControlState::Off => Span::styled("control: off", DIM),
            });
        }
    }
    let mut lines = vec![Line::from(first)];
    if let Some(s) = &app.snapshot {
        lines.push(totals_line(s));
        if area.height >= 3 {
            lines.push(inputs_line(s));
        }
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn totals_line(s: &Snapshot) -> Line<'static> {
    let t = &s.totals;
    let n_receiving = s
        .sessions
        .iter()
        .filter(|x| x.state == SessionState::Receiving)
        .count();
    let sep = || Span::styled(" │ ", DIM);
    let loss_drops = loss_drops(&t.drops);
    let mut spans = vec![
        Span::raw(format!(
            " in {} pkt/s {} bit/s",
            format::pps(t.rates.pps_1s),
            format::bps(t.rates.bps_1s)
        )),
        sep(),
        Span::styled(format!("lost {}", count(t.lost)), flag(t.lost, BAD)),
        sep(),
        Span::styled(
            format!("kernel drops {}", count(t.kernel_drops)),
            flag(t.kernel_drops, BAD),
        ),
        sep(),
        Span::styled(
            format!("dropped {}", count(t.drops.total())),
            if loss_drops > 0 { BAD } else { Style::new() },
        ),
        sep(),
        Span::raw(format!("{} pkts", count(t.packets))),
        sep(),
        Span::raw(format!(
            "{} sessions ({n_receiving} receiving) {} sources",
            (t.sessions as usize).max(s.sessions.len()),
            t.sources
        )),
    ];
    // Only when something was refused: a collector under a flood says so at once.
    let refused = t.refusals.total();
    if refused > 0 {
        spans.push(sep());
        spans.push(Span::styled(format!("refused {}", count(refused)), BAD));
    }
    Line::from(spans)
}

fn inputs_line(s: &Snapshot) -> Line<'static> {
    let mut spans = vec![Span::styled(" inputs ", DIM)];
    for (i, input) in s.inputs.iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled(" · ", DIM));
        }
        spans.push(Span::raw(input.name.clone()));
        // How a faster input runs (AF_XDP: native or generic, zero-copy or copy).
        if let Some(m) = &input.mode {
            spans.push(Span::styled(format!(" ({m})"), DIM));
        }
        spans.push(Span::raw(format!(" {}/s", format::pps(input.rates.pps_1s))));
        if input.kernel_drops > 0 {
            let n = count(input.kernel_drops);
            spans.push(Span::styled(format!(" kernel drops {n}"), BAD));
        }
        let refused = input.refusals.total();
        if refused > 0 {
            spans.push(Span::styled(format!(" refused {}", count(refused)), BAD));
        }
        if let Some(e) = &input.error {
            spans.push(Span::styled(format!(" error: {e}"), BAD));
        }
    }
    Line::from(spans)
}

fn draw_waiting(f: &mut Frame<'_>, app: &App, area: Rect) {
    let why = match &app.link {
        Link::Disconnected { error, .. } => error.clone(),
        _ => "connecting".into(),
    };
    let text = vec![
        Line::raw(""),
        Line::styled(format!("No data from {}", app.endpoint), BOLD),
        Line::styled(why, BAD),
        Line::raw(""),
        Line::raw(format!(
            "Retrying every {}. Is tapwire collect running there? (--connect ADDR)",
            format::duration(app.poll_every.as_secs_f64())
        )),
    ];
    f.render_widget(
        Paragraph::new(text)
            .centered()
            .wrap(ratatui::widgets::Wrap { trim: true }),
        area,
    );
}

/// A column's width: its widest value or its title with the sort marker. Name and file start
/// at this and grow into what is left.
fn width_of(c: Column) -> u16 {
    let values: u16 = match c {
        Column::Name => 20,
        Column::State => 9,
        Column::Sources => 3,
        Column::Bytes | Column::Size => 7,
        Column::File => 12,
        _ => 5,
    };
    values.max(c.title().chars().count() as u16 + 1)
}

/// Which columns are shown first when the terminal is narrow. `None` is the session name
/// growing to its full length: long auto-discovered names (`10.0.0.5_erspan-ii_42`, whose
/// middles differ) matter more than sizes, files and the 10-second rates.
const PRIORITY: [Option<Column>; 16] = [
    Some(Column::Name),
    Some(Column::State),
    Some(Column::Pps1),
    Some(Column::Bps1),
    Some(Column::Packets),
    Some(Column::Lost),
    Some(Column::Drops),
    Some(Column::LastSeen),
    None,
    Some(Column::Sources),
    Some(Column::Bytes),
    Some(Column::File),
    Some(Column::Size),
    Some(Column::Pps10),
    Some(Column::Bps10),
    Some(Column::Truncated),
];

/// The columns that fit in `width` and their widths, in display order.
pub fn layout_columns(width: u16, name_want: u16, file_want: u16) -> Vec<(Column, u16)> {
    let mut chosen: Vec<(Column, u16)> = Vec::new();
    let mut used: u16 = 0;
    for step in PRIORITY {
        let Some(c) = step else {
            // Grow the name (first in `chosen`) to its full length if that fits.
            if let Some((_, w)) = chosen.first_mut() {
                let more = name_want.saturating_sub(*w);
                if used + more <= width {
                    used += more;
                    *w += more;
                }
            }
            continue;
        };
        let w = width_of(c).min(if c == Column::Name {
            name_want
        } else {
            u16::MAX
        });
        let need = w + u16::from(!chosen.is_empty());
        if used + need <= width {
            used += need;
            chosen.push((c, w));
        }
    }
    let mut spare = width - used;
    for (c, want) in [(Column::Name, name_want), (Column::File, file_want)] {
        if let Some((_, w)) = chosen.iter_mut().find(|(x, _)| *x == c) {
            let more = want.saturating_sub(*w).min(spare);
            *w += more;
            spare -= more;
        }
    }
    chosen.sort_by_key(|(c, _)| *c);
    chosen
}

fn draw_table(f: &mut Frame<'_>, app: &mut App, area: Rect) {
    let rows = app.rows();
    let name_want = rows
        .iter()
        .map(|r| name_text(app, r).chars().count())
        .max()
        .unwrap_or(10)
        .clamp(10, 40) as u16;
    let file_want = rows
        .iter()
        .filter_map(|r| file_name(r.session))
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0) as u16;
    let cols = layout_columns(area.width, name_want, file_want.max(4));
    let stale = !matches!(app.link, Link::Connected);
    let header = TableRow::new(cols.iter().map(|(c, w)| {
        let mut t = c.title().to_string();
        if *c == app.sort {
            t.push(if app.descending { '▼' } else { '▲' });
        }
        let t = if is_numeric(*c) {
            format!("{t:>width$}", width = *w as usize)
        } else {
            t
        };
        Cell::new(t)
    }))
    .style(BOLD.add_modifier(Modifier::UNDERLINED));
    let body: Vec<TableRow<'static>> = rows
        .iter()
        .map(|r| {
            let mut row = TableRow::new(cols.iter().map(|(c, w)| cell(app, r, *c, *w)));
            if r.source.is_none() && r.session.state == SessionState::Disabled {
                row = row.style(DIM);
            }
            row
        })
        .collect();
    let selected = app.selected_in(&rows);
    let empty = rows.is_empty();
    drop(rows);
    app.page_rows = area.height.saturating_sub(2) as usize;
    let widths: Vec<Constraint> = cols.iter().map(|(_, w)| Constraint::Length(*w)).collect();
    let mut table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    if stale {
        table = table.style(DIM);
    }
    app.table.select(selected);
    f.render_stateful_widget(table, area, &mut app.table);
    if empty {
        let what = if app.filter.is_empty() {
            "no sessions yet: waiting for mirrored traffic".to_string()
        } else {
            format!("no session matches \"{}\" (Esc clears)", app.filter)
        };
        let inner = Rect {
            y: area.y + 2,
            height: area.height.saturating_sub(2),
            ..area
        };
        f.render_widget(Paragraph::new(what).style(DIM).centered(), inner);
    }
}

fn is_numeric(c: Column) -> bool {
    !matches!(
        c,
        Column::Name | Column::State | Column::LastSeen | Column::File
    )
}

fn name_text(app: &App, r: &Row<'_>) -> String {
    match r.source {
        None => {
            let mark = if app.is_expanded(&r.session.name) {
                '▾'
            } else {
                '▸'
            };
            format!("{mark} {}", r.session.name)
        }
        Some(s) => format!("  └ {}", source_name(s)),
    }
}

/// `10.0.0.5 erspan-ii 42`: a source in a table cell.
pub fn source_name(s: &SourceStats) -> String {
    format!("{} {} {}", s.src, s.kind, s.id)
}

/// The current file's name without the directory and without the session-name prefix every
/// file of the session has.
fn file_name(s: &SessionStats) -> Option<String> {
    let path = s.files.as_ref()?.current.as_ref()?;
    let base = path.rsplit('/').next().unwrap_or(path);
    let prefix = format!("{}_", s.name);
    Some(base.strip_prefix(&prefix).unwrap_or(base).to_string())
}

fn cell(app: &App, r: &Row<'_>, c: Column, w: u16) -> Cell<'static> {
    let w = w as usize;
    let right = |s: String| format!("{s:>w$}");
    let num = |n: u64, bad: Style| {
        let text = right(count(n));
        if n > 0 {
            Cell::new(text).style(bad)
        } else {
            Cell::new(text)
        }
    };
    let s = r.session;
    match (c, r.source) {
        (Column::Name, _) => Cell::new(truncate_middle(&name_text(app, r), w)),
        (Column::State, None) => Cell::new(state_name(s.state)).style(state_style(s.state)),
        (Column::State, Some(_)) => Cell::new(""),
        (Column::Sources, None) => Cell::new(right(s.source_count().to_string())),
        (Column::Pps1, _) => Cell::new(right(format::pps(rates(r).pps_1s))),
        (Column::Pps10, _) => Cell::new(right(format::pps(rates(r).pps_10s))),
        (Column::Bps1, _) => Cell::new(right(format::bps(rates(r).bps_1s))),
        (Column::Bps10, _) => Cell::new(right(format::bps(rates(r).bps_10s))),
        (Column::Packets, None) => Cell::new(right(count(s.packets))),
        (Column::Packets, Some(x)) => Cell::new(right(count(x.packets))),
        (Column::Bytes, None) => Cell::new(right(format::bytes(s.bytes))),
        (Column::Bytes, Some(x)) => Cell::new(right(format::bytes(x.bytes))),
        (Column::Lost, None) => num(s.lost, BAD),
        (Column::Lost, Some(x)) => num(x.lost, BAD),
        (Column::Drops, None) => num(s.drops.total(), drop_style(&s.drops)),
        (Column::Drops, Some(x)) => num(x.drops.total(), drop_style(&x.drops)),
        (Column::Truncated, None) => num(s.truncated, WARN),
        (Column::Truncated, Some(x)) => num(x.truncated, WARN),
        (Column::LastSeen, _) => {
            let seen = r
                .source
                .map_or(s.last_seen.as_deref(), |x| x.last_seen.as_deref());
            match app.age_s(seen) {
                Some(a) if a >= IDLE_S => Cell::new(format::duration(a)).style(WARN),
                Some(a) => Cell::new(format::duration(a)),
                None => Cell::new("-").style(DIM),
            }
        }
        (Column::Size, None) => match &s.files {
            Some(fs) if fs.current.is_some() => Cell::new(right(format::bytes(fs.current_bytes))),
            _ => Cell::new(right("-".into())).style(DIM),
        },
        (Column::File, None) => match (&s.files, file_name(s)) {
            (Some(fs), _) if fs.error.is_some() => {
                Cell::new(truncate_end(fs.error.as_deref().unwrap_or(""), w)).style(BAD)
            }
            (_, Some(name)) => Cell::new(truncate_start(&name, w)),
            (Some(_), None) => Cell::new("(none open)").style(DIM),
            (None, None) => Cell::new("(no files)").style(DIM),
        },
        (Column::Sources | Column::Size | Column::File, Some(_)) => Cell::new(""),
    }
}

fn rates(r: &Row<'_>) -> tapwire_api_types::Rates {
    r.source.map_or(r.session.rates, |x| x.rates)
}

fn flag(n: u64, style: Style) -> Style {
    if n > 0 { style } else { Style::new() }
}

/// Drops that lose data the operator wanted (disk, write errors, backlog), as opposed to
/// drops by policy (disabled, filter, no session).
fn loss_drops(d: &Drops) -> u64 {
    d.disk_guard + d.disk_full + d.write_error + d.backlog
}

fn drop_style(d: &Drops) -> Style {
    if loss_drops(d) > 0 { BAD } else { WARN }
}

fn state_style(s: SessionState) -> Style {
    match s {
        SessionState::Receiving => GOOD,
        SessionState::Idle => WARN,
        SessionState::Disabled => DIM,
        SessionState::Error => BAD.add_modifier(Modifier::BOLD),
    }
}

/// `abcdefgh` in 5 columns: `ab…gh` (names differ at both ends).
pub fn truncate_middle(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w <= 1 {
        return "…".chars().take(w).collect();
    }
    let head = (w - 1) / 2;
    let tail = w - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// `abc…`: keeps the start (error messages).
pub fn truncate_end(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    if w > 0 {
        out.push('…');
    }
    out
}

/// `…efgh`: keeps the end (file names differ in their time stamp and extension).
pub fn truncate_start(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (w - 1)));
    out
}

fn draw_detail(f: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(s) = app.selected_session() else {
        let block = Block::bordered().title(" detail ").border_style(DIM);
        f.render_widget(Paragraph::new(" no session selected").block(block), area);
        return;
    };
    let title = Line::from(vec![
        Span::raw(" "),
        Span::styled(s.name.clone(), BOLD),
        Span::raw(" · "),
        Span::styled(state_name(s.state), state_style(s.state)),
        Span::raw(format!(
            " · {} source{}{}{} ",
            s.source_count(),
            if s.source_count() == 1 { "" } else { "s" },
            if s.auto { " · auto" } else { "" },
            s.filter
                .as_ref()
                .map(|x| format!(" · filter {x}"))
                .unwrap_or_default()
        )),
    ]);
    let mut block = Block::bordered().title(title).border_style(DIM);
    if s.files.is_some() {
        block = block.title_bottom(Line::from(vec![
            Span::raw(" "),
            Span::styled("w", BOLD),
            Span::raw(" save the last N minutes to a file "),
        ]));
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)])
            .spacing(1)
            .areas(inner);
    draw_charts(f, app, s, left);
    draw_facts(f, app, s, right);
}

fn draw_charts(f: &mut Frame<'_>, app: &App, s: &SessionStats, area: Rect) {
    let spark_h = area.height.saturating_sub(2) / 2;
    let [pps_t, pps_c, bps_t, bps_c] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(spark_h),
        Constraint::Length(1),
        Constraint::Length(spark_h),
    ])
    .areas(area);
    let width = area.width as usize;
    let history = app.history(&s.name);
    let n = history.map_or(0, |h| h.samples().len().min(width));
    let span = history.map_or(0.0, |h| h.span_s(width));
    // Newest first, drawn from the right edge: the chart grows leftwards as history builds.
    let pps: Vec<u64> = history.map_or(Vec::new(), |h| {
        h.last_n(width)
            .rev()
            .map(|x| x.pps.round() as u64)
            .collect()
    });
    let bps: Vec<u64> = history.map_or(Vec::new(), |h| {
        h.last_n(width)
            .rev()
            .map(|x| x.bps.round() as u64)
            .collect()
    });
    let now = history.and_then(|h| h.samples().back().copied());
    let label = |what: &str, now: String, max: String| {
        Line::from(vec![
            Span::styled(what.to_string(), BOLD),
            Span::raw(format!(" {now} max {max}")),
            Span::styled(
                if n == 0 {
                    " · collecting…".to_string()
                } else {
                    format!(" · last {}", format::duration(span))
                },
                DIM,
            ),
        ])
    };
    let max_pps = pps.iter().copied().max().unwrap_or(0);
    let max_bps = bps.iter().copied().max().unwrap_or(0);
    f.render_widget(
        label(
            "pkt/s",
            format::pps(now.map_or(0.0, |x| x.pps)),
            format::pps(max_pps as f64),
        ),
        pps_t,
    );
    f.render_widget(
        Sparkline::default()
            .data(&pps)
            .max(max_pps.max(1))
            .direction(RenderDirection::RightToLeft)
            .style(GOOD),
        pps_c,
    );
    f.render_widget(
        label(
            "bit/s",
            format::bps(now.map_or(0.0, |x| x.bps)),
            format::bps(max_bps as f64),
        ),
        bps_t,
    );
    f.render_widget(
        Sparkline::default()
            .data(&bps)
            .max(max_bps.max(1))
            .direction(RenderDirection::RightToLeft)
            .style(Style::new().fg(Color::Cyan)),
        bps_c,
    );
}

/// The session's file, drops by reason, TAP, sources, ERSPAN fields, protocol mix, talkers.
fn draw_facts(f: &mut Frame<'_>, app: &App, s: &SessionStats, area: Rect) {
    let mut lines: Vec<Line<'_>> = Vec::new();
    let w = area.width as usize;
    match &s.files {
        Some(fs) => {
            let mut spans = vec![Span::styled("file ", BOLD)];
            match &fs.current {
                Some(p) => {
                    // The whole path when it fits, else the file's name.
                    let p = if p.chars().count() + 40 <= w {
                        p.as_str()
                    } else {
                        p.rsplit('/').next().unwrap_or(p)
                    };
                    spans.push(Span::raw(format!("{p} ")));
                    spans.push(Span::styled(format::bytes(fs.current_bytes), BOLD));
                }
                None => spans.push(Span::styled(format!("none open in {}", fs.dir), DIM)),
            }
            spans.push(Span::raw(format!(" · {} finished", fs.files_finished)));
            lines.push(Line::from(spans));
            if let Some(e) = &fs.error {
                lines.push(Line::styled(format!("     error: {e}"), BAD));
            }
        }
        None => lines.push(Line::styled("file (this session writes no files)", DIM)),
    }
    if let Some(t) = &s.tap {
        let mut spans = vec![
            Span::styled("tap  ", BOLD),
            Span::raw(format!(
                "{}{} written {} · queue drops {}",
                t.name,
                t.netns
                    .as_ref()
                    .map(|n| format!(" (netns {n})"))
                    .unwrap_or_default(),
                count(t.written),
                count(t.tap_dropped)
            )),
        ];
        if let Some(e) = &t.error {
            spans.push(Span::styled(format!(" · error: {e}"), BAD));
        }
        lines.push(Line::from(spans));
    }
    lines.extend(stream_lines(&s.streams));
    let d = &s.drops;
    let mut drops = vec![
        Span::styled("written ", BOLD),
        Span::raw(format!("{} of {} · ", count(s.written), count(s.packets))),
        Span::styled("dropped", BOLD),
    ];
    // Only the reasons that happened: policy (yellow) or lost data (red).
    for (name, n, bad) in [
        ("disabled", d.disabled, false),
        ("filter", d.filter, false),
        ("disk-guard", d.disk_guard, true),
        ("disk-full", d.disk_full, true),
        ("write-error", d.write_error, true),
        ("backlog", d.backlog, true),
    ] {
        if n > 0 {
            drops.push(Span::styled(
                format!(" {name} {}", count(n)),
                if bad { BAD } else { WARN },
            ));
        }
    }
    if d.total() == 0 {
        drops.push(Span::styled(" none", DIM));
    }
    lines.push(Line::from(drops));

    let wide = w >= 64;
    let fixed = if wide { 37 } else { 19 };
    let label_w = w.saturating_sub(fixed).clamp(8, 40);
    lines.push(Line::styled(
        if wide {
            format!(
                "{:<label_w$} {:>6} {:>5} {:>4} {:>5} {:>5} SEQ",
                "SOURCE", "PKTS", "LOST", "DUP", "REORD", "TRUNC"
            )
        } else {
            format!(
                "{:<label_w$} {:>6} {:>5} {:>5}",
                "SOURCE", "PKTS", "LOST", "TRUNC"
            )
        },
        BOLD,
    ));
    let max_sources = (area.height as usize / 4).max(1);
    for src in s.sources.iter().take(max_sources) {
        let style = match app.age_s(src.last_seen.as_deref()) {
            Some(a) if a >= IDLE_S => WARN,
            _ => Style::new(),
        };
        let mut spans = vec![
            Span::styled(
                format!("{:<label_w$} ", truncate_middle(&source_name(src), label_w)),
                style,
            ),
            Span::raw(format!("{:>6} ", count(src.packets))),
            Span::styled(format!("{:>5}", count(src.lost)), flag(src.lost, BAD)),
        ];
        if wide {
            spans.push(Span::raw(format!(
                " {:>4} {:>5}",
                count(src.duplicates),
                count(src.reordered)
            )));
        }
        spans.push(Span::styled(
            format!(" {:>5}", count(src.truncated)),
            flag(src.truncated, WARN),
        ));
        if wide {
            let seq = match src.sequence {
                tapwire_api_types::Sequence::None => "none",
                tapwire_api_types::Sequence::PerSource => "own",
                tapwire_api_types::Sequence::SharedBySender => "shared",
            };
            spans.push(Span::raw(format!(" {seq}")));
        }
        lines.push(Line::from(spans));
    }
    // Frames kept although their GRE checksum did not verify: a sender's quirk (Open vSwitch
    // repeats one checksum) or damage on the way; only shown when it happened.
    for src in s.sources.iter().take(max_sources) {
        if src.gre_checksum_bad > 0 {
            lines.push(Line::styled(
                format!(
                    "{}: {} bad GRE checksums (frames kept)",
                    truncate_middle(&source_name(src), label_w),
                    count(src.gre_checksum_bad)
                ),
                WARN,
            ));
        }
    }
    if s.source_count() > max_sources as u64 {
        lines.push(Line::styled(
            format!(
                "… {} more (Enter lists them in the table)",
                s.source_count() - max_sources as u64
            ),
            DIM,
        ));
    }
    if let Some(l) = erspan_line(s) {
        lines.push(l);
    }
    lines.extend(protocol_lines(s));
    if !s.top_talkers.is_empty() {
        lines.push(Line::styled("top talkers (inner IP, bytes, packets)", BOLD));
        for t in &s.top_talkers {
            lines.push(Line::raw(format!(
                "  {:<28} {:>8} {:>7}",
                truncate_middle(&t.addr, 28),
                format::bytes(t.bytes),
                count(t.packets)
            )));
        }
    }
    f.render_widget(
        Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }),
        area,
    );
}

/// Subscribers shown one per line in the detail; the rest are counted.
const MAX_STREAM_LINES: usize = 3;

/// The session's live streams (Wireshark, `tapwire stream`): how many, and what readers too
/// slow to keep up lost (their own loss: the files are unaffected). Nothing when it never
/// had one.
fn stream_lines(st: &tapwire_api_types::StreamStats) -> Vec<Line<'static>> {
    let n = st.subscribers.len();
    if n == 0 && st.delivered == 0 {
        return Vec::new();
    }
    let mut head = vec![
        Span::styled("live ", BOLD),
        Span::raw(format!(
            "{n} stream{} · sent {} · ",
            if n == 1 { "" } else { "s" },
            count(st.delivered)
        )),
    ];
    head.push(if st.dropped > 0 {
        Span::styled(
            format!("dropped {} (slow readers)", count(st.dropped)),
            WARN,
        )
    } else {
        Span::styled("dropped none", DIM)
    });
    let mut lines = vec![Line::from(head)];
    for sub in st.subscribers.iter().take(MAX_STREAM_LINES) {
        let mut spans = vec![Span::raw(format!(
            "     {} {} · sent {}",
            sub.peer,
            sub.filter.as_deref().unwrap_or("(no filter)"),
            count(sub.delivered)
        ))];
        if sub.dropped > 0 {
            spans.push(Span::styled(
                format!(" · dropped {}", count(sub.dropped)),
                WARN,
            ));
        }
        lines.push(Line::from(spans));
    }
    if n > MAX_STREAM_LINES {
        lines.push(Line::styled(
            format!("     … {} more", n - MAX_STREAM_LINES),
            DIM,
        ));
    }
    lines
}

/// What the ERSPAN headers of the session's sources said: versions, VLANs, direction split
/// and hardware ids.
fn erspan_line(s: &SessionStats) -> Option<Line<'static>> {
    let mut versions: Vec<&str> = Vec::new();
    let (mut ingress, mut egress) = (0, 0);
    let mut vlans = std::collections::BTreeMap::<u16, u64>::new();
    let mut hw = std::collections::BTreeMap::<u8, u64>::new();
    let mut any = false;
    for src in &s.sources {
        let v = match src.kind.as_str() {
            "erspan-i" => "I",
            "erspan-ii" => "II",
            "erspan-iii" => "III",
            _ => continue,
        };
        if !versions.contains(&v) {
            versions.push(v);
        }
        any = true;
        if let Some(e) = &src.erspan {
            ingress += e.ingress;
            egress += e.egress;
            for (k, n) in &e.vlans {
                *vlans.entry(*k).or_default() += n;
            }
            for (k, n) in &e.hardware_ids {
                *hw.entry(*k).or_default() += n;
            }
        }
    }
    if !any {
        return None;
    }
    let top = |m: Vec<(String, u64)>| -> String {
        let mut m = m;
        m.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let n = m.len();
        let mut out: Vec<String> = m
            .iter()
            .take(4)
            .map(|(k, c)| format!("{k}×{}", count(*c)))
            .collect();
        if n > 4 {
            out.push(format!("+{}", n - 4));
        }
        if out.is_empty() {
            "-".into()
        } else {
            out.join(" ")
        }
    };
    let dir = if ingress + egress == 0 {
        "-".to_string()
    } else {
        format!("in {} / out {}", count(ingress), count(egress))
    };
    Some(Line::from(vec![
        Span::styled("erspan ", BOLD),
        Span::raw(format!(
            "{} · vlan {} · {dir} · hw {}",
            versions.join("+"),
            top(vlans.iter().map(|(k, n)| (k.to_string(), *n)).collect()),
            top(hw.iter().map(|(k, n)| (k.to_string(), *n)).collect()),
        )),
    ]))
}

/// The inner protocol mix, when the collector reports one.
fn protocol_lines(s: &SessionStats) -> Vec<Line<'static>> {
    let p = &s.protocols;
    let l3 = p.ipv4 + p.ipv6 + p.arp + p.other;
    let l4 = p.tcp + p.udp + p.icmp;
    if l3 + l4 == 0 {
        return Vec::new();
    }
    vec![
        Line::from(vec![
            Span::styled("inner ", BOLD),
            Span::raw(format!(
                "ipv4 {} · ipv6 {} · arp {} · other {}",
                percent(p.ipv4, l3),
                percent(p.ipv6, l3),
                percent(p.arp, l3),
                percent(p.other, l3)
            )),
        ]),
        Line::raw(format!(
            "      tcp {} · udp {} · icmp {} (of {} ip)",
            percent(p.tcp, p.ipv4 + p.ipv6),
            percent(p.udp, p.ipv4 + p.ipv6),
            percent(p.icmp, p.ipv4 + p.ipv6),
            count(p.ipv4 + p.ipv6)
        )),
    ]
}

fn draw_logs(f: &mut Frame<'_>, logs: &LogBuffer, area: Rect) {
    let block = Block::bordered().title(" log (L hides) ").border_style(DIM);
    let n = block.inner(area).height as usize;
    let lines: Vec<Line<'_>> = logs
        .tail(n)
        .into_iter()
        .map(|l| {
            let style = if l.contains("ERROR") {
                BAD
            } else if l.contains("WARN") {
                WARN
            } else {
                Style::new()
            };
            Line::styled(l, style)
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_footer(f: &mut Frame<'_>, app: &App, area: Rect) {
    let line = if app.mode == Mode::Filter {
        Line::from(vec![
            Span::styled(" filter: ", BOLD),
            Span::raw(format!("{}▏", app.filter)),
            Span::styled("  Enter keeps it · Esc clears it", DIM),
        ])
    } else if let Some(st) = &app.status {
        Line::styled(format!(" {}", st.text), if st.error { BAD } else { GOOD })
    } else {
        let mut spans = vec![Span::styled(
            " ? help  q quit  ↑↓ select  Enter sources  s sort  / filter  Tab detail  e/d/r enable/disable/rotate",
            DIM,
        )];
        if app.back {
            spans.insert(0, Span::styled(" Esc fleet ", WARN));
        }
        if !app.filter.is_empty() {
            spans.insert(
                0,
                Span::styled(format!(" filter \"{}\" (Esc clears) ", app.filter), WARN),
            );
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The keys and what each does in this UI (`tapwire top`, or the one inside `tapwire
/// collect`), for the help overlay.
pub fn keys(app: &App) -> [(&'static str, &'static str); 18] {
    let logs = match (app.has_logs, app.inline) {
        (true, _) => "log pane on / off",
        (false, true) => "no log pane: the log goes to --log-file",
        (false, false) => "no log pane here: see the collector's log",
    };
    let (quit, ctrl_c) = if app.inline {
        (
            "quit: stops the collector, files closed",
            "stop the collector",
        )
    } else {
        ("quit (the collector keeps running)", "quit")
    };
    [
        ("↑ ↓  j k", "select a row"),
        ("PgUp PgDn Home End", "page up / down, first, last"),
        ("Enter  Space", "show / hide the session's sources"),
        ("→ ←  l h", "show / hide sources"),
        ("x", "show / hide every session's sources"),
        ("s  S", "sort by the next / previous column"),
        ("i", "invert the sort order"),
        ("/  Esc", "filter by text (Enter keeps) / clear it"),
        ("Tab", "detail pane on / off"),
        ("L", logs),
        ("e", "enable the session"),
        ("d", "disable the session (asks first)"),
        ("r", "rotate the session's file now (asks first)"),
        ("w", "save the last N minutes to a file"),
        ("y  n", "answer a question"),
        ("?", "this help (Esc closes)"),
        ("q", quit),
        ("Ctrl-C", ctrl_c),
    ]
}

fn draw_help(f: &mut Frame<'_>, app: &App, area: Rect) {
    let mut lines: Vec<Line<'_>> = keys(app)
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<19}"), BOLD),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(
            " Sorted by {} · PPS/BPS: 1 s, PPS10/BPS10: 10 s",
            app.sort.title()
        ),
        DIM,
    ));
    lines.push(Line::styled(
        " LOST: sequence gaps (transit) · DROP: not written",
        DIM,
    ));
    lines.push(Line::styled(
        " Kernel drops (before tapwire read them): header",
        DIM,
    ));
    let h = (lines.len() as u16 + 2).min(area.height);
    let w = 64.min(area.width);
    let r = centered(area, w, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" keys ")
                .title_bottom(" ? or Esc closes "),
        ),
        r,
    );
}

fn draw_confirm(f: &mut Frame<'_>, session: &str, action: Action, area: Rect) {
    let (question, effect) = match action {
        Action::Disable => (
            format!("Disable session {session}?"),
            "Its packets will be counted as dropped (disabled), not written; its file is closed.",
        ),
        Action::Rotate => (
            format!("Rotate session {session}'s file now?"),
            "The current file is closed and the next packet opens a new one.",
        ),
        Action::Enable => (format!("Enable session {session}?"), ""),
    };
    let lines = vec![
        Line::styled(question, BOLD),
        Line::raw(effect),
        Line::raw(""),
        Line::from(vec![
            Span::styled("y", BOLD),
            Span::raw(" yes    "),
            Span::styled("n", BOLD),
            Span::raw(" / Esc no"),
        ]),
    ];
    let w = 60.min(area.width);
    let r = centered(area, w, 8.min(area.height));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(Block::bordered().title(" confirm ").border_style(WARN)),
        r,
    );
}

fn draw_save(f: &mut Frame<'_>, ask: &SaveAsk, area: Rect) {
    let lines = vec![
        Line::styled(format!("Save the last minutes of {}", ask.session), BOLD),
        Line::from(vec![
            Span::raw("Minutes: "),
            Span::styled(format!("{}▏", ask.minutes), BOLD),
            Span::styled(format!(" (1 to {SAVE_MINUTES_MAX})"), DIM),
        ]),
        Line::raw("One pcapng, in a file the collector names under its --out."),
        Line::from(vec![
            Span::styled("Enter", BOLD),
            Span::raw(" save    "),
            Span::styled("Esc", BOLD),
            Span::raw(" cancel"),
        ]),
    ];
    let w = 64.min(area.width);
    let r = centered(area, w, 6.min(area.height));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(Block::bordered().title(" save ").border_style(WARN)),
        r,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_both_ends_or_the_end() {
        assert_eq!(
            truncate_middle("10.77.0.11_erspan-ii_100", 12),
            "10.77…ii_100"
        );
        assert_eq!(truncate_middle("short", 12), "short");
        assert_eq!(truncate_start("20261121T054100Z.pcapng", 10), "…0Z.pcapng");
        assert_eq!(truncate_start("x", 0), "");
    }

    #[test]
    fn columns_fit_and_keep_display_order() {
        for width in [40u16, 80, 100, 120, 200] {
            let cols = layout_columns(width, 24, 23);
            let used: u16 = cols.iter().map(|(_, w)| w).sum::<u16>() + cols.len() as u16 - 1;
            assert!(used <= width, "{width}: {used}");
            assert!(cols.windows(2).all(|p| p[0].0 < p[1].0), "{cols:?}");
            assert_eq!(cols[0].0, Column::Name);
        }
        let at120 = layout_columns(120, 26, 40);
        assert_eq!(
            at120[0],
            (Column::Name, 26),
            "a long name shows whole at 120"
        );
        let at80: Vec<Column> = layout_columns(80, 24, 23).iter().map(|c| c.0).collect();
        assert!(at80.contains(&Column::State) && at80.contains(&Column::Lost));
        assert!(at80.contains(&Column::Drops) && at80.contains(&Column::Pps1));
        assert_eq!(layout_columns(200, 24, 23).len(), Column::ALL.len());
    }
}
