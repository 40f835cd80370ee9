//! The run's curves: SVG from `bidora-plot`, and PNG (the SVG rendered with resvg).

pub use bidora_plot::{line_chart as svg, Panel, Series};

/// Renders an SVG document to PNG bytes (system fonts for the text).
pub fn png(svg: &str) -> anyhow::Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt)?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow::anyhow!("empty image"))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    Ok(pixmap.encode_png()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_line_per_series_and_renders_to_png() {
        let panel = Panel {
            title: "loss".into(),
            y_label: "loss".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)],
                    color: "#1f77b4",
                },
                Series {
                    name: "val <upper>".into(),
                    points: vec![(1.0, f64::NAN), (2.0, 1.5)],
                    color: "#d62728",
                },
            ],
        };
        let doc = svg(&[panel]);
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert_eq!(doc.matches("<circle").count(), 1);
        assert!(doc.contains("val &lt;upper&gt;"));
        let png = png(&doc).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
