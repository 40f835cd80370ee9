//! SVG charts of bidora runs, written by hand (axes, ticks, lines, bars, legends), so they need
//! no plotting library: [`lines`] draws the loss and metric curves of a run (`bidora train`'s
//! `curves.svg`), [`bars`] the results of a sweep with their spread (`cargo xtask results`).
//! Rendering to PNG is left to the caller (the CLI uses resvg).

pub mod bars;
pub mod lines;

pub use lines::{svg as line_chart, Panel, Series};

/// Round tick positions covering `[lo, hi]` with about `n` steps of 1, 2, 2.5 or 5 × 10^k.
pub(crate) fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

/// A tick label: whole steps below a million as they are (`1200`), short decimals, and
/// scientific notation with a trimmed mantissa for very large or small values (`2.5e-3`).
pub(crate) fn fmt_tick(v: f64) -> String {
    let trim = |s: String| s.trim_end_matches('0').trim_end_matches('.').to_string();
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 && v.abs() < 1e6 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').expect("`e` format has an exponent");
        format!("{}e{exp}", trim(mantissa.to_string()))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// Text escaped for SVG.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = nice_ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len());
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        // A span of 94 in about 8 steps: steps of 20 (10 would give 9 ticks, too many).
        assert_eq!(nice_ticks(3.0, 97.0, 8), vec![20.0, 40.0, 60.0, 80.0]);
    }

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 0.25, 47.5, 1200.0, -2000.0, 2.5e-3, 1e-3, 3e6, 1500.5]
            .into_iter()
            .map(fmt_tick)
            .collect();
        assert_eq!(
            labels,
            ["0", "0.25", "47.5", "1200", "-2000", "2.5e-3", "1e-3", "3e6", "1.5e3"]
        );
    }
}
