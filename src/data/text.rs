//! Text classification folders: `DIR/train/<class>.txt` and `DIR/test/<class>.txt`, one UTF-8
//! sample per line, turned into byte-level token ids ([`TextEncoding`]) stored as f32 integers
//! so a text sample is an f32 tensor like an image (`shape = (1, 1, max_len)`).

use super::dataset::Normalization;
use super::folder::sorted_entries;
use super::{at_path, bad, maybe_gunzip, read_file, Dataset, Split};
use crate::{Result, WqatError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default number of tokens per sequence (CLS included): `--max-len`'s default.
pub const DEFAULT_MAX_LEN: usize = 24;

/// Largest `max_len` accepted (attention is quadratic in it; far beyond any use here).
pub const MAX_TEXT_LEN: usize = 1 << 16;

/// Most token values a text split may hold (samples x max_len): 4 GiB of f32.
const MAX_TEXT_VALUES: usize = 1 << 30;

/// How text becomes token ids: UTF-8 bytes (ids 0..255) after a CLS token, padded with PAD to
/// exactly `max_len` ids. Saved with a model so inference encodes as training did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TextEncoding {
    /// Tokens per sequence, CLS included (so at most `max_len - 1` bytes of text); >= 2.
    pub max_len: usize,
}

impl Default for TextEncoding {
    fn default() -> Self {
        TextEncoding { max_len: DEFAULT_MAX_LEN }
    }
}

impl TextEncoding {
    /// Token ids 0..255 are the bytes of the UTF-8 text.
    pub const BYTE_VOCAB: usize = 256;
    /// The classification token, first in every sequence.
    pub const CLS_ID: usize = 256;
    /// Padding after the text (the key padding mask is `id == PAD_ID`).
    pub const PAD_ID: usize = 257;
    /// Size of the embedding table: 256 bytes + CLS + PAD.
    pub const VOCAB: usize = 258;

    /// An encoding of `max_len` tokens per sequence (2..=[`MAX_TEXT_LEN`]).
    pub fn new(max_len: usize) -> Result<Self> {
        let e = TextEncoding { max_len };
        e.validate()?;
        Ok(e)
    }

    /// The check of [`TextEncoding::new`], for values deserialized or built by hand.
    pub fn validate(&self) -> Result<()> {
        if !(2..=MAX_TEXT_LEN).contains(&self.max_len) {
            return Err(WqatError::invalid(format!(
                "--max-len {} must be in 2..={MAX_TEXT_LEN} (the CLS token plus at least one byte of text)",
                self.max_len
            )));
        }
        Ok(())
    }

    /// Number of bytes of text kept (`max_len - 1`; the rest is cut, even inside a UTF-8
    /// character: bytes are tokens).
    pub fn max_bytes(&self) -> usize {
        self.max_len.saturating_sub(1)
    }

    /// `[CLS, byte_0, ..., byte_{k-1}, PAD, ...]`: exactly `max_len` ids as f32, with
    /// `k = min(text.len(), max_len - 1)`. (A hand-built `max_len` of 1 gives `[CLS]`, 0 an
    /// empty vector; [`TextEncoding::validate`] refuses both.)
    pub fn encode(&self, text: &str) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.max_len);
        self.encode_into(text, &mut out);
        out
    }

    /// Appends the ids of [`TextEncoding::encode`] to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<f32>) {
        if self.max_len == 0 {
            return;
        }
        let bytes = &text.as_bytes()[..text.len().min(self.max_bytes())];
        out.push(Self::CLS_ID as f32);
        out.extend(bytes.iter().map(|&b| b as f32));
        out.extend(std::iter::repeat_n(Self::PAD_ID as f32, self.max_bytes() - bytes.len()));
    }
}

/// The samples of one text file (raw or gzip, detected by magic bytes): one per line, lines
/// split at `\n` with a trailing `\r` removed, a UTF-8 byte-order mark at the start dropped,
/// empty lines skipped; everything else (spaces included) is kept verbatim. A line that is not
/// valid UTF-8 is a format error naming its 1-based line number. No samples is not an error
/// here (the loader reports an empty class with its file).
pub fn parse_text_lines(bytes: &[u8]) -> Result<Vec<String>> {
    let data = maybe_gunzip(bytes)?;
    let data = data.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&data);
    let mut out = Vec::new();
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            bad(format!(
                "line {}: invalid UTF-8 at byte {} of the line (text files must be UTF-8)",
                n + 1,
                e.valid_up_to() + 1
            ))
        })?;
        out.push(text.to_string());
    }
    Ok(out)
}

/// The class stem of a text file name: `english` for `english.txt` or `english.txt.gz`
/// (extension case-insensitive; hidden files excluded).
fn class_stem(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    if name.starts_with('.') || !p.is_file() {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    let stem_len = if lower.ends_with(".txt") {
        name.len() - 4
    } else if lower.ends_with(".txt.gz") {
        name.len() - 7
    } else {
        return None;
    };
    (stem_len > 0).then(|| name[..stem_len].to_string())
}

/// The text files of one split directory, sorted by class stem (duplicates refused).
fn scan_split(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Err(WqatError::format(
            dir,
            "missing directory (a text data set needs train/<class>.txt and test/<class>.txt)",
        ));
    }
    let mut files: Vec<(String, PathBuf)> =
        sorted_entries(dir)?.into_iter().filter_map(|p| class_stem(&p).map(|s| (s, p))).collect();
    files.sort();
    if files.is_empty() {
        return Err(WqatError::format(dir, "no <class>.txt files (one UTF-8 sample per line, one file per class)"));
    }
    if let Some(w) = files.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(WqatError::format(
            &w[1].1,
            format!("class {:?} has two files ({}): keep one", w[0].0, w[0].1.display()),
        ));
    }
    Ok(files)
}

/// True when `root/train` holds at least one `<class>.txt` (or `.txt.gz`) file.
pub fn is_text_folder(root: &Path) -> bool {
    sorted_entries(&root.join("train")).is_ok_and(|e| e.iter().any(|p| class_stem(p).is_some()))
}

/// Seed of the fixed order text samples are stored in (classes mixed).
pub const TEXT_ORDER_SEED: u64 = 0x7e47;

/// Loads a text classification folder: `root/train/<class>.txt` and `root/test/<class>.txt`
/// (optionally gzipped, `.txt.gz`), one sample per line (see [`parse_text_lines`]). Classes
/// are the file stems sorted by name (at most 256); both splits must have the same classes,
/// each with at least one sample. Samples are stored in a fixed shuffled order
/// ([`TEXT_ORDER_SEED`]: classes mixed, the same on every load), and
/// encoded with `enc` into `shape = (1, 1, max_len)` f32 ids; `norm` is the identity (nothing
/// normalizes token ids) and [`Dataset::text`] is `Some(enc)`.
pub fn load_text_folder(root: &Path, enc: TextEncoding) -> Result<Dataset> {
    enc.validate()?;
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let train_files = scan_split(&train_dir)?;
    let test_files = scan_split(&test_dir)?;
    if train_files.len() > 256 {
        return Err(WqatError::format(&train_dir, format!("{} classes, at most 256 supported", train_files.len())));
    }
    for (class, path) in &test_files {
        if !train_files.iter().any(|(c, _)| c == class) {
            return Err(WqatError::format(
                path,
                format!("class {class:?} has a test file but no train file ({}/{class}.txt)", train_dir.display()),
            ));
        }
    }
    for (class, path) in &train_files {
        if !test_files.iter().any(|(c, _)| c == class) {
            return Err(WqatError::format(
                path,
                format!("class {class:?} has a train file but no test file ({}/{class}.txt)", test_dir.display()),
            ));
        }
    }
    let class_names: Vec<String> = train_files.iter().map(|(c, _)| c.clone()).collect();
    let load = |files: &[(String, PathBuf)]| -> Result<Split> {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (label, (_, path)) in files.iter().enumerate() {
            let lines = parse_text_lines(&read_file(path)?).map_err(|e| at_path(e, path))?;
            if lines.is_empty() {
                return Err(WqatError::format(path, "class has no samples (every line is empty)"));
            }
            let total = (labels.len() + lines.len()).checked_mul(enc.max_len);
            if total.is_none_or(|t| t > MAX_TEXT_VALUES) {
                return Err(WqatError::format(
                    path,
                    format!("too many samples: over {MAX_TEXT_VALUES} token ids at --max-len {}", enc.max_len),
                ));
            }
            ids.reserve(lines.len() * enc.max_len);
            for line in &lines {
                enc.encode_into(line, &mut ids);
            }
            labels.extend(std::iter::repeat_n(label as u8, lines.len()));
        }
        // Files hold one class each; a fixed shuffle mixes the classes so that the first N
        // samples (calibration, --limit-train, --limit-test) are a fair sample of all of them.
        let order = crate::data::epoch_order(labels.len(), TEXT_ORDER_SEED, 0);
        let ids = order.iter().flat_map(|&i| ids[i * enc.max_len..(i + 1) * enc.max_len].iter().copied()).collect();
        let labels = order.iter().map(|&i| labels[i]).collect();
        Split::new(ids, labels, enc.max_len)
    };
    let train = Arc::new(load(&train_files)?);
    let test = Arc::new(load(&test_files)?);
    let name = root.canonicalize().ok().unwrap_or_else(|| root.to_path_buf());
    let name = name.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    Ok(Dataset {
        name: name.unwrap_or_else(|| "text".to_string()),
        shape: (1, 1, enc.max_len),
        num_classes: class_names.len(),
        class_names,
        norm: Normalization::identity(),
        train,
        test,
        text: Some(enc),
    })
}
