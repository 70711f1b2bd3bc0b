//! Python interop: a wqat checkpoint-style TensorFile (f32 tensors + metadata) and an exported
//! state_dict are read with `safetensors.numpy` + numpy, which check names, shapes, dtypes,
//! metadata and values, then write the arrays back; the round trip must be bit-exact.
//!
//! The interpreter is the first of `$WQAT_PYTHON`, `python3`, `/usr/bin/python3` that imports
//! numpy and safetensors.numpy. Without one the test prints a skip message and passes, unless
//! `WQAT_REQUIRE_PYTHON=1` (set by `.ci/run`, which installs both) makes that a failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use wqat::model::import::export_state_dict;
use wqat::model::params::param_specs;
use wqat::model::zoo;
use wqat::tensorfile::{HostTensor, TensorFile};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-py-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Python with numpy and safetensors.numpy, or None (after saying why).
fn python() -> Option<String> {
    wqat::testing::python_with(
        "numpy, safetensors.numpy",
        "python interop",
        "Debian: apt-get install python3-numpy python3-pip && pip install --break-system-packages safetensors",
    )
}

/// Shortest repr of an f32 that Python's `numpy.float32(...)` reads back exactly.
fn py_f32(v: f32) -> String {
    if v.is_nan() {
        "float('nan')".into()
    } else if v.is_infinite() {
        if v > 0.0 { "float('inf')" } else { "float('-inf')" }.into()
    } else {
        format!("{v:?}")
    }
}

/// A Python check of `file`: exactly these tensors (name, shape, a few (index, value) pairs),
/// all float32, and these metadata entries; then the arrays are saved to `back`.
fn check_script(file: &Path, back: &Path, tf: &TensorFile, metadata: &[(&str, &str)]) -> String {
    let mut s = String::new();
    writeln!(s, "import numpy as np, json, sys").unwrap();
    writeln!(s, "from safetensors import safe_open").unwrap();
    writeln!(s, "from safetensors.numpy import load_file, save_file").unwrap();
    writeln!(s, "path = {:?}", file.to_str().unwrap()).unwrap();
    writeln!(s, "t = load_file(path)").unwrap();
    writeln!(s, "want = {{}}").unwrap();
    for (name, h) in &tf.tensors {
        let v = h.as_f32(name).unwrap();
        let picks: Vec<String> =
            [0, v.len() / 2, v.len() - 1].iter().map(|&i| format!("({i}, np.float32({}))", py_f32(v[i]))).collect();
        writeln!(s, "want[{name:?}] = ({:?}, [{}])", h.shape, picks.join(", ")).unwrap();
    }
    writeln!(
        s,
        r#"assert sorted(t) == sorted(want), ("names", sorted(set(t) ^ set(want)))
for name, (shape, picks) in want.items():
    a = t[name]
    assert a.dtype == np.float32, (name, a.dtype)
    assert list(a.shape) == list(shape), (name, a.shape, shape)
    flat = a.reshape(-1)
    for i, v in picks:
        assert flat[i] == v or (np.isnan(v) and np.isnan(flat[i])), (name, i, flat[i], v)
with safe_open(path, framework="numpy") as f:
    meta = f.metadata() or {{}}"#
    )
    .unwrap();
    for (k, v) in metadata {
        writeln!(s, "assert meta.get({k:?}) == {v:?}, ({k:?}, meta.get({k:?}))").unwrap();
    }
    writeln!(s, "save_file({{k: np.array(v, order='C') for k, v in t.items()}}, {:?})", back.to_str().unwrap())
        .unwrap();
    writeln!(s, "print('python checked', len(t), 'tensors of', path)").unwrap();
    s
}

fn run_python(py: &str, script: &str) {
    let out = Command::new(py).args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n--- stdout\n{}\n--- script\n{script}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The tensors of `back` (written by numpy) equal `tf`'s bit for bit.
fn assert_bit_exact(back: &Path, tf: &TensorFile) {
    let b = TensorFile::load(back).unwrap();
    assert_eq!(b.tensors.len(), tf.tensors.len());
    for (name, t) in &tf.tensors {
        let (x, y) = (t.as_f32(name).unwrap(), b.tensors[name].as_f32(name).unwrap());
        assert_eq!(b.tensors[name].shape, t.shape, "{name}");
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after the numpy round trip");
    }
}

#[test]
fn numpy_reads_checkpoint_and_state_dict() {
    let Some(py) = python() else { return };
    let dir = tmpdir("interop");
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();

    // A checkpoint-style file: parameters, a quantizer state, odd values, metadata.
    let mut ckpt = TensorFile::new();
    for (k, s) in param_specs(&g).unwrap().iter().enumerate() {
        let n: usize = s.shape.iter().product();
        let v = (0..n).map(|i| ((i * 31 + k * 17) % 1001) as f32 / 1001.0 - 0.25 + 1e-7 * k as f32).collect();
        ckpt.insert(s.name.clone(), HostTensor::f32(&s.shape, v));
    }
    ckpt.insert("conv1.weight_quant", HostTensor::f32(&[4], vec![f32::MIN_POSITIVE, -0.0, 1e-45, f32::MAX]));
    ckpt.insert("scalar", HostTensor::f32(&[], vec![3.5]));
    ckpt.metadata.insert("format".into(), "wqat-checkpoint".into());
    ckpt.metadata.insert("graph".into(), serde_json::to_string(&g).unwrap());
    let ckpt_path = dir.join("ckpt.safetensors");
    ckpt.save(&ckpt_path).unwrap();
    let graph_json = serde_json::to_string(&g).unwrap();
    let back = dir.join("ckpt-back.safetensors");
    run_python(
        &py,
        &check_script(&ckpt_path, &back, &ckpt, &[("format", "wqat-checkpoint"), ("graph", graph_json.as_str())]),
    );
    assert_bit_exact(&back, &ckpt);

    // The exported state_dict: only the parameters, PyTorch names, `format: pt`.
    let sd_path = dir.join("state_dict.safetensors");
    export_state_dict(&g, &ckpt, &sd_path).unwrap();
    let mut params = ckpt.clone();
    params.tensors.retain(|k, _| k != "conv1.weight_quant" && k != "scalar");
    let back = dir.join("sd-back.safetensors");
    run_python(&py, &check_script(&sd_path, &back, &params, &[("format", "pt")]));
    assert_bit_exact(&back, &params);
}
