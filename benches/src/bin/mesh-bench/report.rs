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

    pub(crate) fn latencies(mut self, mut l: Vec<Duration>, elapsed: Duration) -> Self {
        l.sort();
        let pct = |p: usize| {
            l.get((l.len() * p / 100).min(l.len().saturating_sub(1)))
                .map(|d| d.as_secs_f64() * 1e6)
        };
        self.p50_us = pct(50);
        self.p90_us = pct(90);
        self.p99_us = pct(99);
        self.samples = l.len();
        if !elapsed.is_zero() {
            self.per_sec = Some(l.len() as f64 / elapsed.as_secs_f64());
        }
        self
    }
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

pub(crate) fn print(rows: &[Row], json: bool) {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    let f =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"));
    let (idle, rows): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| r.wakeups_per_sec.is_some());
    if !idle.is_empty() {
        println!(
            "\n{:<18} {:<38} {:>12} {:>14} {:>16}",
            "scenario", "contender", "wake-ups/s", "CPU % of core", "CPU s per hour"
        );
        for r in idle {
            println!(
                "{:<18} {:<38} {:>12} {:>14} {:>16}",
                r.scenario,
                r.contender,
                f(r.wakeups_per_sec, 1),
                f(r.cpu_percent, 3),
                f(r.cpu_percent.map(|p| p / 100.0 * 3600.0), 1),
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    println!(
        "\n{:<18} {:<38} {:>9} {:>9} {:>9} {:>11} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "scenario",
        "contender",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "ops/s",
        "MB/s",
        "lost",
        "CPU µs/op",
        "×p50",
        "×p99",
        "×rate"
    );
    for r in rows {
        println!(
            "{:<18} {:<38} {:>9} {:>9} {:>9} {:>11} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
            r.scenario,
            r.contender,
            f(r.p50_us, 1),
            f(r.p90_us, 1),
            f(r.p99_us, 1),
            f(r.per_sec, 0),
            f(r.mb_per_sec, 1),
            r.lost.map_or_else(|| "-".into(), |x| x.to_string()),
            f(r.cpu_us_per_op, 2),
            f(r.ratio_p50, 2),
            f(r.ratio_p99, 2),
            f(r.ratio_rate, 2),
        );
    }
}

/// An SVG of p50 and p99 per latency row, on a logarithmic axis (hand-written: a chart of
/// bars needs no plotting library).
pub(crate) fn plot(rows: &[Row], path: &std::path::Path) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.p50_us.is_some()).collect();
    let (label_w, bar_w, row_h, top) = (330.0, 560.0, 26.0, 40.0);
    let height = top + row_h * rows.len() as f64 + 40.0;
    let max = rows.iter().filter_map(|r| r.p99_us).fold(10.0f64, f64::max);
    let (lo, hi) = (1.0f64.ln(), (max * 1.2).ln());
    let x = |us: f64| label_w + bar_w * ((us.max(1.0).ln() - lo) / (hi - lo));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14">mesh-bench: latency, p50 (dark) and p99 (light), µs, log scale</text>
"#,
        w = label_w + bar_w + 80.0
    );
    for decade in 0..7 {
        let us = 10f64.powi(decade);
        if us > max * 1.2 {
            break;
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{us}</text>"##,
            x(us),
            height - 30.0,
            height - 15.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mine = r.contender.starts_with("mesh-link");
        let (dark, light) = if mine {
            ("#1f6feb", "#9ec5fe")
        } else {
            ("#555", "#bbb")
        };
        let p50 = r.p50_us.unwrap_or(0.0);
        let p99 = r.p99_us.unwrap_or(p50);
        let _ = writeln!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{s} · {c}</text><rect x="{label_w}" y="{y}" width="{w99}" height="16" fill="{light}"/><rect x="{label_w}" y="{y}" width="{w50}" height="16" fill="{dark}"/><text x="{tx}" y="{ty}">{p50:.0} / {p99:.0}</text>"#,
            lx = label_w - 8.0,
            ty = y + 12.0,
            s = r.scenario,
            c = r.contender,
            w99 = x(p99) - label_w,
            w50 = x(p50) - label_w,
            tx = x(p99) + 4.0,
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}
