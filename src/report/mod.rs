//! `wqat report RUN_DIR`: a readable HTML page (`RUN_DIR/report.html`) with PNG figures in
//! `RUN_DIR/report/` about what quantization did to a trained model: the accuracy table,
//! loss and accuracy curves per phase, activation histograms against their quantization
//! ranges with the clipped share, per-layer SQNR of fake-quant against fp32, and
//! per-channel weight ranges.
//!
//! The training run records what the report needs ([`sample::record_stage`] at the end of
//! PTQ calibration and of QAT writes `report/{ptq,qat}.json`; the loss history is
//! `metrics.json`'s `losses`); the report reads only the run directory (weight ranges are
//! recomputed from its checkpoints).

pub mod html;
pub mod plots;
pub mod run_dir;
pub mod sample;
pub mod stats;
pub mod weights;

pub use run_dir::{load, RunData};
pub use stats::{LayerStats, StageStats, REPORT_DIR};

use crate::error::Result;
use std::path::{Path, PathBuf};

/// Name of the page inside the run directory.
pub const HTML_FILE: &str = "report.html";

/// What [`render`] wrote.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub html: PathBuf,
    /// Every PNG, in page order.
    pub images: Vec<PathBuf>,
}

/// Reads the run directory and writes the page and its figures (each file atomically).
pub fn render(dir: &Path) -> Result<Rendered> {
    let data = load(dir)?;
    let mut figs = html::Figures::default();
    let write = |name: String, png: Vec<u8>| -> Result<String> {
        let rel = format!("{REPORT_DIR}/{name}");
        crate::tensorfile::write_atomic(&dir.join(&rel), &png)?;
        Ok(rel)
    };
    if !data.metrics.losses.is_empty() {
        figs.curves = Some(write("curves.png".into(), plots::curves(&data.metrics.losses)?)?);
    }
    for s in &data.stages {
        if s.layers.iter().any(|l| l.act.is_some()) {
            let p = write(format!("activations_{}.png", s.stage), plots::activation_grid(s)?)?;
            figs.activations.push((s.stage.clone(), p));
        }
    }
    if !data.stages.is_empty() {
        let stages: Vec<&StageStats> = data.stages.iter().collect();
        figs.sqnr = Some(write("sqnr.png".into(), plots::sqnr_chart(&stages)?)?);
    }
    for (stage, w) in &data.weights {
        if !w.is_empty() {
            let p = write(format!("weights_{stage}.png"), plots::weight_grid(w)?)?;
            figs.weights.push((stage.clone(), p));
        }
    }
    let page = html::page(&data, &figs);
    let html = dir.join(HTML_FILE);
    crate::tensorfile::write_atomic(&html, page.as_bytes())?;
    Ok(Rendered { html, images: figs.all().iter().map(|p| dir.join(p)).collect() })
}
