//! The `wqat` command line. Errors print as one line (no backtrace) and exit non-zero.

mod calibrate_cmd;
mod sensitivity_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use train_cmd::{train, TrainArgs};
use wqat::gpu::{list_adapters, GpuContext, GpuOptions};

#[derive(Parser)]
#[command(name = "wqat", version, about = "GPU-first quantization-aware training on wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its limits and optional features.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline: fp32 training, PTQ calibration, QAT fine-tuning, conversion, evaluation.
    Train(Box<TrainArgs>),
    /// Post-training quantization of a trained model (wqat checkpoint or PyTorch state_dict):
    /// observers on calibration images, fp32 and fake-quant accuracy, a checkpoint for `convert`.
    Calibrate(Box<calibrate_cmd::CalibrateArgs>),
    /// Per-layer sensitivity: accuracy and logit SQNR with one layer's weights at N bits, the
    /// rest 8-bit or fp32; with --auto-bits, per-layer bits for a budget.
    Sensitivity(Box<sensitivity_cmd::SensitivityArgs>),
    /// Convert a QAT (or PTQ) checkpoint into an integer model file.
    Convert {
        /// A wqat checkpoint (e.g. out/qat.safetensors).
        checkpoint: PathBuf,
        /// The integer model file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate an integer model (or a checkpoint, converted on the fly) on a test split.
    Eval {
        /// An integer model file or a wqat checkpoint.
        model: PathBuf,
        #[arg(long, default_value = "digits")]
        data: String,
        /// Tokens per text sequence (as `wqat train --max-len`); text data only. Default: the
        /// model's own encoding (24 for models without one).
        #[arg(long)]
        max_len: Option<usize>,
        /// gpu, cpu (SIMD) or cpu-scalar.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Per-layer fake-quant vs integer differences in LSB (needs the checkpoint: give it
        /// as MODEL, or the qat.safetensors next to the integer model is used).
        #[arg(long)]
        layers: bool,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Evaluate only the first N test images.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Write RUN_DIR/report.html and its PNGs: accuracy table, curves, activation histograms, SQNR, weight ranges.
    Report {
        /// The --out directory of a `wqat train` run.
        run_dir: PathBuf,
    },
    /// Export an integer model (or a checkpoint, converted on the fly) to ONNX (QDQ form).
    Export {
        /// An integer model file or a wqat checkpoint.
        model: PathBuf,
        /// The output format (onnx).
        #[arg(long, default_value = "onnx")]
        format: String,
        /// The file to write.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Benchmarks: fused vs unfused kernels, and fp32 vs QAT training throughput.
    Bench {
        /// Only the training-throughput part.
        #[arg(long)]
        train: bool,
        /// Only the kernel part.
        #[arg(long)]
        kernels: bool,
        /// The reduced shape set and short runs (about a minute on lavapipe).
        #[arg(long)]
        quick: bool,
        /// Kernel rows whose "name shape" contains one of these comma-separated substrings.
        #[arg(long)]
        filter: Option<String>,
        /// Timed runs (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        adapter: Option<String>,
        /// Training part: only these models (comma-separated zoo names).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Training part: measure every model at each of these batch sizes (comma-separated)
        /// instead of its default batch (JSON: `batch_sweep`).
        #[arg(long, value_delimiter = ',')]
        batches: Vec<usize>,
    },
    /// Classify image files (PNG/JPEG), or lines of text with a text model, with an integer model.
    Infer {
        /// An integer model file or a wqat checkpoint.
        model: PathBuf,
        /// Images to classify.
        #[arg(required_unless_present = "text")]
        images: Vec<PathBuf>,
        /// A line of text to classify (repeatable; models trained on a text folder).
        #[arg(long)]
        text: Vec<String>,
        /// gpu, cpu (SIMD) or cpu-scalar.
        #[arg(long, default_value = "cpu")]
        backend: String,
        #[arg(long)]
        adapter: Option<String>,
    },
}

/// Loads an integer model file, or converts a checkpoint; returns the checkpoint too when there is one.
fn load_int8(path: &std::path::Path) -> wqat::Result<(wqat::infer::Int8Model, Option<wqat::tensorfile::TensorFile>)> {
    let f = wqat::tensorfile::TensorFile::load(path)?;
    if f.metadata.get("format").map(String::as_str) == Some(wqat::engine::state::CHECKPOINT_FORMAT) {
        let graph = checkpoint_graph(path, &f)?;
        let m = wqat::convert::convert(&graph, &f)?;
        return Ok((m, Some(f)));
    }
    Ok((wqat::infer::Int8Model::from_tensor_file(path, &f)?, None))
}

fn checkpoint_graph(path: &std::path::Path, f: &wqat::tensorfile::TensorFile) -> wqat::Result<wqat::model::Graph> {
    let text = f.metadata.get("graph").ok_or_else(|| wqat::WqatError::format(path, "checkpoint has no graph"))?;
    let g: wqat::model::Graph =
        serde_json::from_str(text).map_err(|e| wqat::WqatError::format(path, format!("graph metadata: {e}")))?;
    g.resolve().map_err(|e| wqat::WqatError::format(path, e.to_string()))?;
    Ok(g)
}

fn backend(name: &str, adapter: Option<String>) -> wqat::Result<wqat::infer::eval::Backend> {
    use wqat::infer::eval::Backend;
    match name {
        "cpu" => Ok(Backend::Cpu),
        "cpu-scalar" => Ok(Backend::CpuScalar),
        "gpu" => {
            let mut opts = GpuOptions::from_env();
            if adapter.is_some() {
                opts.adapter = adapter;
            }
            Ok(Backend::Gpu(GpuContext::new(&opts)?))
        }
        other => Err(wqat::WqatError::invalid(format!("backend {other:?}: use gpu, cpu or cpu-scalar"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_cmd(
    train_only: bool,
    kernels_only: bool,
    quick: bool,
    filter: Option<String>,
    runs: usize,
    warmup: usize,
    json: bool,
    adapter: Option<String>,
    models: Vec<String>,
    batches: Vec<usize>,
) -> wqat::Result<()> {
    use wqat::engine::throughput::measure_train;
    for m in &models {
        if !wqat::model::zoo::MODEL_NAMES.contains(&m.as_str()) {
            return Err(wqat::WqatError::invalid(format!(
                "bench --models: unknown model {m:?} (known: {})",
                wqat::model::zoo::MODEL_NAMES.join(", ")
            )));
        }
    }
    if batches.contains(&0) {
        return Err(wqat::WqatError::invalid("bench --batches: batch sizes must be positive"));
    }
    let mut opts = GpuOptions::from_env();
    if adapter.is_some() {
        opts.adapter = adapter;
    }
    let ctx = GpuContext::new(&opts)?;
    let do_kernels = !train_only || kernels_only;
    let do_train = !kernels_only || train_only;
    let bopts = wqat::bench::BenchOptions { quick, filter, warmup, runs: runs.max(1) };
    let mut out = serde_json::json!({
        "adapter": format!("{} ({}, {})", ctx.summary.name, ctx.summary.backend, ctx.summary.driver_info),
    });
    if do_kernels {
        if !json {
            println!("{}", wqat::bench::describe(&ctx, &bopts));
        }
        let rows = wqat::bench::run_kernel_bench(&ctx, &bopts)?;
        if !json {
            wqat::bench::print_table(&rows);
        }
        out["kernels"] = serde_json::to_value(&rows).unwrap_or_default();
    }
    if do_train {
        // mnist-cnn at batch 64, resnet20 at batch 128 (quick: 16, fewer steps), the tiny
        // transformers at batch 64 (images / sequences per second).
        let plan: [(&str, usize, usize, usize); 4] = if quick {
            [("mnist-cnn", 64, 1, 2), ("resnet20", 16, 1, 1), ("vit-tiny", 64, 1, 2), ("text-tiny", 64, 1, 2)]
        } else {
            [("mnist-cnn", 64, 2, 5), ("resnet20", 128, 1, 2), ("vit-tiny", 64, 2, 5), ("text-tiny", 64, 2, 5)]
        };
        let mut train = serde_json::Map::new();
        if !json {
            println!("\ntraining throughput (median of {} runs after warm-up)", runs.max(1));
            println!(
                "{:<10} {:>6} {:>14} {:>14} {:>10} {:>10} {:>8}",
                "model", "batch", "fp32 img/s", "QAT img/s", "fp32 ms", "QAT ms", "QAT/fp32"
            );
        }
        let mut sweep = Vec::new();
        let wanted = |m: &str| models.is_empty() || models.iter().any(|x| x == m);
        let units: Vec<(&str, usize, usize, usize)> = plan
            .iter()
            .filter(|u| wanted(u.0))
            .flat_map(|&(m, b, w, st)| {
                if batches.is_empty() {
                    vec![(m, b, w, st)]
                } else {
                    // Same images per timed run at every batch (at least one step).
                    batches.iter().map(|&nb| (m, nb, w, (st * b).div_ceil(nb).max(1))).collect()
                }
            })
            .collect();
        for (model, batch, warm, steps) in units {
            let t = measure_train(&ctx, model, batch, warm, runs.max(1), steps)?;
            if !json {
                println!(
                    "{:<10} {:>6} {:>14.1} {:>14.1} {:>10.1} {:>10.1} {:>8.2}",
                    t.model,
                    t.batch,
                    t.fp32_images_per_s,
                    t.qat_images_per_s,
                    t.fp32_ms_per_step,
                    t.qat_ms_per_step,
                    t.qat_over_fp32
                );
            }
            if batches.is_empty() {
                train.insert(model.to_string(), serde_json::to_value(&t).unwrap_or_default());
            } else {
                sweep.push(serde_json::to_value(&t).unwrap_or_default());
            }
        }
        out["train"] = serde_json::Value::Object(train);
        if !batches.is_empty() {
            out["batch_sweep"] = serde_json::Value::Array(sweep);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}

fn convert_cmd(checkpoint: PathBuf, out: PathBuf) -> wqat::Result<()> {
    let f = wqat::tensorfile::TensorFile::load(&checkpoint)?;
    let graph = checkpoint_graph(&checkpoint, &f)?;
    let m = wqat::convert::convert(&graph, &f)?;
    m.save(&out)?;
    println!("wrote {} ({} layers, {} classes)", out.display(), m.nodes().len(), m.num_classes());
    print_model_size(&m, &out)?;
    Ok(())
}

/// `wqat convert`'s size line: the file, the integer weights (packed and one code per
/// byte), the other parameters, and the file with every weight code in a byte.
fn print_model_size(m: &wqat::infer::Int8Model, out: &std::path::Path) -> wqat::Result<()> {
    let disk = std::fs::metadata(out).map_err(|e| wqat::WqatError::io(out, e))?.len() as usize;
    let (_, int8_file) = m.file_sizes()?;
    let (packed, int8, other) = m.weight_bytes();
    let kib = |b: usize| b as f64 / 1024.0;
    println!(
        "model size: {:.1} KiB on disk ({disk} bytes); integer weights {:.1} KiB ({:.1} KiB at one code per byte), \
         other parameters {:.1} KiB; an all-int8 file: {:.1} KiB ({:.2}x)",
        kib(disk),
        kib(packed),
        kib(int8),
        kib(other),
        kib(int8_file),
        int8_file as f64 / disk.max(1) as f64
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval_cmd(
    model: PathBuf,
    data: String,
    max_len: Option<usize>,
    backend_name: String,
    layers: bool,
    batch: usize,
    limit: Option<usize>,
    json: bool,
    adapter: Option<String>,
) -> wqat::Result<()> {
    let (m, ckpt) = load_int8(&model)?;
    let max_len = max_len.or(m.text.map(|t| t.max_len)).unwrap_or(wqat::data::DEFAULT_MAX_LEN);
    let ds = wqat::data::load_with(&data, &wqat::data::LoadOptions { max_len })?;
    let test = match limit {
        Some(n) => ds.test.truncated(n),
        None => (*ds.test).clone(),
    };
    let b = backend(&backend_name, adapter)?;
    let t = std::time::Instant::now();
    let r = wqat::infer::eval::evaluate(&m, &b, &test, batch)?;
    let secs = t.elapsed().as_secs_f64();
    let mut report = serde_json::json!({
        "model": model.display().to_string(),
        "dataset": ds.name,
        "backend": backend_name,
        "accuracy": r.accuracy,
        "correct": r.correct,
        "total": r.total,
        "images_per_s": r.total as f64 / secs.max(1e-9),
    });
    if layers {
        let ckpt = match ckpt {
            Some(c) => c,
            None => {
                let p = model.with_file_name("qat.safetensors");
                wqat::tensorfile::TensorFile::load(&p)?
            }
        };
        let graph = checkpoint_graph(&model, &ckpt)?;
        let n = test.len().min(batch.max(1));
        let images = &test.images()[..n * test.image_len()];
        let diffs = wqat::infer::eval::layer_report(&graph, &ckpt, &m, images, n)?;
        let rows: Vec<serde_json::Value> = diffs
            .iter()
            .map(|d| {
                serde_json::json!({"layer": d.node, "max_abs_lsb": d.max_abs_lsb, "mean_abs_lsb": d.mean_abs_lsb,
                    "mismatched": d.mismatched, "total": d.total, "local_max_abs_lsb": d.local_max_abs_lsb})
            })
            .collect();
        if !json {
            println!(
                "{:<28} {:>10} {:>12} {:>12} {:>14}",
                "layer", "max LSB", "mean LSB", "mismatched", "local max LSB"
            );
            for d in &diffs {
                println!(
                    "{:<28} {:>10.3} {:>12.5} {:>6}/{:<6} {:>13.3}",
                    d.node, d.max_abs_lsb, d.mean_abs_lsb, d.mismatched, d.total, d.local_max_abs_lsb
                );
            }
        }
        report["layers"] = serde_json::Value::Array(rows);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!(
            "{}: accuracy {:.2}% ({}/{}) on {} with the {} backend, {:.0} images/s",
            model.display(),
            r.accuracy * 100.0,
            r.correct,
            r.total,
            ds.name,
            backend_name,
            r.total as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

fn export_cmd(model: PathBuf, format: String, out: PathBuf) -> wqat::Result<()> {
    let format: wqat::export::ExportFormat = format.parse()?;
    let (m, _) = load_int8(&model)?;
    wqat::export::export(&m, format, &out)?;
    println!(
        "wrote {} (ONNX opset {}, QDQ, {} layers, {} classes)",
        out.display(),
        wqat::export::onnx::OPSET,
        m.nodes().len(),
        m.num_classes()
    );
    Ok(())
}

fn infer_cmd(
    model: PathBuf,
    images: Vec<PathBuf>,
    text: Vec<String>,
    backend_name: String,
    adapter: Option<String>,
) -> wqat::Result<()> {
    let (m, _) = load_int8(&model)?;
    if !text.is_empty() || m.text.is_some() {
        let enc = m.text.ok_or_else(|| {
            wqat::WqatError::invalid(format!("{}: not a text model (it classifies images)", model.display()))
        })?;
        if !images.is_empty() {
            return Err(wqat::WqatError::invalid("a text model classifies --text lines, not image files"));
        }
        let b = backend(&backend_name, adapter)?;
        let gpu = gpu_model(&b, &m)?;
        for line in &text {
            let out = run_one(&b, gpu.as_ref(), &m, &enc.encode(line))?;
            print_prediction(&m, line, &out.logits, out.predictions[0]);
        }
        return Ok(());
    }
    let b = backend(&backend_name, adapter)?;
    let gpu = gpu_model(&b, &m)?;
    for path in images {
        let x = wqat::infer::eval::preprocess_image_file(&path, &m)?;
        let out = run_one(&b, gpu.as_ref(), &m, &x)?;
        print_prediction(&m, &path.display().to_string(), &out.logits, out.predictions[0]);
    }
    Ok(())
}

/// The GPU executor for single samples when the backend is the GPU.
fn gpu_model(
    b: &wqat::infer::eval::Backend,
    m: &wqat::infer::Int8Model,
) -> wqat::Result<Option<wqat::infer::Int8GpuModel>> {
    match b {
        wqat::infer::eval::Backend::Gpu(ctx) => Ok(Some(wqat::infer::Int8GpuModel::new(ctx, m, 1)?)),
        _ => Ok(None),
    }
}

/// One sample (an image or a line's token ids) on the chosen backend.
fn run_one(
    b: &wqat::infer::eval::Backend,
    gpu: Option<&wqat::infer::Int8GpuModel>,
    m: &wqat::infer::Int8Model,
    x: &[f32],
) -> wqat::Result<wqat::infer::Int8Output> {
    match (b, gpu) {
        (_, Some(g)) => g.forward(x, 1),
        (wqat::infer::eval::Backend::CpuScalar, _) => {
            wqat::infer::Int8CpuModel::new(m).forward(x, 1, wqat::infer::CpuBackend::Scalar)
        }
        _ => wqat::infer::Int8CpuModel::new(m).forward(x, 1, wqat::infer::CpuBackend::Simd),
    }
}

/// One line: what was classified, the class index and name, and its softmax score.
fn print_prediction(m: &wqat::infer::Int8Model, what: &str, logits: &[f32], k: usize) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let name = m.class_names().get(k).cloned().unwrap_or_else(|| k.to_string());
    println!("{what}: class {k} ({name}), score {:.4}", exps[k] / sum);
}

fn report_cmd(run_dir: PathBuf) -> wqat::Result<()> {
    let r = wqat::report::render(&run_dir)?;
    println!(
        "wrote {} ({} figures in {})",
        r.html.display(),
        r.images.len(),
        run_dir.join(wqat::report::REPORT_DIR).display()
    );
    Ok(())
}

fn devices(json: bool) -> wqat::Result<()> {
    let list = list_adapters();
    if list.is_empty() {
        return Err(wqat::WqatError::NoAdapter(String::new()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(());
    }
    let chosen = GpuContext::new(&GpuOptions::from_env()).ok().map(|c| c.summary.name.clone());
    for a in &list {
        let mark = if Some(&a.name) == chosen.as_ref() { "*" } else { " " };
        println!("{mark} {} [{} {}] driver: {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, max workgroup {:?} ({} invocations), {} workgroups/dim",
            a.max_buffer_size >> 20,
            a.max_storage_binding_size >> 20,
            a.max_workgroup_size,
            a.max_invocations_per_workgroup,
            a.max_workgroups_per_dimension
        );
        println!(
            "    SHADER_F16 {}  SUBGROUP {}  dot4I8Packed {}  timestamps {}",
            yes(a.shader_f16),
            yes(a.subgroup),
            yes(a.dot4_packed),
            yes(a.timestamp_query)
        );
    }
    println!("(* = the adapter wqat picks; choose another with --adapter NAME or WGPU_ADAPTER_NAME)");
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Devices { json }) => devices(json),
        Some(Command::Train(a)) => train(*a),
        Some(Command::Calibrate(a)) => calibrate_cmd::calibrate(*a),
        Some(Command::Sensitivity(a)) => sensitivity_cmd::sensitivity(*a),
        Some(Command::Convert { checkpoint, out }) => convert_cmd(checkpoint, out),
        Some(Command::Eval { model, data, max_len, backend, layers, batch, limit, json, adapter }) => {
            eval_cmd(model, data, max_len, backend, layers, batch, limit, json, adapter)
        }
        Some(Command::Infer { model, images, text, backend, adapter }) => {
            infer_cmd(model, images, text, backend, adapter)
        }
        Some(Command::Report { run_dir }) => report_cmd(run_dir),
        Some(Command::Export { model, format, out }) => export_cmd(model, format, out),
        Some(Command::Bench { train, kernels, quick, filter, runs, warmup, json, adapter, models, batches }) => {
            bench_cmd(train, kernels, quick, filter, runs, warmup, json, adapter, models, batches)
        }
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        let code = if matches!(e, wqat::WqatError::Interrupted(_)) { 130 } else { 1 };
        std::process::exit(code);
    }
}
