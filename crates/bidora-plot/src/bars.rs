//! Bar charts: one panel per task, one bar per variant (mean ± standard deviation over seeds,
//! in percent), and a dashed line at the untrained model's score.

use std::fmt::Write;

/// The ten bar colours, in variant order.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#d62728",
];
const PANEL_H: f64 = 220.0;
const PAD: f64 = 40.0;

/// One bar: a label and, when the cell has runs, its mean and standard deviation.
pub struct Bar {
    /// Label under the bar (γ is spelled `gamma`: not every PNG renderer's font has it).
    pub label: String,
    /// `(mean, standard deviation)`, in the chart's unit; `None` draws no bar.
    pub stats: Option<(f64, f64)>,
}

/// One panel: a title, its bars and an optional dashed baseline.
pub struct BarPanel {
    /// Title above the panel.
    pub title: String,
    /// The untrained model's score, drawn dashed and named in the title.
    pub baseline: Option<f64>,
    /// Bars, left to right.
    pub bars: Vec<Bar>,
}

/// A panel is as wide as its bars need.
fn panel_width(n: usize) -> f64 {
    (45.0 * (n as f64 + 1.0)).max(200.0)
}

/// The SVG document of `panels` side by side; the bottom margin holds the longest slanted
/// label.
pub fn svg(panels: &[BarPanel]) -> String {
    let longest = panels
        .iter()
        .flat_map(|p| p.bars.iter().map(|b| b.label.chars().count()))
        .max()
        .unwrap_or(0) as f64;
    let width = PAD
        + panels
            .iter()
            .map(|p| panel_width(p.bars.len()) + PAD)
            .sum::<f64>();
    let height = PANEL_H + 2.0 * PAD + 20.0 + longest * 6.0 * 0.6;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut x0 = PAD;
    for panel in panels {
        draw_panel(&mut s, panel, x0);
        x0 += panel_width(panel.bars.len()) + PAD;
    }
    s.push_str("</svg>\n");
    s
}

/// The y range: round multiples of 10 around the bars' spread and the baseline, with ticks
/// every 10 (20 on tall ranges).
fn y_range(panel: &BarPanel) -> (f64, f64, f64) {
    let spread = || panel.bars.iter().filter_map(|b| b.stats);
    let top = spread()
        .map(|(m, s)| m + s)
        .chain(panel.baseline)
        .fold(0.0_f64, f64::max);
    let bottom = spread()
        .map(|(m, s)| m - s)
        .chain(panel.baseline)
        .fold(0.0_f64, f64::min);
    let top = if top <= bottom {
        bottom + 10.0
    } else {
        (top / 10.0).ceil() * 10.0
    };
    let bottom = (bottom / 10.0).floor() * 10.0;
    let step = if top - bottom > 50.0 { 20.0 } else { 10.0 };
    (bottom, top, step)
}

fn draw_panel(s: &mut String, panel: &BarPanel, x0: f64) {
    let pw = panel_width(panel.bars.len());
    let y0 = PAD;
    let (bottom, top, step) = y_range(panel);
    let y = |v: f64| y0 + PANEL_H * (top - v) / (top - bottom);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}<tspan fill="#666" font-size="10">{}</tspan></text>"##,
        x0 + pw / 2.0,
        y0 - 12.0,
        panel.title,
        panel.baseline.map_or(String::new(), |b| format!(
            "\u{a0}\u{a0}(dashed: untrained {b:.1})"
        ))
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#,
        y(0.0),
        x0 + pw,
        y(0.0),
        y0 + PANEL_H
    );
    let ticks = (0..)
        .map(|k| bottom + step * k as f64)
        .take_while(|t| *t <= top + 1e-9);
    for tick in ticks {
        if tick > bottom {
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{yt}" x2="{}" y2="{yt}" stroke="#ddd"/>"##,
                x0 + pw,
                yt = y(tick)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{tick:.0}</text>"#,
            x0 - 4.0,
            y(tick) + 4.0
        );
    }
    let bw = pw / (panel.bars.len() as f64 + 1.0);
    for (j, bar) in panel.bars.iter().enumerate() {
        let cx = x0 + bw * (j as f64 + 1.0);
        let color = COLORS[j % COLORS.len()];
        if let Some((m, sd)) = bar.stats {
            let (ya, yb) = (y(m.max(0.0)), y(m.min(0.0)));
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{ya}" width="{}" height="{}" fill="{color}"/>"#,
                cx - bw * 0.35,
                bw * 0.7,
                (yb - ya).max(0.5)
            );
            let _ = writeln!(
                s,
                r#"<line x1="{cx}" y1="{}" x2="{cx}" y2="{}" stroke="black"/><text x="{cx}" y="{}" text-anchor="middle">{m:.1}</text>"#,
                y(m + sd),
                y(m - sd),
                y(m + sd) - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate({cx},{}) rotate(35)" font-size="10">{}</text>"#,
            y0 + PANEL_H + 12.0,
            bar.label.replace('γ', "gamma")
        );
    }
    if let Some(b) = panel.baseline {
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{yb}" x2="{}" y2="{yb}" stroke="#888" stroke-dasharray="4 3"/>"##,
            x0 + pw,
            yb = y(b)
        );
    }
}
