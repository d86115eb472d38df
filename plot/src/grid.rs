//! A coloured grid of labelled cells (the NAT matrix: rows are callers'
//! NATs, columns callees'), with a legend.

use crate::{Svg, num};

/// One cell of a [`Grid`].
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    pub row: usize,
    pub col: usize,
    /// Fill colour (`#rrggbb`), one of the legend's.
    pub fill: String,
    /// Up to three short lines written in the cell.
    pub lines: Vec<String>,
    /// Hover text.
    pub title: String,
    /// Extra `data-*` attributes (name without the prefix, value).
    pub data: Vec<(String, String)>,
}

/// A grid to draw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grid {
    pub title: String,
    pub subtitle: String,
    /// Axis names: what the rows are, what the columns are.
    pub row_axis: String,
    pub col_axis: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: Vec<GridCell>,
    /// (label, colour) in the order shown.
    pub legend: Vec<(String, String)>,
}

const CELL_W: f64 = 130.0;
const CELL_H: f64 = 62.0;
const LEFT: f64 = 150.0;
const TOP: f64 = 100.0;

/// The grid as an SVG document. Elements: `rect.cell` one per cell
/// (`data-row`, `data-col`: the labels; `fill`; the cell's own `data-*`),
/// `rect.legend` one per legend entry (`data-label`, `fill`).
pub fn grid(g: &Grid) -> String {
    let width = LEFT + CELL_W * g.cols.len() as f64 + 20.0;
    let legend_top = TOP + CELL_H * g.rows.len() as f64 + 24.0;
    let height = legend_top + 22.0 * g.legend.len().div_ceil(3) as f64 + 16.0;
    let mut svg = Svg::new(width.max(520.0), height);
    svg.text(
        "text",
        &[
            ("x", "12".into()),
            ("y", "24".into()),
            ("font-size", "16".into()),
            ("font-weight", "bold".into()),
        ],
        &g.title,
    );
    svg.text(
        "text",
        &[
            ("x", "12".into()),
            ("y", "44".into()),
            ("fill", "#555".into()),
        ],
        &g.subtitle,
    );
    svg.text(
        "text",
        &[
            ("x", num(LEFT + CELL_W * g.cols.len() as f64 / 2.0)),
            ("y", num(TOP - 30.0)),
            ("text-anchor", "middle".into()),
            ("font-weight", "bold".into()),
        ],
        &g.col_axis,
    );
    svg.text(
        "text",
        &[
            ("x", "12".into()),
            ("y", num(TOP - 12.0)),
            ("font-weight", "bold".into()),
        ],
        &g.row_axis,
    );
    for (c, name) in g.cols.iter().enumerate() {
        svg.text(
            "text",
            &[
                ("x", num(LEFT + CELL_W * (c as f64 + 0.5))),
                ("y", num(TOP - 8.0)),
                ("text-anchor", "middle".into()),
            ],
            name,
        );
    }
    for (r, name) in g.rows.iter().enumerate() {
        svg.text(
            "text",
            &[
                ("x", num(LEFT - 8.0)),
                ("y", num(TOP + CELL_H * (r as f64 + 0.5) + 4.0)),
                ("text-anchor", "end".into()),
            ],
            name,
        );
    }
    for cell in &g.cells {
        let (Some(row), Some(col)) = (g.rows.get(cell.row), g.cols.get(cell.col)) else {
            continue;
        };
        let x = LEFT + CELL_W * cell.col as f64;
        let y = TOP + CELL_H * cell.row as f64;
        let mut attrs = vec![
            ("class", "cell".to_owned()),
            ("x", num(x + 1.0)),
            ("y", num(y + 1.0)),
            ("width", num(CELL_W - 2.0)),
            ("height", num(CELL_H - 2.0)),
            ("fill", cell.fill.clone()),
            ("stroke", "#ffffff".to_owned()),
            ("data-row", row.clone()),
            ("data-col", col.clone()),
        ];
        let names: Vec<String> = cell.data.iter().map(|(k, _)| format!("data-{k}")).collect();
        for ((_, v), name) in cell.data.iter().zip(&names) {
            attrs.push((name.as_str(), v.clone()));
        }
        svg.titled("rect", &attrs, &cell.title);
        for (i, line) in cell.lines.iter().take(3).enumerate() {
            svg.text(
                "text",
                &[
                    ("x", num(x + CELL_W / 2.0)),
                    ("y", num(y + 20.0 + 16.0 * i as f64)),
                    ("text-anchor", "middle".into()),
                    ("font-size", if i == 0 { "13" } else { "11" }.into()),
                    ("pointer-events", "none".into()),
                ],
                line,
            );
        }
    }
    for (i, (label, colour)) in g.legend.iter().enumerate() {
        let x = 12.0 + 190.0 * (i % 3) as f64;
        let y = legend_top + 22.0 * (i / 3) as f64;
        svg.leaf(
            "rect",
            &[
                ("class", "legend".into()),
                ("x", num(x)),
                ("y", num(y)),
                ("width", "16".into()),
                ("height", "16".into()),
                ("fill", colour.clone()),
                ("data-label", label.clone()),
            ],
        );
        svg.text("text", &[("x", num(x + 22.0)), ("y", num(y + 13.0))], label);
    }
    svg.finish()
}
