//! The NAT matrix as a coloured SVG grid: well-formed, one cell per cell of
//! the results with its numbers and the colour its outcome calls for, and
//! the committed docs/results/nat-matrix-36.svg is what `render` makes of
//! the committed results (no root, no lab).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use natter_interop_tests::scenario::{
    self, MatrixReport, NOT_AS_EXPECTED_COLOUR, SELF_CHECK_FAILED_COLOUR,
};

const RESULTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/results/nat-matrix-36.json"
);
const SVG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/results/nat-matrix-36.svg"
);

fn results() -> MatrixReport {
    serde_json::from_str(&std::fs::read_to_string(RESULTS).unwrap()).unwrap()
}

/// A rect's attributes by name.
type Attrs = HashMap<String, String>;

/// (row, col) -> the cell's rect, and legend label -> colour.
fn cells_and_legend(svg: &str) -> (HashMap<(String, String), Attrs>, HashMap<String, String>) {
    let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut cells = HashMap::new();
    let mut legend = HashMap::new();
    for n in doc.descendants().filter(|n| n.tag_name().name() == "rect") {
        let attrs: Attrs = n
            .attributes()
            .map(|a| (a.name().to_owned(), a.value().to_owned()))
            .collect();
        match n.attribute("class") {
            Some("cell") => {
                let key = (attrs["data-row"].clone(), attrs["data-col"].clone());
                assert!(cells.insert(key, attrs).is_none(), "one rect per cell");
            }
            Some("legend") => {
                legend.insert(attrs["data-label"].clone(), attrs["fill"].clone());
            }
            _ => {}
        }
    }
    (cells, legend)
}

#[test]
fn every_cell_of_the_results_is_drawn_with_its_outcome() {
    let r = results();
    let (cells, legend) = cells_and_legend(&scenario::matrix_svg(&r));
    assert_eq!(cells.len(), r.cells.len());
    for c in &r.cells {
        let rect = &cells[&(c.a.to_string(), c.b.to_string())];
        assert_eq!(rect["data-trials"], c.trials.to_string());
        assert_eq!(rect["data-connected"], c.connected.to_string());
        assert_eq!(rect["data-passed"], c.passed().to_string());
        assert_eq!(rect["data-expected"], c.expected);
        // The colour the legend gives its outcome.
        let outcome = if !c.self_check {
            "self-check failed"
        } else if c.passed() == c.trials && c.trials > 0 {
            c.expected.as_str()
        } else {
            "not as expected"
        };
        assert_eq!(rect["fill"], legend[outcome], "{} x {}", c.a, c.b);
    }
    // The committed run: every cell over its expected path, so four colours
    // (one per path kind) and no red.
    let fills: std::collections::BTreeSet<&str> =
        cells.values().map(|a| a["fill"].as_str()).collect();
    assert_eq!(fills.len(), 4, "{fills:?}");
    assert!(!fills.contains(NOT_AS_EXPECTED_COLOUR));
}

#[test]
fn failed_and_unchecked_cells_are_red_and_grey() {
    let mut r = results();
    // A trial not over its expected path, and a router that failed its
    // self-check.
    r.cells[0].trial_results[0].passed = false;
    r.cells[1].self_check = false;
    let (cells, _) = cells_and_legend(&scenario::matrix_svg(&r));
    let fill =
        |i: usize| cells[&(r.cells[i].a.to_string(), r.cells[i].b.to_string())]["fill"].clone();
    assert_eq!(fill(0), NOT_AS_EXPECTED_COLOUR);
    assert_eq!(fill(1), SELF_CHECK_FAILED_COLOUR);
    assert_ne!(fill(2), NOT_AS_EXPECTED_COLOUR);
}

#[test]
fn the_committed_svg_is_rendered_from_the_committed_results() {
    let committed = std::fs::read_to_string(SVG).expect(
        "docs/results/nat-matrix-36.svg: run `natter-interop-tests render docs/results/nat-matrix-36.json`",
    );
    assert_eq!(committed, scenario::matrix_svg(&results()));
}
