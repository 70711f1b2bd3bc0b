//! PyTorch state_dict interop: reads the safetensors file that
//! `safetensors.torch.save_file(model.state_dict(), path)` writes, mapping tensors by the
//! torchvision-style names of [`param_specs`] (`conv1.weight`, `bn1.running_mean`,
//! `layer1.0.downsample.0.weight`, `fc.bias`, ...), and writes the parameters back in the
//! same form so `model.load_state_dict(safetensors.torch.load_file(path))` loads them.
//!
//! Import rules:
//! * dtypes F32, F16, BF16 and F64 are accepted and converted to f32 (F64 values outside the
//!   f32 range become infinite and are then rejected as non-finite);
//! * `*.num_batches_tracked` entries (int64 in PyTorch) are ignored whatever their dtype;
//! * every shape must equal the spec's shape: a linear weight is taken only as the 2-D
//!   `[out_features, in_features]` PyTorch stores (in_features = C*H*W of its input, in
//!   PyTorch's `flatten` order, which is wqat's); a tensor with the right element count but
//!   another shape is reported as mis-shaped, never silently reshaped;
//! * values must be finite and BN running variances non-negative;
//! * a mismatch is one [`WqatError::Format`] naming the file and listing ALL missing,
//!   unexpected, mis-shaped, wrongly typed and invalid tensors at once.

use super::graph::Graph;
use super::params::{param_specs, ParamKind, ParamSpec};
use crate::error::{Result, WqatError};
use crate::tensorfile::{write_atomic, HostData, HostTensor, TensorFile};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Suffix of the BN batch counter PyTorch keeps in its state_dict; wqat has no use for it.
pub const NUM_BATCHES_TRACKED: &str = ".num_batches_tracked";

/// Reads a PyTorch state_dict saved as safetensors and returns the graph's parameters
/// (names and shapes of [`param_specs`], f32). See the module docs for the rules.
pub fn import_state_dict(graph: &Graph, path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| WqatError::io(path, e))?;
    import_state_dict_bytes(graph, path, &bytes)
}

/// [`import_state_dict`] on bytes already read; `path` only names the source in errors.
pub fn import_state_dict_bytes(graph: &Graph, path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let specs = param_specs(graph).map_err(|e| WqatError::format(path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| WqatError::format(path, format!("not a valid safetensors state_dict: {e}")))?;
    let by_name: HashMap<&str, &ParamSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();

    let mut found: BTreeMap<String, HostTensor> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut misshaped = Vec::new();
    let mut bad_dtype = Vec::new();
    let mut invalid = Vec::new();
    let mut present = HashSet::new();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names {
        if name.ends_with(NUM_BATCHES_TRACKED) {
            continue;
        }
        let Some(spec) = by_name.get(name.as_str()) else {
            unexpected.push(name);
            continue;
        };
        present.insert(name.clone());
        let view = st.tensor(&name).map_err(|e| WqatError::format(path, format!("tensor {name}: {e}")))?;
        if view.shape() != spec.shape.as_slice() {
            misshaped.push(format!("{name} {:?} (expected {:?})", view.shape(), spec.shape));
            continue;
        }
        let Some(values) = to_f32(view.dtype(), view.data()) else {
            bad_dtype.push(format!("{name} ({:?})", view.dtype()));
            continue;
        };
        if values.len() != spec.shape.iter().product::<usize>() {
            // safetensors checks sizes against shapes; this guards a future change there.
            misshaped.push(format!("{name}: {} values for shape {:?}", values.len(), spec.shape));
            continue;
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            invalid.push(format!("{name} (value {i} is {})", values[i]));
            continue;
        }
        if spec.kind == ParamKind::BnRunningVar {
            if let Some(i) = values.iter().position(|&v| v < 0.0) {
                invalid.push(format!("{name} (variance {i} is negative: {})", values[i]));
                continue;
            }
        }
        found.insert(name, HostTensor { shape: spec.shape.clone(), data: HostData::F32(values) });
    }
    let missing: Vec<String> =
        specs.iter().filter(|s| !present.contains(&s.name)).map(|s| format!("{} {:?}", s.name, s.shape)).collect();

    let mut problems = Vec::new();
    for (what, list) in [
        ("missing", &missing),
        ("unexpected", &unexpected),
        ("mis-shaped", &misshaped),
        ("unsupported dtype (want F32, F16, BF16 or F64)", &bad_dtype),
        ("invalid values", &invalid),
    ] {
        if !list.is_empty() {
            problems.push(format!("{} {what}: {}", list.len(), name_list(list)));
        }
    }
    if !problems.is_empty() {
        return Err(WqatError::format(
            path,
            format!(
                "state_dict does not match model {} ({} tensors expected, torchvision-style names): {}",
                graph.name,
                specs.len(),
                problems.join("; ")
            ),
        ));
    }
    Ok(TensorFile { tensors: found, metadata: HashMap::new() })
}

/// Writes the graph's parameters (and only those: [`param_specs`] names, f32) from `tf` as
/// a safetensors state_dict PyTorch loads with `load_state_dict` (metadata `format: pt`, as
/// `safetensors.torch.save_file` writes). `tf` may be a whole wqat checkpoint: quantizer
/// states and optimizer momentum are left out. Errors list every missing or mis-shaped
/// parameter. The write is atomic.
pub fn export_state_dict(graph: &Graph, tf: &TensorFile, path: &Path) -> Result<()> {
    let out = state_dict_of(graph, tf).map_err(|e| match e {
        WqatError::Format { message, .. } => WqatError::format(path, message),
        other => other,
    })?;
    write_atomic(path, &out.to_bytes()?)
}

/// The [`TensorFile`] [`export_state_dict`] writes (errors name no file: `<checkpoint>`).
pub fn state_dict_of(graph: &Graph, tf: &TensorFile) -> Result<TensorFile> {
    let specs = param_specs(graph)?;
    let mut out = TensorFile::new();
    let mut problems = Vec::new();
    for s in &specs {
        match tf.tensors.get(&s.name) {
            None => problems.push(format!("{} missing", s.name)),
            Some(t) if t.shape != s.shape => {
                problems.push(format!("{} has shape {:?}, expected {:?}", s.name, t.shape, s.shape))
            }
            Some(t) => match &t.data {
                HostData::F32(_) => out.insert(s.name.clone(), t.clone()),
                _ => problems.push(format!("{} is not f32", s.name)),
            },
        }
    }
    if !problems.is_empty() {
        return Err(WqatError::format(
            "<checkpoint>",
            format!("cannot export model {}: {}", graph.name, name_list(&problems)),
        ));
    }
    out.metadata.insert("format".into(), "pt".into());
    Ok(out)
}

/// Little-endian tensor bytes as f32, for the float dtypes PyTorch saves.
fn to_f32(dtype: Dtype, d: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

fn name_list(items: &[String]) -> String {
    items.join(", ")
}
