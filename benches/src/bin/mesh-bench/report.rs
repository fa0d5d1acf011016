//! Tables of results, their ratios, and the SVG plot.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use crate::prelude::*;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) contender: String,
    /// Latencies in microseconds, if measured.
    pub(crate) p50_us: Option<f64>,
    pub(crate) p90_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    /// Operations (requests, messages) per second, if measured.
    pub(crate) per_sec: Option<f64>,
    /// Megabytes (10^6) per second, if measured.
    pub(crate) mb_per_sec: Option<f64>,
    /// Messages sent but not received (one-way scenarios).
    pub(crate) lost: Option<u64>,
    /// CPU time of both processes (client and server) per operation, µs (the processes
    /// layout).
    pub(crate) cpu_us_per_op: Option<f64>,
    /// Wake-ups (voluntary context switches, every thread) per second (idle rows).
    pub(crate) wakeups_per_sec: Option<f64>,
    /// CPU time as a share of one core, % (idle rows).
    pub(crate) cpu_percent: Option<f64>,
    pub(crate) samples: usize,
    /// mesh-link's figure over this row's (for latency, < 1 is better for mesh-link; for
    /// rates, > 1 is).
    pub(crate) ratio_p50: Option<f64>,
    pub(crate) ratio_p99: Option<f64>,
    pub(crate) ratio_rate: Option<f64>,
}

impl Row {
    pub(crate) fn new(scenario: &str, contender: &str) -> Self {
        Self {
            scenario: scenario.into(),
            contender: contender.into(),
            p50_us: None,
            p90_us: None,
            p99_us: None,
            per_sec: None,
            mb_per_sec: None,
            lost: None,
            cpu_us_per_op: None,
            wakeups_per_sec: None,
            cpu_percent: None,
            samples: 0,
            ratio_p50: None,
            ratio_p99: None,
            ratio_rate: None,
        }
    }

    /// p50, p90 and p99 of `l` (from an HDR histogram, 3 significant digits), and the rate
    /// over `elapsed`.
    pub(crate) fn latencies(mut self, l: Vec<Duration>, elapsed: Duration) -> Self {
        let h = histogram(&l);
        let pct = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3);
        self.p50_us = pct(0.50);
        self.p90_us = pct(0.90);
        self.p99_us = pct(0.99);
        self.samples = l.len();
        if !elapsed.is_zero() {
            self.per_sec = Some(l.len() as f64 / elapsed.as_secs_f64());
        }
        self
    }
}

/// Latencies in nanoseconds, 1 ns to 10 min, 3 significant digits; longer ones are clamped.
fn histogram(l: &[Duration]) -> hdrhistogram::Histogram<u64> {
    const MAX_NS: u64 = 600_000_000_000;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, MAX_NS, 3)
        .expect("valid histogram bounds");
    for d in l {
        h.saturating_record((d.as_nanos().min(u128::from(MAX_NS)) as u64).max(1));
    }
    h
}

/// Fills in each row's ratios against the first row (mesh-link's).
pub(crate) fn ratios(rows: &mut [Row]) {
    let Some(first) = rows.first().cloned() else {
        return;
    };
    for r in rows.iter_mut() {
        r.ratio_p50 = first.p50_us.zip(r.p50_us).map(|(a, b)| a / b);
        r.ratio_p99 = first.p99_us.zip(r.p99_us).map(|(a, b)| a / b);
        r.ratio_rate = first
            .mb_per_sec
            .zip(r.mb_per_sec)
            .or(first.per_sec.zip(r.per_sec))
            .map(|(a, b)| a / b);
    }
}

/// What the ratio columns mean.
pub(crate) const LEGEND: &str = "×p50, ×p99: mesh-link's latency ÷ this row's (below 1: \
     mesh-link is faster). ×rate: mesh-link's rate ÷ this row's (above 1: mesh-link is \
     faster). Each scenario's first row is mesh-link's.";

/// A column of the results table: its header and how a row fills it.
struct Column {
    header: &'static str,
    cell: fn(&Row) -> Option<String>,
}

fn num(v: Option<f64>, prec: usize) -> Option<String> {
    v.map(|x| format!("{x:.prec$}"))
}

const COLUMNS: [Column; 13] = [
    Column {
        header: "p50 µs",
        cell: |r| num(r.p50_us, 1),
    },
    Column {
        header: "p90 µs",
        cell: |r| num(r.p90_us, 1),
    },
    Column {
        header: "p99 µs",
        cell: |r| num(r.p99_us, 1),
    },
    Column {
        header: "ops/s",
        cell: |r| num(r.per_sec, 0),
    },
    Column {
        header: "MB/s",
        cell: |r| num(r.mb_per_sec, 1),
    },
    Column {
        header: "lost",
        cell: |r| r.lost.map(|x| x.to_string()),
    },
    Column {
        header: "CPU µs/op",
        cell: |r| num(r.cpu_us_per_op, 2),
    },
    Column {
        header: "wake-ups/s",
        cell: |r| num(r.wakeups_per_sec, 1),
    },
    Column {
        header: "CPU % of core",
        cell: |r| num(r.cpu_percent, 3),
    },
    Column {
        // The same figure per hour of wall-clock time: what an idle node costs a host.
        header: "CPU s/hour",
        cell: |r| num(r.cpu_percent.map(|p| p * 36.0), 2),
    },
    Column {
        header: "×p50",
        cell: |r| num(r.ratio_p50, 2),
    },
    Column {
        header: "×p99",
        cell: |r| num(r.ratio_p99, 2),
    },
    Column {
        header: "×rate",
        cell: |r| num(r.ratio_rate, 2),
    },
];

/// The rows as a Markdown table, with only the columns some row fills.
pub(crate) fn table(rows: &[Row]) -> String {
    use comfy_table::{presets::ASCII_MARKDOWN, CellAlignment, Table};
    let used: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| rows.iter().any(|r| (c.cell)(r).is_some()))
        .collect();
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN);
    let mut header = vec!["scenario", "contender"];
    header.extend(used.iter().map(|c| c.header));
    t.set_header(header);
    for r in rows {
        let mut cells = vec![r.scenario.clone(), r.contender.clone()];
        cells.extend(
            used.iter()
                .map(|c| (c.cell)(r).unwrap_or_else(|| "-".to_owned())),
        );
        t.add_row(cells);
    }
    for i in 2..2 + used.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.to_string()
}

pub(crate) fn print(rows: &[Row], json: bool) {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    if rows.is_empty() {
        return;
    }
    println!("\n{}", table(rows));
    if rows
        .iter()
        .any(|r| r.ratio_p50.is_some() || r.ratio_rate.is_some())
    {
        println!("{LEGEND}");
    }
}

/// One chart per scenario in one SVG, stacked: p50 and p99 bars (µs, log scale) for latency
/// scenarios, the rate (MB/s, else operations/s) for the others; mesh-link's bars in blue,
/// the baselines' in grey.
pub(crate) fn plot(rows: &[Row], path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let mut scenarios: Vec<&str> = Vec::new();
    for r in rows {
        if !scenarios.contains(&r.scenario.as_str())
            && (r.p50_us.is_some() || r.mb_per_sec.is_some() || r.per_sec.is_some())
        {
            scenarios.push(&r.scenario);
        }
    }
    if scenarios.is_empty() {
        return Err("nothing to plot".into());
    }
    let panel_h = |s: &str| 90 + 28 * rows.iter().filter(|r| r.scenario == s).count() as u32;
    let height: u32 = scenarios.iter().map(|s| panel_h(s)).sum();
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut rest = root;
    for s in scenarios {
        let (panel, below) = rest.split_vertically(panel_h(s));
        rest = below;
        let mine: Vec<&Row> = rows.iter().filter(|r| r.scenario == s).collect();
        chart(&panel, s, &mine).map_err(|e| e.to_string())?;
    }
    rest.present().map_err(|e| e.to_string())
}

/// What one scenario's chart shows.
enum Measure {
    Latency,
    MegabytesPerSec,
    OpsPerSec,
}

fn chart<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    scenario: &str,
    rows: &[&Row],
) -> Result<(), plotters::drawing::DrawingAreaErrorKind<DB::ErrorType>> {
    use plotters::prelude::*;
    let measure = if rows.iter().any(|r| r.p50_us.is_some()) {
        Measure::Latency
    } else if rows.iter().any(|r| r.mb_per_sec.is_some()) {
        Measure::MegabytesPerSec
    } else {
        Measure::OpsPerSec
    };
    let bars: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| match measure {
            Measure::Latency => {
                let p50 = r.p50_us.unwrap_or(0.0);
                (p50, r.p99_us.unwrap_or(p50))
            }
            Measure::MegabytesPerSec => (r.mb_per_sec.unwrap_or(0.0), 0.0),
            Measure::OpsPerSec => (r.per_sec.unwrap_or(0.0), 0.0),
        })
        .collect();
    let max = bars.iter().map(|b| b.0.max(b.1)).fold(1.0f64, f64::max) * 1.3;
    let (title, unit) = match measure {
        Measure::Latency => ("p50 (dark) and p99 (light), log scale", "µs"),
        Measure::MegabytesPerSec => ("throughput", "MB/s"),
        Measure::OpsPerSec => ("rate", "operations/s"),
    };
    let n = rows.len() as i32;
    let names: Vec<String> = rows.iter().map(|r| r.contender.clone()).collect();
    let style = |i: usize, light: bool| {
        let blue = RGBColor(0x1f, 0x6f, 0xeb);
        let grey = RGBColor(0x55, 0x55, 0x55);
        let c = if rows[i].contender.starts_with("mesh-link") {
            blue
        } else {
            grey
        };
        if light {
            c.mix(0.35).filled()
        } else {
            c.filled()
        }
    };
    let caption = format!("{scenario}: {title}");
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(n - 1 - i)
            .ok()
            .and_then(|i| names.get(i).cloned())
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    macro_rules! draw {
        ($x:expr, $lo:expr) => {{
            let mut c = ChartBuilder::on(area)
                .caption(&caption, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(330)
                .build_cartesian_2d($x, (0..n).into_segmented())?;
            c.configure_mesh()
                .disable_y_mesh()
                .x_desc(unit)
                .x_labels(8)
                .x_label_formatter(&|v: &f64| format!("{v:.0}"))
                .y_labels(rows.len())
                .y_label_formatter(&label)
                .draw()?;
            // Top to bottom in the table's order: mesh-link first.
            let bar = |i: usize, v: f64, light: bool| {
                let y = n - 1 - i as i32;
                let mut r = Rectangle::new(
                    [
                        ($lo, SegmentValue::Exact(y)),
                        (v.max($lo), SegmentValue::Exact(y + 1)),
                    ],
                    style(i, light),
                );
                r.set_margin(3, 3, 0, 0);
                r
            };
            c.draw_series(
                bars.iter()
                    .enumerate()
                    .filter(|(_, b)| b.1 > 0.0)
                    .map(|(i, b)| bar(i, b.1, true)),
            )?;
            c.draw_series(bars.iter().enumerate().map(|(i, b)| bar(i, b.0, false)))?;
            c.draw_series(bars.iter().enumerate().map(|(i, b)| {
                let v = if b.1 > 0.0 {
                    format!("{:.1} / {:.1}", b.0, b.1)
                } else {
                    format!("{:.1}", b.0)
                };
                Text::new(
                    v,
                    (
                        b.0.max(b.1).max($lo),
                        SegmentValue::CenterOf(n - 1 - i as i32),
                    ),
                    ("sans-serif", 11),
                )
            }))?;
        }};
    }
    match measure {
        Measure::Latency => draw!((1.0f64..max).log_scale(), 1.0f64),
        _ => draw!(0.0f64..max, 0.0f64),
    }
    Ok(())
}
