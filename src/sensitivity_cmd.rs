//! `wqat sensitivity`: each quantized layer's damage with only its weights at N bits (the
//! rest 8-bit or fp32), as a table sorted by damage or JSON; with `--auto-bits` also the
//! per-layer bits a budget allows, as `--layer-qconfig` flags for `wqat train`.

use crate::calibrate_cmd::check_checkpoint;
use crate::train_cmd::{base_config, gpu_context, DataArgs, QuantArgs};
use clap::Args;
use std::path::PathBuf;
use wqat::engine::sensitivity::{choose_bits, parse_bits, Budget, Rest, ScanOptions, SensitivityReport};
use wqat::engine::train::{TrainConfig, Trainer};

#[derive(Args)]
pub(crate) struct SensitivityArgs {
    /// The trained fp32 model: a wqat checkpoint or a PyTorch state_dict (safetensors).
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    quant: QuantArgs,
    /// Weight bit widths to try on each layer, e.g. `4` or `8,6,5,4,3,2`.
    #[arg(long, default_value = "4")]
    bits: String,
    /// The other layers' weights: `8` (int8) or `fp32`. Activations keep --act-bits.
    #[arg(long, default_value = "8")]
    rest: String,
    /// Evaluate each point on at most this many images of the validation split.
    #[arg(long, default_value_t = 2000)]
    scan_images: usize,
    /// Also choose per-layer bits (from --bits) for this budget: average weight bits (`5`)
    /// or packed weight size (`40KiB`).
    #[arg(long)]
    auto_bits: Option<String>,
    /// Print JSON (the whole scan, and the choice with --auto-bits) instead of tables.
    #[arg(long)]
    json: bool,
}

pub(crate) fn sensitivity(a: SensitivityArgs) -> wqat::Result<()> {
    let bits = parse_bits(&a.bits)?;
    let rest = Rest::parse(&a.rest)?;
    let budget = a.auto_bits.as_deref().map(Budget::parse).transpose()?;
    check_checkpoint(&a.checkpoint, &a.data.model)?;
    let base = base_config(&a.data, &a.quant)?;
    let cfg = TrainConfig {
        epochs: 0,
        qat_epochs: 0,
        init: Some(a.checkpoint.clone()),
        // Choices are made on held-out training images, never on the test split.
        val_split: base.val_split.or(Some(0.1)),
        ..base
    };
    let ctx = gpu_context(a.data.adapter.clone())?;
    let mut trainer = Trainer::new(ctx, cfg, None)?;
    let layers = trainer.scan_layers();
    if !a.json {
        println!(
            "wqat sensitivity: {} from {}, {} layers x {:?} bits, rest {}, A{}, adapter {}",
            trainer.graph.name,
            a.checkpoint.display(),
            layers.len(),
            bits,
            a.rest,
            trainer.cfg.act_bits,
            trainer.ctx.summary.name
        );
    }
    let json = a.json;
    let opts = ScanOptions { bits: bits.clone(), rest, images: a.scan_images };
    let report = trainer.sensitivity(&opts, &mut |p| {
        if !json {
            println!("  {:<24} w{} accuracy {:6.2}%  SQNR {:6.2} dB", p.layer, p.bits, p.accuracy * 100.0, p.sqnr_db);
        }
    })?;
    let choice = budget.map(|b| choose_bits(&report, &bits, b)).transpose()?;
    if a.json {
        let v = serde_json::json!({ "scan": &report, "choice": &choice });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| wqat::WqatError::invalid(e.to_string()))?);
        return Ok(());
    }
    print_tables(&report, &bits);
    if let Some(c) = choice {
        println!();
        println!(
            "  --auto-bits {}: average {:.2} weight bits, {:.1} KiB packed, predicted logit noise {:.3e}",
            c.budget, c.average_bits, c.packed_kib, c.predicted_noise
        );
        let flags: Vec<String> = c.layer_qconfigs().iter().map(|s| format!("--layer-qconfig {s}")).collect();
        println!("  {}", flags.join(" "));
    }
    Ok(())
}

fn print_tables(r: &SensitivityReport, bits: &[u32]) {
    println!();
    println!(
        "  {} split, {} images: fp32 {:.2}%, every layer at {} {:.2}% (SQNR {:.1} dB)",
        r.split,
        r.images,
        r.fp32_accuracy * 100.0,
        match r.rest {
            Rest::Int8 => "w8",
            Rest::Fp32 => "fp32 weights",
        },
        r.baseline_accuracy * 100.0,
        r.baseline_sqnr_db
    );
    for &b in bits {
        println!();
        println!("  w{b}, most damaging first:");
        println!("  {:<24} {:>9} {:>10} {:>10} {:>12}", "layer", "weights", "accuracy", "SQNR dB", "logit MSE");
        for p in r.ranked(b) {
            let w = r.layers.iter().find(|l| l.name == p.layer).map_or(0, |l| l.weights);
            println!(
                "  {:<24} {:>9} {:>9.2}% {:>10.2} {:>12.3e}",
                p.layer,
                w,
                p.accuracy * 100.0,
                p.sqnr_db,
                p.logit_noise
            );
        }
    }
}
