//! PNG charts for `genarm eval` and `genarm bench`: a line chart with markers, a legend and
//! optional error bars ([`LineChart`]), and a labeled scatter with its Pareto front highlighted
//! ([`ScatterChart`]). Text is drawn with a bundled DejaVu Sans (`fonts/`), so rendering needs no
//! system font or fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// The bundled font (DejaVu Sans 2.37, Bitstream Vera license: `fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// A chart that could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The chart has nothing to draw.
    #[error("chart {title:?} has no finite data points to draw; give it at least one series with a point")]
    Empty {
        /// The chart's title.
        title: String,
    },
    /// A series' error bars do not match its points.
    #[error(
        "series {series:?} has {points} points but {bars} error bars; give one (low, high) pair per point"
    )]
    ErrorBarCount {
        /// The series' name.
        series: String,
        /// Its points.
        points: usize,
        /// Its error bars.
        bars: usize,
    },
    /// The size is too small to lay out axes, labels and a legend.
    #[error("a {width}x{height} chart is too small; use at least 200x150 pixels")]
    TooSmall {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// The bundled font could not be registered (a corrupt build).
    #[error("the bundled font fonts/DejaVuSans.ttf could not be parsed; rebuild genarm-plot from a clean checkout")]
    Font,
    /// Drawing or writing the PNG failed.
    #[error("rendering {path}: {message} (is the directory writable?)")]
    Render {
        /// The output path.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, PlotError>;

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its legend entry.
    pub name: String,
    /// `(x, y)` points, drawn in the order given, joined by a line, each with a marker.
    pub points: Vec<(f64, f64)>,
    /// Optional `(low, high)` interval of y for each point (e.g. a 95% CI), drawn as a vertical bar.
    pub error_bars: Option<Vec<(f64, f64)>>,
}

/// A line chart: several series with markers, a legend, optional vertical error bars.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

/// One point of a [`ScatterChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledPoint {
    /// X value.
    pub x: f64,
    /// Y value.
    pub y: f64,
    /// Text drawn next to the point (e.g. its weights).
    pub label: String,
}

/// A scatter of labeled points with the Pareto front (both coordinates maximized) highlighted
/// and joined by a line.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The points.
    pub points: Vec<LabeledPoint>,
}

/// The line colors, in series order (colorblind-friendly Okabe–Ito palette).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Registers the bundled font as plotters' `sans-serif` family (once per process).
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font("sans-serif", FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Indices of the points on the Pareto front when both coordinates are maximized: no other
/// point is ≥ in both and > in one. Sorted by x ascending. Non-finite points are never on it.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| {
            let (xi, yi) = points[i];
            !points.iter().any(|q| finite(q) && q.0 >= xi && q.1 >= yi && (q.0 > xi || q.1 > yi))
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(points[a].1.total_cmp(&points[b].1)));
    front
}

/// A padded axis range covering `values` (finite ones); a single value gets ±0.5 (or ±5%).
fn axis_range(values: impl Iterator<Item = f64>) -> Option<std::ops::Range<f64>> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    let span = hi - lo;
    let pad = if span > 0.0 { span * 0.08 } else { (lo.abs() * 0.05).max(0.5) };
    Some(lo - pad..hi + pad)
}

/// The chart every plot draws on: the title above, labeled axes and a light grid, over
/// `x_range` × `y_range` of `root` (rendering `path`, for errors).
fn titled_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    path: &Path,
    [title, x_label, y_label]: [&str; 3],
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
) -> Result<ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let err = |e: &dyn std::fmt::Display| render_err(path, e);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(chart)
}

fn render_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Render { path: path.to_path_buf(), message: e.to_string() }
}

/// Makes a white canvas of the requested size after the common checks.
fn canvas(path: &Path, width: u32, height: u32) -> Result<DrawingArea<BitMapBackend<'_>, Shift>> {
    if width < 200 || height < 150 {
        return Err(PlotError::TooSmall { width, height });
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| render_err(path, e))?;
    Ok(root)
}

impl LineChart {
    /// Renders the chart to a PNG file at `path`, `width`×`height` pixels.
    pub fn render_png(&self, path: &Path, width: u32, height: u32) -> Result<()> {
        for s in &self.series {
            if let Some(bars) = &s.error_bars {
                if bars.len() != s.points.len() {
                    return Err(PlotError::ErrorBarCount {
                        series: s.name.clone(),
                        points: s.points.len(),
                        bars: bars.len(),
                    });
                }
            }
        }
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = self.series.iter().flat_map(|s| {
            s.points.iter().map(|p| p.1).chain(
                s.error_bars.iter().flat_map(|b| b.iter().flat_map(|&(lo, hi)| [lo, hi])).collect::<Vec<_>>(),
            )
        });
        let empty = || PlotError::Empty { title: self.title.clone() };
        let x_range = axis_range(xs).ok_or_else(empty)?;
        let y_range = axis_range(ys).ok_or_else(empty)?;
        let root = canvas(path, width, height)?;
        let err = |e: &dyn std::fmt::Display| render_err(path, e);
        let mut chart =
            titled_chart(&root, path, [&self.title, &self.x_label, &self.y_label], x_range, y_range)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(-8, 0), (12, 0)], color.stroke_width(2))
                        + Circle::new((2, 0), 4, color.filled())
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| err(&e))?;
            if let Some(bars) = &s.error_bars {
                let mut elems = Vec::new();
                for (&(x, _), &(lo, hi)) in s.points.iter().zip(bars) {
                    if !(x.is_finite() && lo.is_finite() && hi.is_finite()) {
                        continue;
                    }
                    elems.push(PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(1)));
                }
                chart.draw_series(elems).map_err(|e| err(&e))?;
                // Caps: short horizontal ticks in pixel space at both ends.
                let caps = s
                    .points
                    .iter()
                    .zip(bars)
                    .filter(|(p, b)| p.0.is_finite() && b.0.is_finite() && b.1.is_finite())
                    .flat_map(|(&(x, _), &(lo, hi))| {
                        [lo, hi].map(|y| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(-5, 0), (5, 0)], color.stroke_width(1))
                        })
                    });
                chart.draw_series(caps).map_err(|e| err(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

impl ScatterChart {
    /// Renders the scatter to a PNG file at `path`, `width`×`height` pixels: every point as a gray
    /// marker with its label, the Pareto front (see [`pareto_front`]) as larger colored markers
    /// joined by a line, and a legend.
    pub fn render_png(&self, path: &Path, width: u32, height: u32) -> Result<()> {
        let empty = || PlotError::Empty { title: self.title.clone() };
        let x_range = axis_range(self.points.iter().map(|p| p.x)).ok_or_else(empty)?;
        let y_range = axis_range(self.points.iter().map(|p| p.y)).ok_or_else(empty)?;
        // Room on the right for labels.
        let x_range = x_range.start..x_range.end + (x_range.end - x_range.start) * 0.15;
        let root = canvas(path, width, height)?;
        let err = |e: &dyn std::fmt::Display| render_err(path, e);
        let mut chart =
            titled_chart(&root, path, [&self.title, &self.x_label, &self.y_label], x_range, y_range)?;
        let xy: Vec<(f64, f64)> = self.points.iter().map(|p| (p.x, p.y)).collect();
        let front = pareto_front(&xy);
        let gray = RGBColor(120, 120, 120);
        let accent = PALETTE[1];
        let finite: Vec<&LabeledPoint> =
            self.points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()).collect();
        chart
            .draw_series(finite.iter().map(|p| Circle::new((p.x, p.y), 4, gray.filled())))
            .map_err(|e| err(&e))?
            .label("weight combination")
            .legend(move |(x, y)| Circle::new((x + 2, y), 4, gray.filled()));
        chart
            .draw_series(LineSeries::new(front.iter().map(|&i| xy[i]), accent.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("Pareto front")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-8, 0), (12, 0)], accent.stroke_width(2))
                    + Circle::new((2, 0), 6, accent.filled())
            });
        chart
            .draw_series(front.iter().map(|&i| Circle::new(xy[i], 6, accent.filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(finite.iter().map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Text::new(p.label.clone(), (7, -14), ("sans-serif", 12).into_font())
            }))
            .map_err(|e| err(&e))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_exactly_the_undominated_points() {
        let pts = [(0.0, 1.0), (1.0, 0.0), (0.5, 0.5), (0.4, 0.4), (1.0, 0.0), (f64::NAN, 9.0)];
        // (0.4, 0.4) is dominated by (0.5, 0.5); the duplicate (1, 0) is not strictly dominated.
        assert_eq!(pareto_front(&pts), vec![0, 2, 1, 4]);
        assert_eq!(pareto_front(&[]), Vec::<usize>::new());
    }

    #[test]
    fn axis_ranges_cover_the_data_and_survive_a_single_value() {
        let r = axis_range([1.0, 3.0, f64::NAN].into_iter()).unwrap();
        assert!(r.start < 1.0 && r.end > 3.0);
        let r = axis_range([2.0].into_iter()).unwrap();
        assert!(r.start < 2.0 && r.end > 2.0);
        assert!(axis_range([f64::INFINITY].into_iter()).is_none());
    }
}
