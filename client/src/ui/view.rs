//! Drawing the [`State`] with ratatui: a title line, the contacts on the
//! left, the call panel (when there is a call) and the selected contact's
//! thread on the right, the input line and the notice at the bottom. Only
//! reads the state; every peer-written string goes through
//! [`crate::text::for_terminal`].

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use natter_proto::messages::PresenceStatus;

use super::state::{CallView, KEYS, Mode, State};
use crate::text::{ago, for_terminal};

/// Draws the whole screen.
pub fn render(frame: &mut Frame, state: &State) {
    let [title, body, input, notice] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title_line(state)), title);
    let [left, right] =
        Layout::horizontal([Constraint::Length(40), Constraint::Min(20)]).areas(body);
    contacts(frame, state, left);
    let call_height = match state.call {
        CallView::Idle => 0,
        CallView::Ringing { .. } | CallView::Dialling { .. } => 3,
        CallView::Active { .. } => 7,
    };
    let [call, thread] =
        Layout::vertical([Constraint::Length(call_height), Constraint::Min(3)]).areas(right);
    if call_height > 0 {
        call_panel(frame, state, call);
    }
    chat(frame, state, thread);
    frame.render_widget(Paragraph::new(input_line(state)), input);
    frame.render_widget(
        Paragraph::new(Line::from(for_terminal(&state.notice).into_owned()))
            .style(Style::default().add_modifier(Modifier::DIM)),
        notice,
    );
    if state.mode == Mode::Help {
        help(frame, body);
    }
}

fn title_line(state: &State) -> Line<'static> {
    let via = if state.via.is_empty() {
        "joining...".to_owned()
    } else {
        format!("via {}", state.via)
    };
    Line::from(vec![
        Span::styled(
            format!(" natter: {} ", for_terminal(&state.me)),
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ),
        Span::raw(format!(" {via}   ? help, q quit")),
    ])
}

fn contacts(frame: &mut Frame, state: &State, area: Rect) {
    let lines: Vec<Line> = state
        .contacts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let dot = match c.status {
                Some(PresenceStatus::Online) => "●",
                Some(PresenceStatus::Away) => "◐",
                _ => "○",
            };
            let text = format!(
                "{} {dot} {} {}",
                if i == state.selected { ">" } else { " " },
                for_terminal(&c.name),
                state.presence_text(c)
            );
            if i == state.selected {
                Line::styled(text, Style::default().add_modifier(Modifier::BOLD))
            } else {
                Line::from(text)
            }
        })
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::from("no contacts: / to search")]
    } else {
        lines
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Contacts ")),
        area,
    );
}

fn call_panel(frame: &mut Frame, state: &State, area: Rect) {
    let (title, lines): (String, Vec<Line>) = match &state.call {
        CallView::Idle => return,
        CallView::Ringing { from } => (
            " Incoming call ".into(),
            vec![Line::styled(
                format!(
                    "Incoming call from {}   [a] accept  [d] decline",
                    for_terminal(from)
                ),
                Style::default().add_modifier(Modifier::BOLD),
            )],
        ),
        CallView::Dialling { to } => (
            " Calling ".into(),
            vec![Line::from(format!(
                "Calling {}...   [x] cancel",
                for_terminal(to)
            ))],
        ),
        CallView::Active {
            peer,
            input,
            output,
            muted,
            held,
            stats,
        } => {
            let mut flags = String::new();
            if *muted {
                flags.push_str("  MUTED");
            }
            if *held {
                flags.push_str("  ON HOLD");
            }
            if stats.as_ref().is_some_and(|s| s.held_by_peer) {
                flags.push_str("  ON HOLD BY PEER");
            }
            let mut lines = vec![Line::styled(
                format!(
                    "In call with {}  {}{flags}",
                    for_terminal(peer),
                    stats
                        .as_ref()
                        .map_or("0:00".to_owned(), |s| minutes(s.elapsed_s))
                ),
                Style::default().add_modifier(Modifier::BOLD),
            )];
            match stats {
                Some(s) => {
                    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
                    lines.push(Line::from(format!(
                        "path {} ({})  RTT {}  jitter {:.1} ms",
                        s.path.unwrap_or("-"),
                        s.remote.map_or("-".to_owned(), |a| a.to_string()),
                        ms(s.rtt_ms),
                        s.jitter_ms
                    )));
                    lines.push(Line::from(format!(
                        "sent {}  received {}  lost {}  MOS {:.2} (mouth-to-ear {:.0} ms)",
                        s.sent, s.received, s.lost, s.mos, s.delay_ms
                    )));
                }
                None => lines.push(Line::from("connecting media...")),
            }
            lines.push(Line::from(format!("in: {input}   out: {output}")));
            lines.push(Line::from("[m] mute  [h] hold  [x] hang up"));
            (" Call ".into(), lines)
        }
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// `secs` as "m:ss".
fn minutes(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

fn chat(frame: &mut Frame, state: &State, area: Rect) {
    let title = match state.selected_name() {
        Some(name) => format!(" Chat with {} ", for_terminal(name)),
        None => " Chat ".to_owned(),
    };
    let thread = state.thread();
    // The newest lines that fit.
    let room = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = thread[thread.len().saturating_sub(room)..]
        .iter()
        .map(|l| {
            let mark = l.own.as_ref().map_or("", |(_, m)| m.label());
            Line::from(format!(
                "{} {}: {} {mark}",
                ago(l.at, state.now),
                for_terminal(&l.from),
                for_terminal(&l.text)
            ))
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn input_line(state: &State) -> Line<'static> {
    match state.mode {
        Mode::Compose => Line::from(format!(
            "to {}> {}_",
            state.selected_name().unwrap_or("-"),
            state.input
        )),
        Mode::Search => Line::from(format!("search> {}_", state.input)),
        Mode::Normal | Mode::Help => Line::from(
            "Enter write  / search  c call  a accept  d decline  m mute  h hold  x hang up",
        ),
    }
}

fn help(frame: &mut Frame, area: Rect) {
    let mut lines = vec![Line::styled(
        format!(
            "{:<9} {:<36} {}",
            "key", "does", "the same from the command line"
        ),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    lines.extend(
        KEYS.iter()
            .map(|(k, what, cli)| Line::from(format!("{k:<9} {what:<36} {cli}"))),
    );
    lines.push(Line::from(""));
    lines.push(Line::from("any key closes this help"));
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x,
        y: area.y,
        width: area.width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Help ")),
        popup,
    );
}
