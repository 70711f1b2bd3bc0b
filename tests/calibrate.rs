//! `wqat calibrate` end to end on the embedded digits: a synthetic mnist-cnn (as a wqat
//! checkpoint and as a PyTorch state_dict) is calibrated with percentile and MSE observers,
//! the checkpoint converts with `wqat convert`, the integer model agrees with fake-quant;
//! bad input gives one clear error line.

use std::path::{Path, PathBuf};
use std::process::Command;
use wqat::convert::synthetic::synthetic_checkpoint;
use wqat::model::zoo;

fn wqat(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wqat")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-calibrate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A random mnist-cnn for the 8x8 digits: (wqat checkpoint, PyTorch state_dict).
fn models(d: &Path) -> (PathBuf, PathBuf) {
    let g = zoo::build("mnist-cnn", [1, 8, 8], 10).unwrap();
    let ck = synthetic_checkpoint(&g, 3, false).unwrap();
    let (a, b) = (d.join("model.safetensors"), d.join("state_dict.safetensors"));
    ck.save(&a).unwrap();
    wqat::model::import::export_state_dict(&g, &ck, &b).unwrap();
    (a, b)
}

fn metrics(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn calibrate_convert_and_agree() {
    let d = tmp("run");
    let (ck, sd) = models(&d);
    let out = d.join("out");
    let common = ["--data", "digits", "--model", "mnist-cnn", "--batch", "64", "--calib-images", "256"];
    let mut args = vec!["calibrate", s(&ck)];
    args.extend(common);
    args.extend([
        "--observer",
        "percentile:99.9",
        "--layer-qconfig",
        "conv1=observer=mse",
        "--limit-test",
        "128",
        "--val-split",
        "0.1",
        "--convert",
        "-o",
        s(&out),
    ]);
    let (code, text) = wqat(&args);
    assert_eq!(code, 0, "{text}");
    let m = metrics(&out);
    let acc = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m}"));
    let (ptq, int8, agree) = (acc("ptq_acc"), acc("int8_acc"), acc("agreement"));
    assert!(acc("fp32_acc") >= 0.0 && m["qat_acc"].is_null(), "{m}");
    assert!(agree >= 0.99 && (ptq - int8).abs() <= 0.01, "PTQ {ptq}, int8 {int8}, agreement {agree}\n{text}");
    assert!(m["val"]["ptq_acc"].as_f64().is_some(), "{m}");
    assert_eq!(m["config"]["observer"]["kind"], "percentile", "{m}");
    // The checkpoint keeps the per-layer observer, converts, and evaluates as reported.
    let ptq_file = out.join("ptq.safetensors");
    let f = wqat::tensorfile::TensorFile::load(&ptq_file).unwrap();
    let q = wqat::qconfig::QConfig::from_metadata(&f, &ptq_file).unwrap();
    assert_eq!(q.observer_for("conv1"), wqat::engine::ObserverKind::Mse);
    assert!(f.tensors.contains_key("conv1.output_quant.histogram"), "{:?}", f.tensors.keys().collect::<Vec<_>>());
    let int8_file = d.join("m.int8.safetensors");
    let (code, text) = wqat(&["convert", s(&ptq_file), "--out", s(&int8_file)]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = wqat(&["eval", s(&int8_file), "--data", "digits", "--limit", "128", "--json"]);
    assert_eq!(code, 0, "{text}");
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["accuracy"].as_f64().unwrap() as f32, int8 as f32, "{e}");

    // The same weights as a PyTorch state_dict calibrate to the same PTQ accuracy (MSE
    // model-wide this time: a different observer, the same fp32 accuracy).
    let out2 = d.join("out2");
    let mut args = vec!["calibrate", s(&sd)];
    args.extend(common);
    args.extend(["--observer", "mse", "--limit-test", "128", "--val-split", "0.1", "-o", s(&out2)]);
    let (code, text) = wqat(&args);
    assert_eq!(code, 0, "{text}");
    let m2 = metrics(&out2);
    assert_eq!(m2["fp32_acc"], m["fp32_acc"], "{m2}");
    // Without the fp32 evaluation the PTQ result is the same.
    args.push("--skip-fp32-eval");
    let (code, text) = wqat(&args);
    assert_eq!(code, 0, "{text}");
    let m3 = metrics(&out2);
    assert!(m3["fp32_acc"].is_null() && m3["ptq_acc"] == m2["ptq_acc"], "{m3}");
    assert!(out2.join("ptq.safetensors").is_file() && !out2.join("model.int8.safetensors").exists());
    let _ = std::fs::remove_dir_all(&d);
}

fn expect_error(args: &[&str], mention: &str) {
    let (code, text) = wqat(args);
    assert_ne!(code, 0, "{args:?} succeeded:\n{text}");
    assert!(!text.contains("panicked"), "{args:?} panicked:\n{text}");
    let errs: Vec<&str> = text.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errs.len(), 1, "{args:?}: one error line expected:\n{text}");
    assert!(errs[0].to_lowercase().contains(mention), "{args:?}: error should mention {mention:?}:\n{text}");
}

#[test]
fn calibrate_bad_input() {
    let d = tmp("bad");
    let (ck, _) = models(&d);
    let out = d.join("out");
    let missing = d.join("nope.safetensors");
    expect_error(&["calibrate", s(&missing), "-o", s(&out)], "does not exist");
    expect_error(&["calibrate", s(&ck), "--model", "mlp", "-o", s(&out)], "holds a mnist-cnn model");
    // A state_dict of another network lists what does not fit.
    let (_, sd) = models(&d);
    expect_error(&["calibrate", s(&sd), "--model", "mlp", "-o", s(&out)], "fc1.weight");
    expect_error(&["calibrate", s(&ck), "--observer", "percentile:120", "-o", s(&out)], "percentile");
    expect_error(
        &["calibrate", s(&ck), "--layer-qconfig", "conv1=observer=percentile:20", "-o", s(&out)],
        "percentile",
    );
    expect_error(&["calibrate", s(&ck), "--layer-qconfig", "conv9=observer=mse", "-o", s(&out)], "conv9");
    let _ = std::fs::remove_dir_all(&d);
}
