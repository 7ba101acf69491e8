//! Renders each chart kind to a PNG with the bundled font and checks the file: PNG signature,
//! IHDR width and height, and that it decodes to an image with drawn (non-white) pixels of
//! several colors. No system font is involved.

use std::path::Path;

use genarm_plot::{LabeledPoint, LineChart, PlotError, ScatterChart, Series};

/// Reads the PNG at `path`: checks the signature and IHDR by hand, then decodes it with the
/// `png` crate; returns (width, height, RGB pixels).
fn read_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is not IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "expected RGB(A), got {:?}", info.color_type);
    let px = buf[..info.buffer_size()].chunks(channels).map(|c| [c[0], c[1], c[2]]).collect();
    (w, h, px)
}

/// (pixels that are not white, distinct colors).
fn ink(px: &[[u8; 3]]) -> (usize, usize) {
    let drawn = px.iter().filter(|p| **p != [255, 255, 255]).count();
    let mut colors: Vec<[u8; 3]> = px.to_vec();
    colors.sort();
    colors.dedup();
    (drawn, colors.len())
}

#[test]
fn a_line_chart_with_error_bars_renders_a_nonblank_png_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("line.png");
    let chart = LineChart {
        title: "upbeat score vs weight".into(),
        x_label: "weight".into(),
        y_label: "mean score".into(),
        series: vec![
            Series {
                name: "ARM upbeat".into(),
                points: vec![(0.0, 0.1), (0.5, 0.3), (1.0, 0.5), (2.0, 0.7)],
                error_bars: Some(vec![(0.05, 0.15), (0.25, 0.35), (0.4, 0.6), (0.6, 0.8)]),
            },
            Series {
                name: "control".into(),
                points: vec![(0.0, 0.1), (0.5, 0.12), (1.0, 0.11), (2.0, 0.13)],
                error_bars: None,
            },
        ],
    };
    chart.render_png(&path, 640, 420).unwrap();
    let (w, h, px) = read_png(&path);
    assert_eq!((w, h), (640, 420));
    assert_eq!(px.len(), 640 * 420);
    let (drawn, colors) = ink(&px);
    println!("line chart: {drawn} drawn pixels, {colors} colors");
    // Axes, text, two colored series: far more than a few stray pixels, and anti-aliased text.
    assert!(drawn > 2_000, "only {drawn} non-white pixels");
    assert!(colors > 10, "only {colors} distinct colors");
    // The first series' color (Okabe–Ito blue) is present.
    assert!(px.contains(&[0, 114, 178]), "the first series' color is missing");
}

#[test]
fn a_pareto_scatter_renders_with_labels_and_the_front_highlighted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pareto.png");
    let points =
        [(0.1, 0.9, "a=0,b=2"), (0.5, 0.5, "a=1,b=1"), (0.3, 0.3, "a=0.5,b=0.5"), (0.9, 0.1, "a=2,b=0")]
            .iter()
            .map(|&(x, y, l)| LabeledPoint { x, y, label: l.into() })
            .collect();
    let chart =
        ScatterChart { title: "Pareto".into(), x_label: "upbeat".into(), y_label: "concise".into(), points };
    chart.render_png(&path, 500, 400).unwrap();
    let (w, h, px) = read_png(&path);
    assert_eq!((w, h), (500, 400));
    let (drawn, _) = ink(&px);
    assert!(drawn > 2_000, "only {drawn} non-white pixels");
    assert!(px.contains(&[213, 94, 0]), "the front's accent color is missing");
}

#[test]
fn bad_charts_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    let empty = LineChart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), series: vec![] };
    assert!(matches!(empty.render_png(&path, 640, 480), Err(PlotError::Empty { .. })));
    let mismatched = LineChart {
        series: vec![Series { name: "s".into(), points: vec![(0.0, 1.0)], error_bars: Some(vec![]) }],
        ..empty.clone()
    };
    let e = mismatched.render_png(&path, 640, 480).unwrap_err();
    assert!(e.to_string().contains("1 points but 0 error bars"), "{e}");
    let ok = LineChart {
        series: vec![Series { name: "s".into(), points: vec![(0.0, 1.0)], error_bars: None }],
        ..empty
    };
    assert!(matches!(ok.render_png(&path, 100, 100), Err(PlotError::TooSmall { .. })));
    assert!(!path.exists());
}
