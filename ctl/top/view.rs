//! Drawing `orchctl top` with ratatui: the table of objectives and steps, the footer
//! (slots, budget, host), the key line; or the details, the logs, a question. Fits 80×24.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table, TableState, Wrap};

use super::model::{Ask, Dash, Mode, Row};

/// The key line of the list.
pub const LIST_KEYS: &str =
    "q quit  ↑↓ move  ⏎ details  l logs  c cancel  p pause/resume  a approve  x deny";
const PAGE_KEYS: &str = "esc/q back  ↑↓ PgUp PgDn scroll";
const LOG_KEYS: &str = "esc/q back  ↑↓ PgUp PgDn scroll  r re-read (events re-read it too)";

const WIDTHS: [Constraint; 9] = [
    Constraint::Min(16),
    Constraint::Length(9),
    Constraint::Length(3),
    Constraint::Length(5),
    Constraint::Length(6),
    Constraint::Length(6),
    Constraint::Length(7),
    Constraint::Length(5),
    Constraint::Length(5),
];
const HEADER: [&str; 9] = [
    "OBJECTIVE / STEP",
    "STATE",
    "ATT",
    "CPU",
    "RSS",
    "TOKENS",
    "COST",
    "PROG",
    "AGE",
];

/// Draws the whole screen.
pub fn draw(f: &mut Frame, dash: &Dash) {
    let [body, footer, keys] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    match &dash.mode {
        Mode::List | Mode::Confirm(_) => table(f, body, dash),
        Mode::Details { id, scroll } => {
            let text = match dash.objectives.get(id) {
                Some(o) => crate::views::objective(o),
                None => format!("objective {id} is no longer shown"),
            };
            page(f, body, &format!("details of {id}"), &text, *scroll);
        }
        Mode::Logs {
            id,
            step,
            text,
            scroll,
        } => {
            let title = format!("logs of {id} {step} (the last lines)");
            page(f, body, &title, text, *scroll);
        }
    }
    f.render_widget(
        Paragraph::new(Line::from(dash.footer())).style(Style::new().add_modifier(Modifier::BOLD)),
        footer,
    );
    let bottom = match &dash.mode {
        Mode::Confirm(Ask::Cancel(id)) => format!("cancel objective {id}? y/n"),
        Mode::Confirm(Ask::Deny(id, step)) => format!("deny step {step} of {id}? y/n"),
        _ if !dash.message.is_empty() => dash.message.clone(),
        Mode::List => match dash.held() {
            Some(why) => why.to_string(),
            None => LIST_KEYS.to_string(),
        },
        Mode::Logs { .. } => LOG_KEYS.to_string(),
        _ => PAGE_KEYS.to_string(),
    };
    f.render_widget(Paragraph::new(Line::from(bottom)), keys);
}

fn table(f: &mut Frame, area: Rect, dash: &Dash) {
    let rows: Vec<Row> = dash.rows();
    let lines: Vec<TableRow> = rows
        .iter()
        .filter_map(|r| {
            let cells = dash.cells(r)?;
            let style = match r {
                Row::Objective(_) => Style::new().add_modifier(Modifier::BOLD),
                Row::Step(..) => Style::new(),
            };
            Some(TableRow::new(cells.into_iter().map(Cell::from)).style(style))
        })
        .collect();
    let empty = lines.is_empty();
    let t = Table::new(lines, WIDTHS)
        .header(TableRow::new(HEADER).style(Style::new().add_modifier(Modifier::REVERSED)))
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected((!empty).then_some(dash.selected));
    f.render_stateful_widget(t, area, &mut state);
    if empty && area.height > 2 {
        let hint = Rect {
            y: area.y + 2,
            height: 1,
            ..area
        };
        f.render_widget(
            Paragraph::new("no objectives yet: orchctl submit -- CMD, or a plan file"),
            hint,
        );
    }
}

fn page(f: &mut Frame, area: Rect, title: &str, text: &str, scroll: u16) {
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    f.render_widget(
        Paragraph::new(title).style(Style::new().add_modifier(Modifier::REVERSED)),
        head,
    );
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        body,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_proto::v1::{Objective, ObjectiveState, Step, StepState};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(dash: &Dash) -> String {
        let mut t = match Terminal::new(TestBackend::new(80, 24)) {
            Ok(t) => t,
            Err(e) => panic!("test terminal: {e}"),
        };
        if let Err(e) = t.draw(|f| draw(f, dash)) {
            panic!("draw: {e}");
        }
        let buf = t.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                text.push_str(buf[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn the_list_fits_80_by_24_with_every_column() {
        let mut d = Dash::new(false);
        d.objectives.insert(
            "01JD3XABCDEFGHJKMNPQRSTVWX".into(),
            Objective {
                id: "01JD3XABCDEFGHJKMNPQRSTVWX".into(),
                name: "a rather long objective name that must be cut".into(),
                state: ObjectiveState::AwaitingApproval as i32,
                steps: vec![Step {
                    id: "deploy".into(),
                    state: StepState::AwaitingApproval as i32,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let s = screen(&d);
        for word in HEADER {
            assert!(s.contains(word), "{word} missing:\n{s}");
        }
        assert!(s.contains("01JD3XABCD a rather"), "{s}");
        assert!(s.contains("└ deploy"), "{s}");
        assert!(s.contains("awaiting"), "{s}");
        assert!(s.contains("q quit"), "{s}");
    }

    #[test]
    fn an_empty_table_says_how_to_start() {
        let s = screen(&Dash::new(false));
        assert!(s.contains("no objectives yet"), "{s}");
    }

    #[test]
    fn a_question_replaces_the_key_line() {
        let mut d = Dash::new(false);
        d.mode = Mode::Confirm(Ask::Cancel("01X".into()));
        assert!(screen(&d).contains("cancel objective 01X? y/n"));
    }
}
