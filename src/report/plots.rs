//! The report's PNGs, drawn with `plotters` into an RGB buffer and encoded by `image`:
//! training curves, activation histograms against their quantization ranges, per-channel
//! weight ranges, per-layer SQNR. Text uses the embedded DejaVu Sans (plotters' pure-Rust
//! `ab_glyph` rasterizer), so no system font library is needed.

use super::stats::{LayerStats, StageStats};
use super::weights::WeightRanges;
use crate::engine::run::{LossPoint, Phase};
use crate::error::{Result, WqatError};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// DejaVu Sans 2.37 (assets/README.md: provenance and license).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

const FP32_COLOR: RGBColor = RGBColor(31, 119, 180);
const QAT_COLOR: RGBColor = RGBColor(255, 127, 14);
const RANGE_COLOR: RGBColor = RGBColor(214, 39, 40);
const BAR_COLOR: RGBColor = RGBColor(44, 110, 170);

/// Width of a grid cell and of single plots, in pixels.
const CELL_W: usize = 420;
const CELL_H: usize = 250;
const COLS: usize = 3;

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(WqatError::invalid("the embedded plot font could not be loaded"))
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> WqatError {
    WqatError::invalid(format!("drawing a plot: {e:?}"))
}

/// Draws into a white `w x h` canvas and returns the PNG bytes.
fn render(w: usize, h: usize, draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>) -> Result<Vec<u8>> {
    register_font()?;
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, buf)
        .ok_or_else(|| WqatError::invalid("plot buffer has the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| WqatError::invalid(format!("encoding a PNG: {e}")))?;
    Ok(png)
}

/// `[lo, hi]` widened by `frac` of its width (and to a non-empty interval).
fn padded(lo: f64, hi: f64, frac: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let w = hi - lo;
    if w <= 0.0 {
        let d = lo.abs().max(1.0) * 0.05;
        return lo - d..hi + d;
    }
    lo - frac * w..hi + frac * w
}

fn phase_style(p: Phase) -> (&'static str, RGBColor) {
    match p {
        Phase::Fp32 => ("fp32", FP32_COLOR),
        _ => ("QAT", QAT_COLOR),
    }
}

/// Loss (log scale) and accuracy against the training step, one colour per phase.
pub fn curves(points: &[LossPoint]) -> Result<Vec<u8>> {
    let (w, h) = (CELL_W * 2 + 60, CELL_H * 2 + 80);
    render(w, h, |root| {
        let panels = root.split_evenly((2, 1));
        let xmax = points.iter().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
        let phases = [Phase::Fp32, Phase::Qat];
        let series = |p: Phase, f: &dyn Fn(&LossPoint) -> f64| -> Vec<(f64, f64)> {
            points.iter().filter(|q| q.phase == p && f(q).is_finite()).map(|q| (q.step as f64, f(q))).collect()
        };
        // Loss, log scale.
        let losses: Vec<f64> = points.iter().map(|p| p.loss as f64).filter(|l| l.is_finite() && *l > 0.0).collect();
        let lmin = losses.iter().cloned().fold(f64::INFINITY, f64::min);
        let lmax = losses.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let (lmin, lmax) = if lmin.is_finite() { (lmin * 0.8, lmax * 1.25) } else { (0.01, 10.0) };
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("training loss (mean over each logging window)", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, (lmin..lmax).log_scale())
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc("step").y_desc("loss").label_style((FAMILY, 13)).draw().map_err(plot_err)?;
        for p in phases {
            let (name, color) = phase_style(p);
            let s: Vec<(f64, f64)> = series(p, &|q| q.loss as f64).into_iter().filter(|(_, l)| *l > 0.0).collect();
            if s.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(s, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        // Training accuracy, percent.
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("training accuracy (%, same windows)", (FAMILY, 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..100.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("accuracy %")
            .label_style((FAMILY, 13))
            .draw()
            .map_err(plot_err)?;
        for p in phases {
            let (name, color) = phase_style(p);
            let s = series(p, &|q| q.accuracy as f64 * 100.0);
            if s.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(s, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Rows of a grid holding `n` cells.
fn grid_rows(n: usize) -> usize {
    n.div_ceil(COLS).max(1)
}

/// One histogram per quantized layer (log counts), the quantization range between red
/// lines and the clipped region shaded.
pub fn activation_grid(stage: &StageStats) -> Result<Vec<u8>> {
    let layers: Vec<&LayerStats> = stage.layers.iter().filter(|l| l.act.is_some()).collect();
    let rows = grid_rows(layers.len());
    render(CELL_W * COLS, CELL_H * rows, |root| {
        let cells = root.split_evenly((rows, COLS));
        for (l, area) in layers.iter().zip(cells.iter()) {
            let Some(a) = &l.act else { continue };
            let n = a.counts.len().max(1);
            let (x0, x1) = (a.hist_lo as f64, a.hist_hi as f64);
            let bw = (x1 - x0) / n as f64;
            let cmax = a.counts.iter().cloned().max().unwrap_or(1).max(1) as f64;
            let title = format!("{} ({}-bit): {:.3}% clipped", l.name, a.bits, 100.0 * a.clipped_fraction(l.values));
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FAMILY, 15))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(45)
                .build_cartesian_2d(padded(x0, x1, 0.0), (0.5f64..cmax * 2.0).log_scale())
                .map_err(plot_err)?;
            chart.configure_mesh().x_labels(6).y_labels(4).label_style((FAMILY, 11)).draw().map_err(plot_err)?;
            let (lo, hi) = (a.range[0] as f64, a.range[1] as f64);
            let shade = RANGE_COLOR.mix(0.12).filled();
            if lo > x0 {
                chart.draw_series([Rectangle::new([(x0, 0.5), (lo, cmax * 2.0)], shade)]).map_err(plot_err)?;
            }
            if hi < x1 {
                chart.draw_series([Rectangle::new([(hi, 0.5), (x1, cmax * 2.0)], shade)]).map_err(plot_err)?;
            }
            chart
                .draw_series(a.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, &c)| {
                    let xa = x0 + k as f64 * bw;
                    Rectangle::new([(xa, 0.5), (xa + bw, c as f64)], BAR_COLOR.mix(0.8).filled())
                }))
                .map_err(plot_err)?;
            for x in [lo, hi] {
                chart
                    .draw_series([PathElement::new(vec![(x, 0.5), (x, cmax * 2.0)], RANGE_COLOR.stroke_width(2))])
                    .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

/// Per layer: each output channel's weight extremes (blue bar from min to max) and the
/// channel's representable range (red lines).
pub fn weight_grid(layers: &[WeightRanges]) -> Result<Vec<u8>> {
    let rows = grid_rows(layers.len());
    render(CELL_W * COLS, CELL_H * rows, |root| {
        let cells = root.split_evenly((rows, COLS));
        for (l, area) in layers.iter().zip(cells.iter()) {
            let c = l.min.len().max(1);
            let lo = l.min.iter().chain(&l.lo).cloned().fold(f32::INFINITY, f32::min) as f64;
            let hi = l.max.iter().chain(&l.hi).cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let clipped = 100.0 * l.clipped as f64 / l.values.max(1) as f64;
            let kind = if l.per_channel { "per channel" } else { "per tensor" };
            let title = format!("{} ({}-bit, {kind}): {:.3}% clipped", l.layer, l.bits, clipped);
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FAMILY, 15))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(55)
                .build_cartesian_2d(-0.5f64..c as f64 - 0.5, padded(lo, hi, 0.05))
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_labels(6)
                .y_labels(5)
                .x_desc("output channel")
                .label_style((FAMILY, 11))
                .draw()
                .map_err(plot_err)?;
            let half = if c > 200 { 0.5 } else { 0.35 };
            chart
                .draw_series(l.min.iter().zip(&l.max).enumerate().map(|(k, (&a, &b))| {
                    let x = k as f64;
                    Rectangle::new([(x - half, a as f64), (x + half, b as f64)], BAR_COLOR.mix(0.8).filled())
                }))
                .map_err(plot_err)?;
            for edge in [&l.lo, &l.hi] {
                let pts: Vec<(f64, f64)> = edge
                    .iter()
                    .enumerate()
                    .flat_map(|(k, &v)| [(k as f64 - 0.5, v as f64), (k as f64 + 0.5, v as f64)])
                    .collect();
                chart.draw_series(LineSeries::new(pts, RANGE_COLOR.stroke_width(2))).map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

/// Horizontal bars: per layer, the SQNR (dB) of each stage's fake-quant output against the
/// fp32 forward; exact layers (infinite SQNR) are drawn to the right edge.
pub fn sqnr_chart(stages: &[&StageStats]) -> Result<Vec<u8>> {
    let names: Vec<String> = stages
        .iter()
        .max_by_key(|s| s.layers.len())
        .map(|s| s.layers.iter().map(|l| l.name.clone()).collect())
        .unwrap_or_default();
    let n = names.len().max(1);
    let label_w = names.iter().map(|s| s.chars().count()).max().unwrap_or(4) * 8 + 30;
    let h = 90 + 26 * n;
    let w = CELL_W * 2 + label_w;
    let finite: Vec<f64> = stages.iter().flat_map(|s| s.layers.iter().filter_map(LayerStats::sqnr_db)).collect();
    let xmax = finite.iter().cloned().fold(10.0f64, f64::max) * 1.15;
    let xmin = finite.iter().cloned().fold(0.0f64, f64::min);
    render(w, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("SQNR of fake-quant vs fp32 per layer (dB, higher is closer)", (FAMILY, 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(label_w as u32)
            .build_cartesian_2d(xmin..xmax, 0f64..n as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("SQNR (dB)")
            .label_style((FAMILY, 12))
            .draw()
            .map_err(plot_err)?;
        let colors = [FP32_COLOR, QAT_COLOR];
        let band = 0.8 / stages.len().max(1) as f64;
        for (si, s) in stages.iter().enumerate() {
            let color = colors[si % colors.len()];
            let bars: Vec<Rectangle<(f64, f64)>> = s
                .layers
                .iter()
                .filter_map(|l| names.iter().position(|x| *x == l.name).map(|k| (k, l)))
                .filter(|(_, l)| l.signal > 0.0)
                .map(|(k, l)| {
                    let v = l.sqnr_db().unwrap_or(xmax);
                    let top = (n - k) as f64 - 0.1 - si as f64 * band;
                    Rectangle::new([(xmin, top - band), (v, top)], color.mix(0.85).filled())
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(s.stage.to_uppercase())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        // Layer names left of the plotting area, centred on their bars.
        let style = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (k, name) in names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(xmin, (n - k) as f64 - 0.5));
            root.draw(&Text::new(name.clone(), (x - 6, y), style.clone())).map_err(plot_err)?;
        }
        Ok(())
    })
}
