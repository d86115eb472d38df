//! A call's timeline: RTT, jitter, loss and FEC recoveries over time, with
//! the path switches, from the report's per-second samples.

use natter_proto::path::PathKind;
use natter_proto::report::{CallReport, Sample};

use crate::{Svg, num};

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 56.0;
const PANEL: f64 = 120.0;
const GAP: f64 = 34.0;
const BOTTOM: f64 = 40.0;

/// The colour of a path, the same in every plot (the NAT matrix's cells
/// too): greens for the direct paths, warm colours for the relayed ones.
pub fn path_colour(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Direct => "#1a9850",
        PathKind::HolePunched => "#91cf60",
        PathKind::Relayed => "#fdae61",
        PathKind::TcpRelay => "#f46d43",
    }
}

/// Loss in the interval ending at `samples[i]`, in percent of the media
/// packets due in it (received + lost); 0 when none were due.
pub fn interval_loss_percent(samples: &[Sample], i: usize) -> f64 {
    let Some(s) = samples.get(i) else { return 0.0 };
    let prev = i.checked_sub(1).and_then(|j| samples.get(j));
    let (r0, l0) = prev.map_or((0, 0), |p| (p.received, p.lost));
    let lost = s.lost.saturating_sub(l0);
    let due = s.received.saturating_sub(r0) + lost;
    if due == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / due as f64
    }
}

/// FEC recoveries in the interval ending at `samples[i]`.
fn interval_fec(samples: &[Sample], i: usize) -> u64 {
    let prev = i
        .checked_sub(1)
        .and_then(|j| samples.get(j))
        .map_or(0, |p| p.fec_recoveries);
    samples
        .get(i)
        .map_or(0, |s| s.fec_recoveries.saturating_sub(prev))
}

/// A panel: its title, unit, y range and where it is.
struct Panel {
    top: f64,
    max: f64,
    end_ms: f64,
}

impl Panel {
    fn x(&self, at_ms: u64) -> f64 {
        LEFT + (at_ms as f64 / self.end_ms) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL - (v / self.max).clamp(0.0, 1.0) * PANEL
    }

    /// Frame, title, y ticks and gridlines.
    fn draw_frame(&self, svg: &mut Svg, class: &str, title: &str) {
        svg.text(
            "text",
            &[
                ("x", num(LEFT)),
                ("y", num(self.top - 8.0)),
                ("font-weight", "bold".into()),
                ("class", format!("{class}-title")),
            ],
            title,
        );
        for k in 0..=4 {
            let v = self.max * f64::from(k) / 4.0;
            let y = self.y(v);
            svg.leaf(
                "line",
                &[
                    ("x1", num(LEFT)),
                    ("x2", num(WIDTH - RIGHT)),
                    ("y1", num(y)),
                    ("y2", num(y)),
                    ("stroke", if k == 0 { "#444" } else { "#e0e0e0" }.into()),
                ],
            );
            svg.text(
                "text",
                &[
                    ("x", num(LEFT - 6.0)),
                    ("y", num(y + 4.0)),
                    ("text-anchor", "end".into()),
                    ("fill", "#555".into()),
                ],
                &tick(v),
            );
        }
    }
}

/// A tick label: integers as such, small values to 0.1.
fn tick(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A y range for values up to `max`: a little headroom, never empty.
fn y_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        1.0
    } else {
        max * 1.15
    }
}

/// The call's timeline as an SVG document: four panels sharing the time
/// axis (RTT, jitter, loss per interval, FEC recoveries per interval) and a
/// dashed line at every path switch. Elements, for a reader or a test:
/// `circle.rtt` and `circle.jitter` (one per sample that has the value,
/// `data-at-ms`, `data-value` in ms), `rect.loss` (`data-value`: percent of
/// the interval's packets) and `rect.fec` (`data-value`: recoveries) one
/// per sample, `line.switch` one per switch (`data-at-ms`, `data-path`).
pub fn call_timeline(report: &CallReport) -> String {
    let samples = &report.samples;
    let last_sample = samples.last().map_or(0, |s| s.at_ms);
    let last_switch = report.switches.iter().map(|s| s.at_ms).max().unwrap_or(0);
    let end_ms = ((report.duration_s * 1000.0).max(0.0) as u64)
        .max(last_sample)
        .max(last_switch)
        .max(1000) as f64;
    let height = TOP + 4.0 * PANEL + 3.0 * GAP + BOTTOM + 20.0;
    let mut svg = Svg::new(WIDTH, height);
    svg.text(
        "text",
        &[
            ("x", num(LEFT)),
            ("y", "22".into()),
            ("font-size", "16".into()),
            ("font-weight", "bold".into()),
        ],
        &format!(
            "Call with {}: {:.1} s, path {}, MOS {:.2}",
            report.peer,
            report.duration_s,
            report.path_name(),
            report.mos_estimate
        ),
    );
    svg.text(
        "text",
        &[
            ("x", num(LEFT)),
            ("y", "40".into()),
            ("fill", "#555".into()),
        ],
        &format!(
            "{} samples; lost {}, FEC recovered {}, concealed {}; jitter {:.1} ms, RTT {}",
            samples.len(),
            report.packets_lost,
            report.fec_recoveries,
            report.concealed_frames,
            report.jitter_ms,
            report
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v} ms"))
        ),
    );

    let panel = |i: u32, max: f64| Panel {
        top: TOP + 14.0 + f64::from(i) * (PANEL + GAP),
        max: y_max(max),
        end_ms,
    };
    let rtt_max = samples.iter().filter_map(|s| s.rtt_ms).max().unwrap_or(0) as f64;
    let jitter_max = samples.iter().map(|s| s.jitter_ms).fold(0.0, f64::max);
    let losses: Vec<f64> = (0..samples.len())
        .map(|i| interval_loss_percent(samples, i))
        .collect();
    let fecs: Vec<u64> = (0..samples.len())
        .map(|i| interval_fec(samples, i))
        .collect();
    let loss_max = losses.iter().copied().fold(0.0, f64::max);
    let fec_max = fecs.iter().copied().max().unwrap_or(0) as f64;

    // Bars are as wide as the interval before each sample.
    let starts: Vec<u64> = (0..samples.len())
        .map(|i| if i == 0 { 0 } else { samples[i - 1].at_ms })
        .collect();

    // RTT and jitter: a line through the samples, a dot on each.
    let p = panel(0, rtt_max);
    p.draw_frame(&mut svg, "rtt", "RTT (ms)");
    line_series(&mut svg, &p, "rtt", "#3366cc", samples, |s| {
        s.rtt_ms.map(|v| v as f64)
    });
    let p = panel(1, jitter_max);
    p.draw_frame(&mut svg, "jitter", "Jitter (ms)");
    line_series(&mut svg, &p, "jitter", "#7b3294", samples, |s| {
        Some(s.jitter_ms)
    });

    // Loss and FEC: a bar per interval.
    let bars = [
        (
            "loss",
            "Loss (% of the interval's packets)",
            "#d73027",
            2,
            loss_max,
            losses,
        ),
        (
            "fec",
            "FEC recoveries (per interval)",
            "#1a9850",
            3,
            fec_max,
            fecs.iter().map(|&v| v as f64).collect(),
        ),
    ];
    for (class, title, colour, i, max, values) in &bars {
        let p = panel(*i, *max);
        p.draw_frame(&mut svg, class, title);
        for ((s, start), v) in samples.iter().zip(&starts).zip(values) {
            let x0 = p.x(*start);
            let x1 = p.x(s.at_ms);
            let y = p.y(*v);
            svg.titled(
                "rect",
                &[
                    ("class", (*class).into()),
                    ("x", num(x0 + 0.5)),
                    ("y", num(y)),
                    ("width", num((x1 - x0 - 1.0).max(0.5))),
                    ("height", num(p.y(0.0) - y)),
                    ("fill", (*colour).into()),
                    ("data-at-ms", s.at_ms.to_string()),
                    ("data-value", num(*v)),
                ],
                &format!(
                    "{:.1}-{:.1} s: {} {}",
                    *start as f64 / 1000.0,
                    s.at_ms as f64 / 1000.0,
                    class,
                    num(*v)
                ),
            );
        }
    }

    // The time axis under the last panel.
    let last = panel(3, 1.0);
    let axis_y = last.top + PANEL;
    let step_ms = nice_step(end_ms / 8.0);
    let mut t = 0.0;
    while t <= end_ms + 0.5 {
        let x = last.x(t as u64);
        svg.text(
            "text",
            &[
                ("x", num(x)),
                ("y", num(axis_y + 16.0)),
                ("text-anchor", "middle".into()),
                ("fill", "#555".into()),
            ],
            &tick(t / 1000.0),
        );
        t += step_ms;
    }
    svg.text(
        "text",
        &[
            ("x", num((LEFT + WIDTH - RIGHT) / 2.0)),
            ("y", num(axis_y + 34.0)),
            ("text-anchor", "middle".into()),
        ],
        "seconds since media started",
    );

    // Path switches across every panel.
    let first = panel(0, 1.0);
    for s in &report.switches {
        let x = first.x(s.at_ms);
        svg.titled(
            "line",
            &[
                ("class", "switch".into()),
                ("x1", num(x)),
                ("x2", num(x)),
                ("y1", num(first.top - 4.0)),
                ("y2", num(axis_y)),
                ("stroke", path_colour(s.path).into()),
                ("stroke-width", "2".into()),
                ("stroke-dasharray", "5,3".into()),
                ("data-at-ms", s.at_ms.to_string()),
                ("data-path", s.path.name().into()),
            ],
            &format!(
                "{:.1} s: path {} ({})",
                s.at_ms as f64 / 1000.0,
                s.path.name(),
                s.addr
            ),
        );
        svg.text(
            "text",
            &[
                ("x", num(x + 3.0)),
                ("y", num(first.top + 10.0)),
                ("fill", "#333".into()),
                ("font-size", "10".into()),
            ],
            s.path.name(),
        );
    }
    if samples.is_empty() {
        svg.text(
            "text",
            &[
                ("x", num((LEFT + WIDTH - RIGHT) / 2.0)),
                ("y", num(first.top + PANEL / 2.0)),
                ("text-anchor", "middle".into()),
                ("fill", "#999".into()),
            ],
            "no samples in this report (written by an older client)",
        );
    }
    svg.finish()
}

/// A line through the samples' values (a gap where there is none) and a
/// `circle.{class}` on each.
fn line_series(
    svg: &mut Svg,
    p: &Panel,
    class: &str,
    colour: &str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> Option<f64>,
) {
    let points: Vec<String> = samples
        .iter()
        .filter_map(|s| value(s).map(|v| format!("{},{}", num(p.x(s.at_ms)), num(p.y(v)))))
        .collect();
    if points.len() > 1 {
        svg.leaf(
            "polyline",
            &[
                ("points", points.join(" ")),
                ("fill", "none".into()),
                ("stroke", colour.into()),
                ("stroke-width", "1.5".into()),
            ],
        );
    }
    for s in samples {
        if let Some(v) = value(s) {
            svg.titled(
                "circle",
                &[
                    ("class", class.into()),
                    ("cx", num(p.x(s.at_ms))),
                    ("cy", num(p.y(v))),
                    ("r", "2.5".into()),
                    ("fill", colour.into()),
                    ("data-at-ms", s.at_ms.to_string()),
                    ("data-value", num(v)),
                ],
                &format!("{:.1} s: {class} {} ms", s.at_ms as f64 / 1000.0, num(v)),
            );
        }
    }
}

/// A round step (1, 2 or 5 times a power of ten) near `raw` ms.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1.0);
    let pow = 10f64.powf(raw.log10().floor());
    let m = raw / pow;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * pow
}
