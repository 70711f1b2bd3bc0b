//! `wqat report`: a short digits run records its report data, the CLI renders the page, every
//! PNG decodes and is not blank, every image the HTML references exists; a missing or
//! corrupt run directory gives one clear error line (no panic).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use wqat::engine::train::{Quiet, TrainConfig, Trainer};
use wqat::report::StageStats;
use wqat::testing;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn wqat(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wqat")).args(args).env("RUST_BACKTRACE", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn expect_clean_error(dir: &Path, must_mention: &str) {
    let (code, text) = wqat(&["report", dir.to_str().unwrap()]);
    assert_ne!(code, 0, "report of {} succeeded:\n{text}", dir.display());
    assert!(!text.contains("panicked at") && !text.contains("stack backtrace"), "panicked:\n{text}");
    let errs: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errs.len(), 1, "expected one error line:\n{text}");
    assert!(errs[0].contains(must_mention), "error should mention {must_mention:?}:\n{text}");
}

/// The `src="..."` attributes of a page.
fn image_sources(html: &str) -> Vec<String> {
    html.split("src=\"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_string).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn short_digits_run_renders_a_readable_report() {
    let ctx = testing::ctx();
    let out = tmp("run");
    let cfg = TrainConfig {
        epochs: 2,
        qat_epochs: 1,
        batch: 32,
        limit_train: Some(320),
        limit_test: Some(192),
        log_every: 2,
        calib_images: 64,
        lr: 0.05,
        qat_lr: 0.01,
        out: out.clone(),
        ..TrainConfig::default()
    };
    let report = Trainer::new(ctx, cfg, None).unwrap().run(&mut Quiet).unwrap();
    assert!(report.losses.len() > 10, "loss history: {} readings", report.losses.len());

    // What the run recorded: both stages, on the 192 test images it evaluates.
    for stage in ["ptq", "qat"] {
        let p = out.join("report").join(format!("{stage}.json"));
        let s: StageStats = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!((s.stage.as_str(), s.split.as_str(), s.images), (stage, "test", 192));
        assert_eq!(s.layers[0].name, "input");
        let quantized: Vec<_> = s.layers.iter().filter(|l| l.act.is_some()).collect();
        assert!(quantized.len() >= 4, "{stage}: {} quantized layers", quantized.len());
        for l in &s.layers {
            assert!(l.values > 0 && l.signal > 0.0, "{stage} {}: no values", l.name);
            if let Some(a) = &l.act {
                assert!(a.range[0] < a.range[1] && a.counts.iter().sum::<u64>() > 0, "{stage} {}", l.name);
                assert!(a.clipped_fraction(l.values) < 0.5, "{stage} {}: clipped", l.name);
            }
        }
        // 8-bit fake-quant stays close to fp32 at the first conv (the error grows with depth).
        let conv1 = s.layers.iter().find(|l| l.op == "conv").unwrap();
        let db = conv1.sqnr_db().unwrap_or(f64::INFINITY);
        assert!(db > 15.0, "{stage} {}: SQNR {db} dB", conv1.name);
    }

    sqnr_matches_cpu_reference(&out);

    let (code, text) = wqat(&["report", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for heading in ["Accuracy", "Training curves", "Activation ranges", "Per-layer SQNR", "Weight ranges"] {
        assert!(html.contains(&format!("<h2>{heading}</h2>")), "no {heading} section");
    }
    assert!(html.contains("<figcaption>") && html.contains("int8 model"));
    let srcs = image_sources(&html);
    let want: HashSet<&str> = [
        "report/curves.png",
        "report/activations_ptq.png",
        "report/activations_qat.png",
        "report/sqnr.png",
        "report/weights_ptq.png",
        "report/weights_qat.png",
    ]
    .into();
    assert_eq!(srcs.iter().map(String::as_str).collect::<HashSet<_>>(), want, "{srcs:?}");
    for src in &srcs {
        let path = out.join(src);
        assert!(path.is_file(), "{src} referenced but missing");
        let img = image::open(&path).unwrap_or_else(|e| panic!("{src} does not decode: {e}")).to_rgb8();
        assert!(img.width() >= 400 && img.height() >= 200, "{src}: {}x{}", img.width(), img.height());
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let share = inked as f64 / (img.width() * img.height()) as f64;
        assert!(colours.len() > 8 && share > 0.01, "{src} looks blank: {} colours, {share:.4} inked", colours.len());
    }

    // Error cases, on copies of the run.
    expect_clean_error(&out.join("no-such-run"), "not a directory");
    let empty = tmp("empty");
    std::fs::create_dir_all(&empty).unwrap();
    expect_clean_error(&empty, "no metrics.json");
    let bad = tmp("bad-metrics");
    copy_dir(&out, &bad);
    std::fs::write(bad.join("metrics.json"), "{\"dataset\": ").unwrap();
    expect_clean_error(&bad, "metrics.json");
    let bad_stage = tmp("bad-stage");
    copy_dir(&out, &bad_stage);
    std::fs::write(bad_stage.join("report/qat.json"), "[1, 2").unwrap();
    expect_clean_error(&bad_stage, "qat.json");
    let bad_ckpt = tmp("bad-ckpt");
    copy_dir(&out, &bad_ckpt);
    let bytes = std::fs::read(bad_ckpt.join("qat.safetensors")).unwrap();
    std::fs::write(bad_ckpt.join("qat.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    expect_clean_error(&bad_ckpt, "qat.safetensors");
    // A run without report data (older runs) still renders, with a note instead of those plots.
    let old = tmp("old");
    copy_dir(&out, &old);
    std::fs::remove_dir_all(old.join("report")).unwrap();
    let (code, text) = wqat(&["report", old.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let html = std::fs::read_to_string(old.join("report.html")).unwrap();
    assert!(html.contains("No activation statistics for PTQ"));
    for src in image_sources(&html) {
        assert!(old.join(&src).is_file(), "{src} missing");
    }
    for d in [&out, &empty, &bad, &bad_stage, &bad_ckpt, &old] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The QAT stage's per-layer SQNR, sampled on the GPU, against the CPU reference graph on the
/// same images: the QAT checkpoint's fake-quant forward vs the same checkpoint with every
/// quantizer switched off.
fn sqnr_matches_cpu_reference(out: &Path) {
    use wqat::reference::graph::fake_quant_forward_all;
    use wqat::tensorfile::{HostData, TensorFile};
    let s: StageStats = serde_json::from_str(&std::fs::read_to_string(out.join("report/qat.json")).unwrap()).unwrap();
    let path = out.join("qat.safetensors");
    let ckpt = TensorFile::load(&path).unwrap();
    let graph = wqat::report::weights::checkpoint_graph(&path, &ckpt).unwrap();
    let mut off = ckpt.clone();
    for (name, t) in off.tensors.iter_mut() {
        if let (true, HostData::F32(v)) = (name.ends_with("_quant"), &mut t.data) {
            v[wqat::quant::QStateLayout::FQ_ENABLED] = 0.0;
        }
    }
    let ds = wqat::data::load("digits").unwrap();
    let test = ds.test.truncated(s.images);
    let fq = fake_quant_forward_all(&graph, &ckpt, test.images(), s.images).unwrap();
    let fp = fake_quant_forward_all(&graph, &off, test.images(), s.images).unwrap();
    let nodes = graph.resolve().unwrap();
    let mut compared = 0;
    for l in &s.layers {
        let (q, r) = match nodes.iter().position(|n| n.node.name == l.name) {
            Some(i) => (&fq.nodes[i], &fp.nodes[i]),
            None => (&fq.input, &fp.input),
        };
        let signal: f64 = r.iter().map(|&v| (v as f64).powi(2)).sum();
        let noise: f64 = q.iter().zip(r).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        let want = 10.0 * (signal / noise).log10();
        let got = l.sqnr_db().unwrap();
        assert!((got - want).abs() < 0.5, "{}: SQNR {got:.2} dB sampled on the GPU, {want:.2} dB on the CPU", l.name);
        compared += 1;
    }
    assert!(compared >= 6, "{compared} layers compared");
}
