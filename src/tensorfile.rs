//! Named host tensors saved as safetensors with a metadata header, written atomically
//! (temporary file, fsync, rename, fsync of the directory) so an interrupt or a full disk
//! never leaves a half-written checkpoint in place of a good one.

use crate::error::{Result, WqatError};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Host tensor data in the dtypes wqat stores.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

/// One stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        HostTensor { shape: shape.to_vec(), data: HostData::F32(data) }
    }
    fn dtype(&self) -> safetensors::Dtype {
        match self.data {
            HostData::F32(_) => safetensors::Dtype::F32,
            HostData::I32(_) => safetensors::Dtype::I32,
            HostData::I8(_) => safetensors::Dtype::I8,
            HostData::U8(_) => safetensors::Dtype::U8,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            HostData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            HostData::U8(v) => v.clone(),
        }
    }
    /// The f32 data, or an error naming the tensor.
    pub fn as_f32(&self, name: &str) -> Result<&[f32]> {
        match &self.data {
            HostData::F32(v) => Ok(v),
            _ => Err(WqatError::invalid(format!("tensor {name} is not f32"))),
        }
    }
}

/// A set of named tensors plus string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }
    /// A tensor by name with its shape checked.
    pub fn get(&self, path: &Path, name: &str, shape: &[usize]) -> Result<&HostTensor> {
        let t = self.tensors.get(name).ok_or_else(|| WqatError::format(path, format!("missing tensor {name}")))?;
        if t.shape != shape {
            return Err(WqatError::format(path, format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t)
    }
    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
            self.tensors.iter().map(|(n, t)| (n.clone(), t.dtype(), t.shape.clone(), t.bytes())).collect();
        let views = owned
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| WqatError::invalid(format!("tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(self.metadata.clone()))
            .map_err(|e| WqatError::invalid(format!("safetensors: {e}")))
    }
    /// Parses safetensors bytes; every malformed input is an error naming `path`.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| WqatError::format(path, format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| WqatError::format(path, format!("not a valid safetensors file: {e}")))?;
        let mut out = TensorFile { metadata: meta.metadata().clone().unwrap_or_default(), ..Default::default() };
        for (name, view) in st.tensors() {
            let d = view.data();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => {
                    HostData::F32(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                safetensors::Dtype::I32 => {
                    HostData::I32(d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                }
                safetensors::Dtype::I8 => HostData::I8(d.iter().map(|&b| b as i8).collect()),
                safetensors::Dtype::U8 => HostData::U8(d.to_vec()),
                safetensors::Dtype::I64 => {
                    // PyTorch stores num_batches_tracked as int64; keep it readable as i32.
                    HostData::I32(
                        d.chunks_exact(8)
                            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as i32)
                            .collect(),
                    )
                }
                other => return Err(WqatError::format(path, format!("tensor {name}: unsupported dtype {other:?}"))),
            };
            out.tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(out)
    }
    /// Writes atomically: `path.tmp`, fsync, rename over `path`, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
    }
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| WqatError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }
}

/// Atomic file replacement; a failure (e.g. a full disk) leaves the old file untouched and
/// removes the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| WqatError::io(dir, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(WqatError::io(path, e));
    }
    Ok(())
}
