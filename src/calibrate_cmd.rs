//! `wqat calibrate`: post-training quantization of a trained model (a wqat checkpoint or a
//! PyTorch state_dict in safetensors), with the data, model and quantization flags of
//! `wqat train` (shared argument structs), and a closing fp32 / PTQ (/ int8) table.

use crate::train_cmd::{base_config, gpu_context, DataArgs, QuantArgs};
use clap::Args;
use std::path::PathBuf;
use wqat::engine::train::{ProgressSink, TrainConfig, Trainer};

#[derive(Args)]
pub(crate) struct CalibrateArgs {
    /// The trained model: a wqat checkpoint or a PyTorch state_dict (safetensors, torchvision names).
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Output directory: ptq.safetensors (for `wqat convert`), metrics.json.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Skip the fp32 evaluation (metrics.json then has no fp32_acc).
    #[arg(long)]
    skip_fp32_eval: bool,
    /// Also convert to OUT/model.int8.safetensors and evaluate it on the CPU integer backend.
    #[arg(long)]
    convert: bool,
}

struct Lines;
impl ProgressSink for Lines {
    fn message(&mut self, m: &str) {
        println!("{m}");
    }
}

fn pct(x: Option<f32>) -> String {
    x.map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_else(|| "-".into())
}

pub(crate) fn calibrate(a: CalibrateArgs) -> wqat::Result<()> {
    check_checkpoint(&a.checkpoint, &a.data.model)?;
    let cfg = TrainConfig {
        epochs: 0,
        qat_epochs: 0,
        init: Some(a.checkpoint.clone()),
        out: a.out.clone(),
        ..base_config(&a.data, &a.quant)?
    };
    let ctx = gpu_context(a.data.adapter.clone())?;
    let mut trainer = Trainer::new(ctx, cfg, None)?;
    let q = &trainer.state.qconfig;
    println!(
        "wqat calibrate: {} from {} on {} ({} calibration images of the training split), adapter {}",
        trainer.graph.name,
        a.checkpoint.display(),
        trainer.ds.name,
        a.quant.calib_images,
        trainer.ctx.summary.name
    );
    let note = match q.observer {
        wqat::engine::ObserverKind::MovingAverage { .. } => " (calibration takes the running min/max)",
        _ => "",
    };
    println!("quantization: W{}A{}, observer {}{note}", q.weight.bits, q.activation.bits, q.observer);
    for l in &q.layers {
        println!("  layer override {l}");
    }
    let (r, times) = trainer.calibrate_only(!a.skip_fp32_eval, a.convert, &mut Lines)?;
    println!();
    match &r.val {
        None => {
            println!("  {:<6} {:>9}", "stage", "test");
            for (s, acc) in [("fp32", r.fp32_acc), ("PTQ", r.ptq_acc), ("int8", r.int8_acc)] {
                println!("  {s:<6} {:>9}", pct(acc));
            }
        }
        Some(v) => {
            println!("  {:<6} {:>11} {:>9}", "stage", "validation", "test");
            for (s, val, test) in
                [("fp32", v.fp32_acc, r.fp32_acc), ("PTQ", v.ptq_acc, r.ptq_acc), ("int8", v.int8_acc, r.int8_acc)]
            {
                println!("  {s:<6} {:>11} {:>9}", pct(val), pct(test));
            }
        }
    }
    if let Some(ag) = r.agreement {
        println!("  fake-quant/int8 agreement {:.2}%", ag * 100.0);
    }
    println!(
        "  time: fp32 eval {:.1} s, calibration + fake-quant eval {:.1} s{}",
        times.fp32_eval,
        times.calibrate_and_eval,
        if a.convert {
            format!(", conversion + int8 eval {:.1} s", times.convert_and_int8_eval)
        } else {
            String::new()
        }
    );
    println!(
        "  wrote {} and {}",
        a.out.join(wqat::engine::calibrate::PTQ_FILE).display(),
        a.out.join("metrics.json").display()
    );
    Ok(())
}

/// A trained model file for `--model`: it exists, and a wqat checkpoint names the same model
/// (a different `--model` is a clear error, not a list of mis-shaped tensors).
pub(crate) fn check_checkpoint(path: &std::path::Path, model: &str) -> wqat::Result<()> {
    if !path.is_file() {
        return Err(wqat::WqatError::invalid(format!("checkpoint {} does not exist", path.display())));
    }
    let f = wqat::tensorfile::TensorFile::load(path)?;
    if f.metadata.get("format").map(String::as_str) == Some(wqat::engine::state::CHECKPOINT_FORMAT) {
        let name = f
            .metadata
            .get("graph")
            .and_then(|g| serde_json::from_str::<serde_json::Value>(g).ok())
            .and_then(|g| g["name"].as_str().map(str::to_string));
        if let Some(name) = name.filter(|n| n != model && !model.ends_with(".json")) {
            return Err(wqat::WqatError::invalid(format!(
                "{} holds a {name} model, not --model {model} (pass --model {name})",
                path.display()
            )));
        }
    }
    Ok(())
}
