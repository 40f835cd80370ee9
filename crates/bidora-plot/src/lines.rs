//! Line charts: panels of `(step, value)` series stacked vertically (loss and metric curves).

use std::fmt::Write;

use crate::{escape, fmt_tick, nice_ticks};

/// One line of a panel.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(step, value)` points.
    pub points: Vec<(f64, f64)>,
    /// Stroke colour.
    pub color: &'static str,
}

/// A chart panel.
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Y-axis label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
}

const W: f64 = 900.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;

/// The SVG document of `panels` stacked vertically, sharing the x axis label "step".
pub fn svg(panels: &[Panel]) -> String {
    svg_over(panels, "step")
}

/// [`svg`] with another x axis label.
pub fn svg_over(panels: &[Panel], x_label: &str) -> String {
    let h = PANEL_H * panels.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (p, panel) in panels.iter().enumerate() {
        draw_panel(&mut s, panel, p as f64 * PANEL_H, x_label);
    }
    s.push_str("</svg>\n");
    s
}

/// A panel's plot area and the data range it shows.
struct Frame {
    px0: f64,
    px1: f64,
    py0: f64,
    py1: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    /// The frame of a panel at height `y0` showing `pts` (a range of zero width is widened,
    /// and the y range padded by 5%).
    fn new(y0: f64, pts: &[(f64, f64)]) -> Self {
        let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY);
        for (x, y) in pts {
            xmin = xmin.min(*x);
            xmax = xmax.max(*x);
            ymin = ymin.min(*y);
            ymax = ymax.max(*y);
        }
        if xmax - xmin < 1e-12 {
            xmax = xmin + 1.0;
        }
        if ymax - ymin < 1e-12 {
            ymin -= 0.5;
            ymax += 0.5;
        }
        let pad = (ymax - ymin) * 0.05;
        Frame {
            px0: LEFT,
            px1: W - RIGHT,
            py0: y0 + TOP,
            py1: y0 + PANEL_H - BOTTOM,
            x: (xmin, xmax),
            y: (ymin - pad, ymax + pad),
        }
    }

    fn sx(&self, x: f64) -> f64 {
        self.px0 + (x - self.x.0) / (self.x.1 - self.x.0) * (self.px1 - self.px0)
    }

    fn sy(&self, y: f64) -> f64 {
        self.py1 - (y - self.y.0) / (self.y.1 - self.y.0) * (self.py1 - self.py0)
    }
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

fn draw_panel(s: &mut String, panel: &Panel, y0: f64, x_label: &str) {
    let pts: Vec<(f64, f64)> = panel
        .series
        .iter()
        .flat_map(|s| finite(&s.points))
        .collect();
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        LEFT,
        y0 + 22.0,
        escape(&panel.title)
    );
    if pts.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" fill="grey">no data yet</text>"#,
            LEFT + 10.0,
            (y0 + TOP + y0 + PANEL_H - BOTTOM) / 2.0
        );
        return;
    }
    let f = Frame::new(y0, &pts);
    draw_axes(s, &f, x_label, &panel.y_label);
    for (i, series) in panel.series.iter().enumerate() {
        draw_series(s, &f, i, series);
    }
}

fn draw_axes(s: &mut String, f: &Frame, x_label: &str, y_label: &str) {
    let (px0, px1, py0, py1) = (f.px0, f.px1, f.py0, f.py1);
    for t in nice_ticks(f.y.0, f.y.1, 5) {
        let y = f.sy(t);
        let _ = write!(
            s,
            r##"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px0 - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    for t in nice_ticks(f.x.0, f.x.1, 8) {
        let x = f.sx(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{py1}" x2="{x:.1}" y2="{}" stroke="#555"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            py1 + 5.0,
            py1 + 18.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{px0}" y="{py0}" width="{}" height="{}" fill="none" stroke="#555"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"##,
        px1 - px0,
        py1 - py0,
        (px0 + px1) / 2.0,
        py1 + 36.0,
        escape(x_label),
        18.0,
        (py0 + py1) / 2.0,
        escape(y_label)
    );
}

/// Series `i`: a line (a dot for one point) and its legend entry.
fn draw_series(s: &mut String, f: &Frame, i: usize, series: &Series) {
    let line: Vec<(f64, f64)> = finite(&series.points)
        .map(|(x, y)| (f.sx(x), f.sy(y)))
        .collect();
    if let [(x, y)] = line.as_slice() {
        let _ = write!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#,
            series.color
        );
    } else if !line.is_empty() {
        let points: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            series.color,
            points.join(" ")
        );
    }
    let lx = f.px1 - 200.0;
    let ly = f.py0 + 16.0 + 16.0 * i as f64;
    let _ = write!(
        s,
        r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/><text x="{}" y="{ly}">{}</text>"#,
        ly - 4.0,
        lx + 20.0,
        ly - 4.0,
        series.color,
        lx + 26.0,
        escape(&series.name)
    );
}
