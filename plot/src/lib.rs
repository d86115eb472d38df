//! # natter-plot
//!
//! Natter's plots, as hand-written SVG (no plotting dependency): a call's
//! timeline from its report ([`call_timeline`], `natter report CALL.json
//! --svg`) and a coloured grid ([`grid`], the NAT lab's matrix). Every
//! data point is one SVG element carrying its value in `data-*` attributes
//! and a `<title>` (shown on hover), so a plot can be checked by parsing it.

mod call;
mod grid;

pub use call::{call_timeline, interval_loss_percent, path_colour};
pub use grid::{Grid, GridCell, grid};

use std::fmt::Write as _;

/// Text escaped for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate or value, to 0.01 without trailing zeros.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    let s = format!("{:.2}", (v * 100.0).round() / 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// An SVG document being written.
#[derive(Debug)]
pub(crate) struct Svg {
    out: String,
}

impl Svg {
    /// A `width` x `height` document with a white background.
    pub(crate) fn new(width: f64, height: f64) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n",
            w = num(width),
            h = num(height)
        );
        let mut svg = Svg { out };
        svg.leaf(
            "rect",
            &[
                ("width", num(width)),
                ("height", num(height)),
                ("fill", "#ffffff".into()),
            ],
        );
        svg
    }

    fn attrs(&mut self, attrs: &[(&str, String)]) {
        for (k, v) in attrs {
            let _ = write!(self.out, " {k}=\"{}\"", escape(v));
        }
    }

    /// `<name attrs/>`.
    pub(crate) fn leaf(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.out.push('<');
        self.out.push_str(name);
        self.attrs(attrs);
        self.out.push_str("/>\n");
    }

    /// `<name attrs>text</name>`.
    pub(crate) fn text(&mut self, name: &str, attrs: &[(&str, String)], text: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.attrs(attrs);
        let _ = writeln!(self.out, ">{}</{name}>", escape(text));
    }

    /// `<name attrs><title>title</title></name>`: a data point with its
    /// hover text.
    pub(crate) fn titled(&mut self, name: &str, attrs: &[(&str, String)], title: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.attrs(attrs);
        let _ = writeln!(self.out, "><title>{}</title></{name}>", escape(title));
    }

    /// The finished document.
    pub(crate) fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(num(1.0), "1");
        assert_eq!(num(1.239), "1.24");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(f64::NAN), "0");
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot; ");
    }
}
