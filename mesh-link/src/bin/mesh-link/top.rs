//! `mesh-link top`: a live view of a whole mesh, one row per node (as Redis lists them),
//! each node asked for its report over the mesh every refresh.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mesh_link::report::NodeReport;
use mesh_link::{MeshNode, NodeKey};
use ratatui::layout::Constraint;
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Row as TableRow, Table};
use ratatui::Frame;

use crate::client::Target;
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Redis URL (see `node --help`).
    #[arg(long, env = "MESH_REDIS_URL")]
    redis: String,
    /// The mesh's name.
    #[arg(long, default_value = "")]
    prefix: String,
    /// The cluster's secret, for a mesh that has one (the file's contents).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Refresh period, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval: u64,
    /// Print one frame as plain text and exit (for scripts and logs): two refreshes an
    /// interval apart, so that the rates are real.
    #[arg(long)]
    once: bool,
}

/// One node's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) addr: String,
    pub(crate) node_type: String,
    /// The report's round trip from here; `None`: no answer.
    pub(crate) rtt: Option<Duration>,
    pub(crate) msgs_in: f64,
    pub(crate) msgs_out: f64,
    pub(crate) resent: f64,
    pub(crate) errors: u64,
    pub(crate) objects: u64,
}

impl Line {
    /// The line of a node that did not answer.
    pub(crate) fn unanswered(addr: String, node_type: String) -> Self {
        Self {
            addr,
            node_type,
            rtt: None,
            msgs_in: 0.0,
            msgs_out: 0.0,
            resent: 0.0,
            errors: 0,
            objects: 0,
        }
    }
}

/// Rates from successive reports of each node.
#[derive(Default)]
struct Rates {
    last: HashMap<NodeKey, (Instant, BTreeMap<String, u64>)>,
}

impl Rates {
    fn line(&mut self, report: &NodeReport, rtt: Duration, now: Instant) -> Line {
        let c = &report.counters;
        let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let (mut msgs_in, mut msgs_out, mut resent) = (0.0, 0.0, 0.0);
        if let Some((t, prev)) = self.last.get(&report.node.key) {
            let secs = now.duration_since(*t).as_secs_f64().max(1e-3);
            let rate = |k: &str| get(c, k).saturating_sub(get(prev, k)) as f64 / secs;
            msgs_in = rate("transport.messages_received");
            msgs_out = rate("transport.messages_delivered");
            resent = rate("transport.retransmitted");
        }
        self.last.insert(report.node.key, (now, c.clone()));
        Line {
            addr: report.node.key.to_string(),
            node_type: report.node.node_type.clone(),
            rtt: Some(rtt),
            msgs_in,
            msgs_out,
            resent,
            errors: get(c, "node.handler_failed")
                + get(c, "node.malformed")
                + get(c, "node.requests_timed_out")
                + get(c, "node.requests_undelivered"),
            objects: get(c, "shared.objects"),
        }
    }
}

/// The table's columns.
const COLUMNS: [&str; 8] = [
    "ADDRESS",
    "TYPE",
    "RTT",
    "MSG/S IN",
    "MSG/S OUT",
    "RESENT/S",
    "ERRORS",
    "OBJECTS",
];

/// Draws the table of `lines` under `title`.
pub(crate) fn render(frame: &mut Frame<'_>, title: &str, lines: &[Line]) {
    let header = TableRow::new(COLUMNS).style(Style::default().add_modifier(Modifier::BOLD));
    let rows = lines.iter().map(|l| {
        TableRow::new([
            l.addr.clone(),
            l.node_type.clone(),
            l.rtt.map_or_else(
                || "no answer".to_owned(),
                |d| format!("{:.0} µs", d.as_secs_f64() * 1e6),
            ),
            format!("{:.0}", l.msgs_in),
            format!("{:.0}", l.msgs_out),
            format!("{:.0}", l.resent),
            l.errors.to_string(),
            l.objects.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(24),
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title.to_owned()));
    frame.render_widget(table, frame.area());
}

/// One refresh: every node Redis lists, asked for its report.
async fn refresh(
    args: &Args,
    client: &MeshNode,
    rates: &mut Rates,
    timeout: Duration,
) -> Result<Vec<Line>, Failure> {
    let records = crate::nodes::records(&args.redis, &args.prefix).await?;
    let asks = records.iter().map(|r| {
        let key = r.key;
        async move {
            let t0 = Instant::now();
            let report = client.report_of(key, timeout).await;
            (key, report, t0.elapsed())
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let now = Instant::now();
    Ok(records
        .iter()
        .zip(answers)
        .map(|(r, (_, report, rtt))| match report {
            Ok(report) => rates.line(&report, rtt, now),
            Err(_) => Line::unanswered(r.key.to_string(), r.node_type.clone()),
        })
        .collect())
}

/// Waits up to `until` for a key: true for q, Esc or Ctrl-C.
fn quit_pressed(until: Instant) -> bool {
    use crossterm::event::{self, Event, KeyCode, KeyModifiers};
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left).unwrap_or(false) {
            return false;
        }
        if let Ok(Event::Key(k)) = event::read() {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                return true;
            }
        }
    }
}

pub(crate) async fn run(args: Args) -> Outcome {
    let period = Duration::from_millis(args.interval.max(100));
    let records = crate::nodes::records(&args.redis, &args.prefix).await?;
    // A client on the address that reaches the mesh's first node (or loopback).
    let reach = records
        .first()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 9)), |r| {
            r.key.socket_addr()
        });
    let target = Target {
        host: reach.ip().to_string(),
        port: reach.port(),
        key_file: args.key_file.clone(),
    };
    let client = target.client(reach, period).await?;
    let mut rates = Rates::default();
    let title = format!(" mesh {:?} at {} ", args.prefix, args.redis);
    if args.once {
        let frame = async {
            refresh(&args, &client, &mut rates, period).await?;
            tokio::time::sleep(period).await;
            let lines = refresh(&args, &client, &mut rates, period).await?;
            let height = u16::try_from(lines.len() + 3).unwrap_or(u16::MAX);
            let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(110, height))
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            t.draw(|f| render(f, &title, &lines))
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            Ok::<_, Failure>(screen_text(t.backend().buffer()))
        };
        let frame = frame.await;
        let _ = client.stop().await;
        print!("{}", frame?);
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let _ = client.stop().await;
        return Err(Failure::Usage(
            "top draws on a terminal; --once prints one frame as text".into(),
        ));
    }
    let mut terminal = ratatui::init();
    let title = format!("{title}— q quits ");
    let result = loop {
        let next = Instant::now() + period;
        let lines = match refresh(&args, &client, &mut rates, period).await {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        if let Err(e) = terminal.draw(|f| render(f, &title, &lines)) {
            break Err(Failure::Runtime(format!("terminal: {e}")));
        }
        let quit = tokio::task::spawn_blocking(move || quit_pressed(next))
            .await
            .unwrap_or(true);
        if quit {
            break Ok(ExitCode::SUCCESS);
        }
    };
    ratatui::restore();
    let _ = client.stop().await;
    result
}

/// A drawn buffer as text, one line per row, trailing spaces trimmed.
pub(crate) fn screen_text(b: &ratatui::buffer::Buffer) -> String {
    let mut s = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn text(t: &Terminal<TestBackend>) -> String {
        screen_text(t.backend().buffer())
    }

    #[test]
    fn a_row_per_node_with_its_figures_and_no_answer_said_so() {
        let lines = vec![
            Line {
                addr: "10.0.0.1:8100".into(),
                node_type: "game".into(),
                rtt: Some(Duration::from_micros(250)),
                msgs_in: 1200.0,
                msgs_out: 900.0,
                resent: 3.0,
                errors: 2,
                objects: 7,
            },
            Line::unanswered("10.0.0.2:8100".into(), "chat".into()),
        ];
        let mut t = Terminal::new(TestBackend::new(100, 6)).unwrap();
        t.draw(|f| render(f, " mesh demo ", &lines)).unwrap();
        let screen = text(&t);
        let rows: Vec<&str> = screen.lines().collect();
        assert!(rows[0].contains("mesh demo"), "{screen}");
        // Every column but the last fits in 100 columns.
        for h in &COLUMNS[..7] {
            assert!(rows[1].contains(h), "{h} in {screen}");
        }
        let first: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "│10.0.0.1:8100",
                "game",
                "250",
                "µs",
                "1200",
                "900",
                "3",
                "2",
                "7",
                "│"
            ],
            "{screen}"
        );
        assert!(
            rows[3].contains("10.0.0.2:8100") && rows[3].contains("no answer"),
            "{screen}"
        );
    }

    #[test]
    fn rates_come_from_successive_reports() {
        let record = mesh_link::NodeRecord::new(
            NodeKey::from(SocketAddr::from(([10, 0, 0, 1], 1))),
            "t",
            1,
            0,
        );
        let report = |received: u64, at: Instant| {
            let json = serde_json::json!({
                "node": record, "uptime_ms": 0, "members": [], "peers": [],
                "counters": {"transport.messages_received": received},
            });
            (serde_json::from_value::<NodeReport>(json).unwrap(), at)
        };
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let (r, at) = report(100, t0);
        assert_eq!(
            rates.line(&r, Duration::ZERO, at).msgs_in,
            0.0,
            "no rate yet"
        );
        let (r, at) = report(600, t0 + Duration::from_secs(2));
        assert_eq!(rates.line(&r, Duration::ZERO, at).msgs_in, 250.0);
    }
}
