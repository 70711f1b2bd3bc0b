//! Reading a training run's directory for the report: `metrics.json` (accuracies, the
//! loss/accuracy history `losses`, the configuration), `report/{ptq,qat}.json` (activation
//! statistics sampled by the run) and the weight ranges of `ptq.safetensors` /
//! `qat.safetensors`. What a run lacks (an older run without report data, a run without a
//! PTQ checkpoint) becomes a note on the page; what is present but unreadable is an error.

use super::stats::{StageStats, REPORT_DIR};
use super::weights::{weight_ranges, WeightRanges};
use crate::engine::run::RunReport;
use crate::error::{Result, WqatError};
use crate::tensorfile::TensorFile;
use std::path::{Path, PathBuf};

/// The stages a run samples, in order, with the checkpoint holding each one's weights.
pub const STAGES: [(&str, &str); 2] = [("ptq", "ptq.safetensors"), ("qat", "qat.safetensors")];

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    pub metrics: RunReport,
    /// Activation statistics per stage that the run recorded.
    pub stages: Vec<StageStats>,
    /// Weight ranges per stage whose checkpoint is present: (stage, layers).
    pub weights: Vec<(String, Vec<WeightRanges>)>,
    /// What is missing, one sentence each.
    pub notes: Vec<String>,
}

/// Loads a run directory.
pub fn load(dir: &Path) -> Result<RunData> {
    if !dir.is_dir() {
        return Err(WqatError::invalid(format!(
            "{}: not a directory (give the --out directory of a `wqat train` run)",
            dir.display()
        )));
    }
    let mpath = dir.join("metrics.json");
    if !mpath.is_file() {
        return Err(WqatError::invalid(format!(
            "{}: no metrics.json, not a finished `wqat train` run directory",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&mpath).map_err(|e| WqatError::io(&mpath, e))?;
    let metrics: RunReport =
        serde_json::from_str(&text).map_err(|e| WqatError::format(&mpath, format!("not a wqat metrics.json: {e}")))?;
    let mut notes = Vec::new();
    let mut stages = Vec::new();
    let mut weights = Vec::new();
    for (stage, ckpt) in STAGES {
        let spath = dir.join(REPORT_DIR).join(format!("{stage}.json"));
        if spath.is_file() {
            let text = std::fs::read_to_string(&spath).map_err(|e| WqatError::io(&spath, e))?;
            let s: StageStats = serde_json::from_str(&text)
                .map_err(|e| WqatError::format(&spath, format!("not wqat report data: {e}")))?;
            stages.push(s);
        } else {
            notes.push(format!(
                "No activation statistics for {} ({REPORT_DIR}/{stage}.json is missing: the run predates them or \
                 did not reach that stage).",
                stage.to_uppercase()
            ));
        }
        let cpath = dir.join(ckpt);
        if cpath.is_file() {
            let f = TensorFile::load(&cpath)?;
            weights.push((stage.to_string(), weight_ranges(&cpath, &f)?));
        } else {
            notes.push(format!("No {ckpt} in the run directory: no {} weight ranges.", stage.to_uppercase()));
        }
    }
    if metrics.losses.is_empty() {
        notes.push("metrics.json has no loss readings (no training steps).".to_string());
    }
    Ok(RunData { dir: dir.to_path_buf(), metrics, stages, weights, notes })
}
