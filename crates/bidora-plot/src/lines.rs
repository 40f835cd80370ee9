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
    for series in &panel.series {
        draw_series(s, &f, series);
    }
    draw_legend(s, &f, &panel.series);
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

/// A series: a line (a dot for one point).
fn draw_series(s: &mut String, f: &Frame, series: &Series) {
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
}

/// Height of one legend entry and the legend's inner margin, in pixels.
const ENTRY_H: f64 = 16.0;
const LEGEND_PAD: f64 = 6.0;

/// A legend box, in pixels: left, top, width, height.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LegendBox {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl LegendBox {
    fn contains(&self, (x, y): (f64, f64)) -> bool {
        x >= self.x && x <= self.x + self.w && y >= self.y && y <= self.y + self.h
    }
}

/// The legend in the corner of the plot area that hides the fewest drawn points: top right,
/// top left, bottom right, bottom left, the first on a tie. A white backing keeps it readable
/// where every corner holds data.
fn draw_legend(s: &mut String, f: &Frame, series: &[Series]) {
    let longest = series.iter().map(|s| s.name.chars().count()).max();
    let Some(longest) = longest else { return };
    let b = legend_corner(f, series, longest);
    let _ = write!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
        b.x, b.y, b.w, b.h
    );
    for (i, series) in series.iter().enumerate() {
        let lx = b.x + LEGEND_PAD;
        let ly = b.y + LEGEND_PAD + ENTRY_H * (i as f64 + 1.0) - 4.0;
        let _ = write!(
            s,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 20.0,
            ly - 4.0,
            series.color,
            lx + 26.0,
            escape(&series.name)
        );
    }
}

/// The corner box for `series`' legend (entries of at most `longest` characters).
fn legend_corner(f: &Frame, series: &[Series], longest: usize) -> LegendBox {
    // About 7 px per character at font size 12.
    let w = 2.0 * LEGEND_PAD + 26.0 + 7.0 * longest as f64;
    let h = 2.0 * LEGEND_PAD + ENTRY_H * series.len() as f64;
    let m = 6.0;
    let (left, right) = (f.px0 + m, f.px1 - m - w);
    let (top, bottom) = (f.py0 + m, f.py1 - m - h);
    let drawn = drawn_points(f, series);
    [(right, top), (left, top), (right, bottom), (left, bottom)]
        .into_iter()
        .map(|(x, y)| LegendBox { x, y, w, h })
        .min_by_key(|b| drawn.iter().filter(|&&p| b.contains(p)).count())
        .expect("four corners")
}

/// The pixels the series' lines pass through, sampled about every 3 px along each segment.
fn drawn_points(f: &Frame, series: &[Series]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for series in series {
        let line: Vec<(f64, f64)> = finite(&series.points)
            .map(|(x, y)| (f.sx(x), f.sy(y)))
            .collect();
        out.extend(line.first());
        for pair in line.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            let n = ((x1 - x0).hypot(y1 - y0) / 3.0).ceil().max(1.0) as usize;
            out.extend((1..=n).map(|k| {
                let t = k as f64 / n as f64;
                (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            color: "#000",
        }
    }

    fn corner_of(points: Vec<(f64, f64)>) -> (bool, bool) {
        let series = [series("a", points)];
        let pts: Vec<_> = series[0].points.clone();
        let f = Frame::new(0.0, &pts);
        let b = legend_corner(&f, &series, 1);
        let mid_x = (f.px0 + f.px1) / 2.0;
        let mid_y = (f.py0 + f.py1) / 2.0;
        (b.x > mid_x, b.y < mid_y)
    }

    #[test]
    fn the_legend_avoids_the_lines() {
        // (right?, top?) of the chosen corner.
        // A rising line fills the top right and bottom left: top left is free.
        assert_eq!(corner_of(vec![(0.0, 0.0), (1.0, 1.0)]), (false, true));
        // A falling line (a loss) leaves the top right free, the first choice.
        assert_eq!(corner_of(vec![(0.0, 1.0), (1.0, 0.0)]), (true, true));
        // A line along the top: a bottom corner, right first.
        assert_eq!(
            corner_of(vec![(0.0, 0.0), (0.05, 1.0), (1.0, 1.0)]),
            (true, false)
        );
    }

    #[test]
    fn the_legend_box_fits_its_entries() {
        let series = [
            series("LoRA", vec![(0.0, 1.0), (1.0, 0.0)]),
            series("BiDoRA + retrain", vec![(0.0, 1.0), (1.0, 0.0)]),
        ];
        let f = Frame::new(0.0, &[(0.0, 0.0), (1.0, 1.0)]);
        let b = legend_corner(&f, &series, 16);
        assert_eq!(
            (b.w, b.h),
            (2.0 * 6.0 + 26.0 + 7.0 * 16.0, 2.0 * 6.0 + 32.0)
        );
        assert_eq!(b.x + b.w, f.px1 - 6.0);
        assert_eq!(b.y, f.py0 + 6.0);
    }
}
