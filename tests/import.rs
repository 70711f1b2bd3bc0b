//! PyTorch state_dict import and export: state_dicts generated here in the layout
//! `safetensors.torch.save_file(model.state_dict())` writes (torchvision names, BN
//! `num_batches_tracked` as int64, any float dtype), imported and compared; mismatches give
//! one error naming every offending tensor.

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wqat::model::import::{export_state_dict, import_state_dict, import_state_dict_bytes, state_dict_of};
use wqat::model::params::{param_specs, ParamKind, ParamSpec};
use wqat::model::{zoo, Graph};
use wqat::tensorfile::{HostData, HostTensor, TensorFile};
use wqat::WqatError;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic parameter values: positive running variances, mixed signs elsewhere.
fn values(spec: &ParamSpec, salt: usize) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    (0..n)
        .map(|i| {
            let x = (((i * 7919 + salt * 104729) % 2003) as f32 / 2003.0) - 0.5;
            match spec.kind {
                ParamKind::BnRunningVar => 0.5 + x.abs(),
                _ => x,
            }
        })
        .collect()
}

/// One entry of a generated state_dict.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn encode(dtype: Dtype, v: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        Dtype::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        Dtype::F64 => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
        Dtype::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        other => panic!("no encoder for {other:?}"),
    }
}

/// What the importer must return for values stored as `dtype`.
fn decoded(dtype: Dtype, v: &[f32]) -> Vec<f32> {
    match dtype {
        Dtype::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        Dtype::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// The state_dict PyTorch would save for `graph`: every parameter stored as `dtype_of(i)`,
/// plus `num_batches_tracked` (int64) for every BN, as `model.state_dict()` has.
fn state_dict(graph: &Graph, dtype_of: impl Fn(usize) -> Dtype) -> (Vec<Entry>, HashMap<String, Vec<f32>>) {
    let mut entries = Vec::new();
    let mut want = HashMap::new();
    for (i, s) in param_specs(graph).unwrap().iter().enumerate() {
        let v = values(s, i);
        let dtype = dtype_of(i);
        entries.push(Entry { name: s.name.clone(), dtype, shape: s.shape.clone(), bytes: encode(dtype, &v) });
        want.insert(s.name.clone(), decoded(dtype, &v));
        if let Some(prefix) = s.name.strip_suffix(".running_var") {
            entries.push(Entry {
                name: format!("{prefix}.num_batches_tracked"),
                dtype: Dtype::I64,
                shape: vec![],
                bytes: 1234i64.to_le_bytes().to_vec(),
            });
        }
    }
    (entries, want)
}

fn serialize(entries: &[Entry]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|e| (e.name.clone(), TensorView::new(e.dtype, e.shape.clone(), &e.bytes).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn check_import(graph: &Graph, tf: &TensorFile, want: &HashMap<String, Vec<f32>>) {
    let specs = param_specs(graph).unwrap();
    assert_eq!(tf.tensors.len(), specs.len(), "exactly the parameters, nothing else");
    for s in &specs {
        let t = &tf.tensors[&s.name];
        assert_eq!(t.shape, s.shape, "{}", s.name);
        assert_eq!(t.as_f32(&s.name).unwrap(), want[&s.name].as_slice(), "{}", s.name);
    }
}

/// The message of a format error naming `path`.
fn format_message<T: std::fmt::Debug>(r: wqat::Result<T>, path: &Path) -> String {
    match r {
        Err(WqatError::Format { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        other => panic!("want a format error, got {other:?}"),
    }
}

#[test]
fn mnist_cnn_f32_from_file() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let (entries, want) = state_dict(&g, |_| Dtype::F32);
    let path = tmpdir("mnist").join("mnist_cnn.safetensors");
    std::fs::write(&path, serialize(&entries)).unwrap();
    let tf = import_state_dict(&g, &path).unwrap();
    check_import(&g, &tf, &want);
    assert_eq!(tf.tensors["fc1.weight"].shape, vec![128, 1568]);
}

#[test]
fn resnet20_f16_with_num_batches_tracked() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let (entries, want) = state_dict(&g, |_| Dtype::F16);
    assert!(entries.iter().any(|e| e.name == "layer2.0.downsample.1.num_batches_tracked"));
    let tf = import_state_dict_bytes(&g, Path::new("r20.safetensors"), &serialize(&entries)).unwrap();
    check_import(&g, &tf, &want);
    assert_eq!(tf.tensors["layer3.0.downsample.0.weight"].shape, vec![64, 32, 1, 1]);
    assert_eq!(tf.tensors["fc.weight"].shape, vec![10, 64]);
}

#[test]
fn resnet20_mixed_float_dtypes() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64];
    let (entries, want) = state_dict(&g, |i| dtypes[i % 4]);
    let tf = import_state_dict_bytes(&g, Path::new("mixed.safetensors"), &serialize(&entries)).unwrap();
    check_import(&g, &tf, &want);
}

#[test]
fn every_mismatch_is_listed_at_once() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let (mut entries, _) = state_dict(&g, |_| Dtype::F32);
    // Missing: conv2.weight and bn2.running_var.
    entries.retain(|e| e.name != "conv2.weight" && e.name != "bn2.running_var");
    // Unexpected: a typo and a layer the model lacks.
    for name in ["conv1.wieght", "layer9.0.conv1.weight"] {
        entries.push(Entry { name: name.into(), dtype: Dtype::F32, shape: vec![2], bytes: vec![0; 8] });
    }
    for e in entries.iter_mut() {
        match e.name.as_str() {
            // Transposed linear weight.
            "fc1.weight" => e.shape = vec![1568, 128],
            // Right element count, but 4-D: not reshaped silently.
            "fc2.weight" => e.shape = vec![10, 32, 4, 1],
            // Wrong dtype.
            "bn1.bias" => {
                e.dtype = Dtype::I32;
                e.bytes = encode(Dtype::I32, &[0.0; 16]);
            }
            // Non-finite value and a negative variance.
            "fc2.bias" => e.bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes()),
            "bn1.running_var" => e.bytes[0..4].copy_from_slice(&(-1f32).to_le_bytes()),
            _ => {}
        }
    }
    let path = tmpdir("bad").join("bad.safetensors");
    std::fs::write(&path, serialize(&entries)).unwrap();
    let msg = format_message(import_state_dict(&g, &path), &path);
    for needle in [
        "model mnist-cnn",
        "2 missing: conv2.weight [32, 16, 3, 3], bn2.running_var [32]",
        "2 unexpected: conv1.wieght, layer9.0.conv1.weight",
        "fc1.weight [1568, 128] (expected [128, 1568])",
        "fc2.weight [10, 32, 4, 1] (expected [10, 128])",
        "unsupported dtype (want F32, F16, BF16 or F64): bn1.bias (I32)",
        "fc2.bias (value 1 is NaN)",
        "bn1.running_var (variance 0 is negative: -1)",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    // Nothing is reported twice (a mis-shaped tensor is not also "missing").
    assert_eq!(msg.matches("fc1.weight").count(), 1, "{msg}");
}

#[test]
fn num_batches_tracked_is_ignored_whatever_its_dtype() {
    let g = zoo::build("mnist-cnn", [1, 8, 8], 10).unwrap();
    let (mut entries, want) = state_dict(&g, |_| Dtype::F32);
    entries.retain(|e| !e.name.ends_with(".num_batches_tracked"));
    // (safetensors' serializer panics on duplicate names, so the old entry goes first.)
    entries.push(Entry {
        name: "bn1.num_batches_tracked".into(),
        dtype: Dtype::U8,
        shape: vec![3],
        bytes: vec![1, 2, 3],
    });
    let tf = import_state_dict_bytes(&g, Path::new("x"), &serialize(&entries)).unwrap();
    check_import(&g, &tf, &want);
}

#[test]
fn not_a_state_dict() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let p = Path::new("garbage.safetensors");
    let msg = format_message(import_state_dict_bytes(&g, p, b"\x08\0\0\0\0\0\0\0{}"), p);
    assert!(msg.contains("not a valid safetensors state_dict"), "{msg}");
    let msg = format_message(import_state_dict_bytes(&g, p, b""), p);
    assert!(msg.contains("not a valid safetensors state_dict"), "{msg}");
    // An empty but valid file: every parameter is missing.
    let msg = format_message(import_state_dict_bytes(&g, p, &serialize(&[])), p);
    assert!(msg.contains("14 missing: conv1.weight [16, 1, 3, 3]"), "{msg}");
    assert!(msg.contains("fc2.bias [10]"), "{msg}");
    match import_state_dict(&g, Path::new("/nonexistent/sd.safetensors")) {
        Err(WqatError::Io { path, .. }) => assert_eq!(path, Path::new("/nonexistent/sd.safetensors")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn export_then_import_round_trips() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let specs = param_specs(&g).unwrap();
    // A wqat checkpoint holds more than the parameters: those extras must not be exported.
    let mut ckpt = TensorFile::new();
    for (i, s) in specs.iter().enumerate() {
        ckpt.insert(s.name.clone(), HostTensor::f32(&s.shape, values(s, i)));
        ckpt.insert(format!("{}.momentum", s.name), HostTensor::f32(&s.shape, vec![0.0; s.shape.iter().product()]));
    }
    ckpt.insert("conv1.weight_quant", HostTensor::f32(&[9], vec![1.0; 9]));
    ckpt.metadata.insert("format".into(), "wqat-checkpoint".into());
    let path = tmpdir("export").join("sd.safetensors");
    export_state_dict(&g, &ckpt, &path).unwrap();
    let raw = TensorFile::load(&path).unwrap();
    assert_eq!(raw.tensors.len(), specs.len());
    assert_eq!(raw.metadata.get("format").map(String::as_str), Some("pt"));
    let back = import_state_dict(&g, &path).unwrap();
    for s in &specs {
        assert_eq!(back.tensors[&s.name], ckpt.tensors[&s.name], "{}", s.name);
    }
}

#[test]
fn export_lists_every_problem() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let mut ckpt = TensorFile::new();
    for (i, s) in param_specs(&g).unwrap().iter().enumerate() {
        ckpt.insert(s.name.clone(), HostTensor::f32(&s.shape, values(s, i)));
    }
    ckpt.tensors.remove("bn1.bias");
    ckpt.tensors.remove("fc2.weight");
    ckpt.insert("fc1.bias", HostTensor::f32(&[3], vec![0.0; 3]));
    ckpt.insert("conv2.weight", HostTensor { shape: vec![32, 16, 3, 3], data: HostData::I32(vec![0; 32 * 16 * 9]) });
    let path = tmpdir("export-bad").join("sd.safetensors");
    let msg = format_message(export_state_dict(&g, &ckpt, &path), &path);
    for needle in
        ["bn1.bias missing", "fc2.weight missing", "fc1.bias has shape [3], expected [128]", "conv2.weight is not f32"]
    {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    assert!(!path.exists(), "nothing written on error");
    assert!(state_dict_of(&g, &ckpt).is_err());
}
