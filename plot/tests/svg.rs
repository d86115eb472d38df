//! The plots are well-formed SVG (parsed as XML) with one element per
//! sample, switch and cell, carrying the input's values and colours.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_plot::{Grid, GridCell, call_timeline, grid, interval_loss_percent, path_colour};
use natter_proto::path::PathKind;
use natter_proto::report::{CallReport, Sample, SwitchReport};

fn parse(svg: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    doc
}

fn of_class<'a>(
    doc: &'a roxmltree::Document<'a>,
    name: &str,
    class: &str,
) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.tag_name().name() == name && n.attribute("class") == Some(class))
        .collect()
}

fn value(n: &roxmltree::Node<'_, '_>) -> f64 {
    n.attribute("data-value").unwrap().parse().unwrap()
}

fn at_ms(n: &roxmltree::Node<'_, '_>) -> u64 {
    n.attribute("data-at-ms").unwrap().parse().unwrap()
}

/// A 30-second call with varying RTT, jitter, a loss burst recovered in
/// part by FEC, a gap in RTT and two path switches.
fn report() -> CallReport {
    let mut samples = Vec::new();
    let (mut received, mut lost, mut fec) = (0u64, 0u64, 0u64);
    for i in 1..=30u64 {
        let burst = (10..14).contains(&i);
        let lost_now = if burst { 5 + i % 3 } else { i % 7 / 6 };
        lost += lost_now;
        received += 50 - lost_now;
        fec += if burst { 3 } else { 0 };
        samples.push(Sample {
            at_ms: i * 1000 + i % 3,
            rtt_ms: (i != 5).then_some(20 + (i * 7) % 40),
            jitter_ms: (i as f64 * 1.37) % 9.0,
            received,
            lost,
            fec_recoveries: fec,
            concealed: lost.saturating_sub(fec),
        });
    }
    CallReport {
        peer: "bob <&>".into(),
        duration_s: 30.2,
        path: Some(PathKind::HolePunched),
        switches: vec![
            SwitchReport {
                at_ms: 0,
                path: PathKind::Relayed,
                addr: "198.51.100.1:3478".parse().unwrap(),
            },
            SwitchReport {
                at_ms: 4_210,
                path: PathKind::HolePunched,
                addr: "203.0.113.7:40000".parse().unwrap(),
            },
        ],
        packets_lost: lost,
        fec_recoveries: fec,
        samples,
        ..CallReport::default()
    }
}

#[test]
fn the_call_timeline_has_every_sample_and_switch() {
    let r = report();
    let svg = call_timeline(&r);
    let doc = parse(&svg);

    // RTT: one dot per sample that has an RTT (sample 5 has none).
    let rtt = of_class(&doc, "circle", "rtt");
    let with_rtt: Vec<&Sample> = r.samples.iter().filter(|s| s.rtt_ms.is_some()).collect();
    assert_eq!(rtt.len(), with_rtt.len());
    assert_eq!(rtt.len(), r.samples.len() - 1);
    for (dot, s) in rtt.iter().zip(&with_rtt) {
        assert_eq!(at_ms(dot), s.at_ms);
        assert_eq!(value(dot), s.rtt_ms.unwrap() as f64);
    }
    // Higher RTT is drawn higher (smaller y).
    let max_dot = rtt
        .iter()
        .max_by(|a, b| value(a).total_cmp(&value(b)))
        .unwrap();
    let min_dot = rtt
        .iter()
        .min_by(|a, b| value(a).total_cmp(&value(b)))
        .unwrap();
    let cy = |n: &roxmltree::Node<'_, '_>| -> f64 { n.attribute("cy").unwrap().parse().unwrap() };
    assert!(cy(max_dot) < cy(min_dot));

    // Jitter: every sample, to 0.01 ms.
    let jitter = of_class(&doc, "circle", "jitter");
    assert_eq!(jitter.len(), r.samples.len());
    for (dot, s) in jitter.iter().zip(&r.samples) {
        assert!((value(dot) - s.jitter_ms).abs() <= 0.005, "{dot:?} {s:?}");
    }

    // Loss: a bar per interval, the percentage of that interval's packets.
    let loss = of_class(&doc, "rect", "loss");
    assert_eq!(loss.len(), r.samples.len());
    for (i, bar) in loss.iter().enumerate() {
        let s = &r.samples[i];
        let (r0, l0) = if i == 0 {
            (0, 0)
        } else {
            (r.samples[i - 1].received, r.samples[i - 1].lost)
        };
        let expected = (s.lost - l0) as f64 * 100.0 / ((s.received - r0) + (s.lost - l0)) as f64;
        assert!((value(bar) - expected).abs() <= 0.005, "interval {i}");
        assert!((interval_loss_percent(&r.samples, i) - expected).abs() < 1e-9);
        assert_eq!(at_ms(bar), s.at_ms);
    }
    // The burst is where the tallest bars are.
    let tallest = loss
        .iter()
        .max_by(|a, b| value(a).total_cmp(&value(b)))
        .unwrap();
    assert!((10_000..14_100).contains(&at_ms(tallest)));

    // FEC: recoveries per interval.
    let fec = of_class(&doc, "rect", "fec");
    assert_eq!(fec.len(), r.samples.len());
    let total: f64 = fec.iter().map(value).sum();
    assert_eq!(total, r.fec_recoveries as f64);
    for (i, bar) in fec.iter().enumerate() {
        let prev = if i == 0 {
            0
        } else {
            r.samples[i - 1].fec_recoveries
        };
        assert_eq!(value(bar), (r.samples[i].fec_recoveries - prev) as f64);
    }

    // Path switches: one line each, in the path's colour.
    let switches = of_class(&doc, "line", "switch");
    assert_eq!(switches.len(), r.switches.len());
    for (line, s) in switches.iter().zip(&r.switches) {
        assert_eq!(at_ms(line), s.at_ms);
        assert_eq!(line.attribute("data-path"), Some(s.path.name()));
        assert_eq!(line.attribute("stroke"), Some(path_colour(s.path)));
    }
    // The peer's name is escaped text, not markup.
    assert!(svg.contains("bob &lt;&amp;&gt;"));
}

#[test]
fn a_report_without_samples_still_plots() {
    let r = CallReport {
        peer: "old".into(),
        duration_s: 3.0,
        ..CallReport::default()
    };
    let svg = call_timeline(&r);
    let doc = parse(&svg);
    assert!(of_class(&doc, "circle", "rtt").is_empty());
    assert!(of_class(&doc, "rect", "loss").is_empty());
    assert!(svg.contains("no samples"));
}

#[test]
fn the_grid_has_one_cell_per_input_with_its_colour() {
    let rows: Vec<String> = ["r0", "r1", "r<2>"].map(String::from).to_vec();
    let cols: Vec<String> = ["c0", "c1"].map(String::from).to_vec();
    let palette = ["#111111", "#222222", "#333333"];
    let mut cells = Vec::new();
    for r in 0..rows.len() {
        for c in 0..cols.len() {
            if (r, c) == (1, 1) {
                continue; // a cell not run
            }
            cells.push(GridCell {
                row: r,
                col: c,
                fill: palette[(r + c) % 3].to_owned(),
                lines: vec![format!("{r}/{c}"), "x & y".into()],
                title: format!("cell {r} {c}"),
                data: vec![("trials".into(), (r * 10 + c).to_string())],
            });
        }
    }
    let g = Grid {
        title: "T".into(),
        rows: rows.clone(),
        cols: cols.clone(),
        cells: cells.clone(),
        legend: palette
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("kind {i}"), (*c).to_owned()))
            .collect(),
        ..Grid::default()
    };
    let svg = grid(&g);
    let doc = parse(&svg);
    let drawn = of_class(&doc, "rect", "cell");
    assert_eq!(drawn.len(), cells.len());
    for cell in &cells {
        let rect = drawn
            .iter()
            .find(|n| {
                n.attribute("data-row") == Some(&rows[cell.row])
                    && n.attribute("data-col") == Some(&cols[cell.col])
            })
            .unwrap_or_else(|| panic!("no rect for {cell:?}"));
        assert_eq!(rect.attribute("fill"), Some(cell.fill.as_str()));
        assert_eq!(rect.attribute("data-trials"), Some(cell.data[0].1.as_str()));
    }
    let legend = of_class(&doc, "rect", "legend");
    assert_eq!(legend.len(), 3);
    for (n, (label, colour)) in legend.iter().zip(&g.legend) {
        assert_eq!(n.attribute("data-label"), Some(label.as_str()));
        assert_eq!(n.attribute("fill"), Some(colour.as_str()));
    }
}
