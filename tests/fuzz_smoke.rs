//! The CI smoke run of the fuzz targets on stable Rust (the real fuzzing is `fuzz/`, libFuzzer
//! on nightly, see fuzz/README.md): every checked-in corpus file of every target
//! (`fuzz/corpus/<target>/`) and every past crash (`fuzz/regressions/<target>/`), plus seeded
//! random mutations of them (truncations, bit flips, byte insertions and deletions, overwrites
//! with boundary bytes, splices, and for gzip inputs the same on the decompressed bytes,
//! re-compressed), go through the same entry points (`wqat::fuzzing`) under `catch_unwind`:
//! any panic fails the test, listing the inputs, which are saved for
//! `cargo fuzz run <target> <file>` and for tests/fuzz_regressions.rs.
//!
//! `cargo test --test fuzz_smoke -- --ignored write_seed_corpus` regenerates the seed files
//! (`seed-*`) from small valid inputs made here.

use flate2::write::GzEncoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use wqat::fuzzing::{self, TARGETS};

/// Random mutations per target; the whole test stays within a few seconds in the test profile.
const MUTATIONS_PER_TARGET: usize = 5000;
/// Seed of the mutation generator (fixed: a failure reproduces).
const MUTATION_SEED: u64 = 0x5eed_f022;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// The corpus files of `target` plus its past crashes (`fuzz/regressions/<target>/`).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = [corpus_dir(target), regressions]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap()))
        .collect()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).take(1 << 24).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Boundary bytes that make header fields interesting (zero, max, sign bits, ASCII digits).
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, b'0', b'9', b'{', b'"'];

/// One random mutation of `data` (`other` is a second corpus input for splicing).
fn mutate(rng: &mut ChaCha8Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        let len = v.len();
        match rng.random_range(0..7) {
            0 => v.truncate(rng.random_range(0..=len)),
            1 if len > 0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let i = rng.random_range(0..len);
                    v[i] ^= 1 << rng.random_range(0..8);
                }
            }
            2 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(at..at, ins);
            }
            3 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(64));
                v.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.random_range(0..len);
                for k in 0..rng.random_range(1..=8).min(len - at) {
                    v[at + k] = INTERESTING[rng.random_range(0..INTERESTING.len())];
                }
            }
            5 if !other.is_empty() => {
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                let to = rng.random_range(from..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..to]);
            }
            6 if len > 0 => {
                // Duplicate a chunk (repeated records, repeated JSON members).
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(256));
                let chunk = v[at..at + n].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

/// The message of the last panic (the default hook is silenced while mutations run).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Runs `target` on `input`; Err(panic message) if it panicked.
fn run_caught(target: &str, input: &[u8]) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, input).expect("known target")))
        .map_err(|_| LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default())
}

#[test]
fn corpus_and_mutations_never_panic() {
    let saved_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = info.to_string();
        }
    }));
    let out_dir = std::env::temp_dir().join(format!("wqat-fuzz-smoke-{}", std::process::id()));
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let started = std::time::Instant::now();
    for (t, target) in TARGETS.iter().enumerate() {
        let files = corpus(target);
        assert!(!files.is_empty(), "no corpus in {}", corpus_dir(target).display());
        let t0 = std::time::Instant::now();
        let mut record = |what: String, input: &[u8], msg: String| {
            let _ = std::fs::create_dir_all(&out_dir);
            let file = out_dir.join(format!("{target}-{}", failures.len()));
            let _ = std::fs::write(&file, input);
            failures.push(format!("{target}: {what} panicked ({msg}); input saved to {}", file.display()));
        };
        let mut ok = 0usize;
        for (name, bytes) in &files {
            match run_caught(target, bytes) {
                Ok(parsed) => ok += parsed as usize,
                Err(msg) => record(format!("corpus file {name}"), bytes, msg),
            }
        }
        let seeds: Vec<&(String, Vec<u8>)> = files.iter().filter(|(n, _)| n.starts_with("seed-")).collect();
        assert!(!seeds.is_empty(), "no seed-* file in {}", corpus_dir(target).display());
        let mut rng = ChaCha8Rng::seed_from_u64(MUTATION_SEED + t as u64);
        let mut mutated_ok = 0usize;
        for k in 0..MUTATIONS_PER_TARGET {
            // Half of the mutations start from a valid seed (most merged corpus files are
            // already invalid, and mutating only those would rarely get past the headers).
            let (_, base) = if rng.random_bool(0.5) {
                seeds[rng.random_range(0..seeds.len())]
            } else {
                &files[rng.random_range(0..files.len())]
            };
            let (_, other) = &files[rng.random_range(0..files.len())];
            // Half of the mutations of a gzip input change what it decompresses to.
            let inner = (wqat::data::is_gzip(base) && rng.random_bool(0.5)).then(|| gunzip(base)).flatten();
            let input = match inner {
                Some(inner) => gz(&mutate(&mut rng, &inner, other)),
                None => mutate(&mut rng, base, other),
            };
            match run_caught(target, &input) {
                Ok(parsed) => mutated_ok += parsed as usize,
                Err(msg) => record(format!("mutation {k}"), &input, msg),
            }
        }
        summary.push(format!(
            "{target}: {} corpus files ({ok} valid), {MUTATIONS_PER_TARGET} mutations ({mutated_ok} valid), {:?}",
            files.len(),
            t0.elapsed()
        ));
    }
    std::panic::set_hook(saved_hook);
    eprintln!("fuzz smoke run in {:?}:\n  {}", started.elapsed(), summary.join("\n  "));
    assert!(failures.is_empty(), "{} panics:\n{}", failures.len(), failures.join("\n"));
}

/// Writes the seed corpus: small valid inputs of every target (`seed-*` files; files libFuzzer
/// added are kept).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (target, seeds) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            assert!(fuzzing::run(target, &bytes).unwrap(), "seed {target}/{name} must parse");
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

type Seeds = Vec<(&'static str, Vec<(String, Vec<u8>)>)>;

fn seeds() -> Seeds {
    use wqat::model::import::state_dict_of;
    use wqat::model::params::param_specs;
    use wqat::tensorfile::{HostData, HostTensor, TensorFile};

    let s = |n: &str, b: Vec<u8>| (n.to_string(), b);
    let idx = |magic: u8, dims: &[u32], payload: Vec<u8>| {
        let mut v = vec![0, 0, 8, magic];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend(payload);
        v
    };
    let images = idx(3, &[2, 3, 4], (0..24).collect());
    let labels = idx(1, &[5], vec![0, 9, 3, 3, 7]);
    let cifar: Vec<u8> =
        (0..2 * 3073).map(|i| if i % 3073 == 0 { (i / 3073 * 7) as u8 } else { (i * 13 % 256) as u8 }).collect();
    let digits_all = String::from_utf8(gunzip(wqat::data::DIGITS_CSV_GZ).unwrap()).unwrap();
    let digits: String = digits_all.lines().take(3).map(|l| format!("{l}\n")).collect();

    let png = |img: image::DynamicImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let jpeg = |img: image::DynamicImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    let prefixed = |shape: u8, mut file: Vec<u8>| {
        file.insert(0, shape);
        file
    };
    let grey =
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8])));
    let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(7, 5, |x, y| {
        image::Rgb([x as u8 * 40, y as u8 * 50, 7])
    }));
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(3, 3, |x, y| {
        image::Rgba([x as u8, y as u8, 9, 128])
    }));

    let mut tf = TensorFile::new();
    tf.insert("w", HostTensor::f32(&[2, 3], vec![0.5, -1.0, 2.0, 0.0, 1e-3, 7.0]));
    tf.insert("q", HostTensor { shape: vec![3], data: HostData::I32(vec![1, -2, 3]) });
    tf.insert("c", HostTensor { shape: vec![2, 2], data: HostData::I8(vec![-128, 0, 1, 127]) });
    tf.insert("u", HostTensor { shape: vec![], data: HostData::U8(vec![200]) });
    tf.metadata.insert("format".into(), "wqat-checkpoint".into());
    tf.metadata.insert("version".into(), "1".into());

    let graph = fuzzing::state_dict_graph();
    let mut params = TensorFile::new();
    for (i, p) in param_specs(&graph).unwrap().iter().enumerate() {
        let n: usize = p.shape.iter().product();
        params.insert(p.name.clone(), HostTensor::f32(&p.shape, (0..n).map(|j| ((i + j) % 5) as f32 * 0.25).collect()));
    }
    let sd_f32 = state_dict_of(&graph, &params).unwrap().to_bytes().unwrap();
    let sd_f16 = {
        use safetensors::tensor::TensorView;
        let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = params
            .tensors
            .iter()
            .map(|(n, t)| {
                let v = t.as_f32(n).unwrap();
                (
                    n.clone(),
                    safetensors::Dtype::F16,
                    t.shape.clone(),
                    v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                )
            })
            .chain(["bn1", "bn2"].map(|b| {
                (format!("{b}.num_batches_tracked"), safetensors::Dtype::I64, vec![], 5i64.to_le_bytes().to_vec())
            }))
            .collect();
        let views = owned.iter().map(|(n, d, sh, b)| (n.clone(), TensorView::new(*d, sh.clone(), b).unwrap()));
        safetensors::serialize(views, None).unwrap()
    };

    let i64_file = {
        let b: Vec<u8> = [7i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &b).unwrap();
        safetensors::serialize([("bn1.num_batches_tracked".to_string(), v)], None).unwrap()
    };
    // Text lines: ASCII, multi-byte UTF-8 (2, 3 and 4 bytes), spaces, empty lines, a last
    // line without a newline; then CRLF endings after a byte-order mark.
    let text = "dodson\nstraße\n\nœuvre d'art\n  spaced  \n日本語のテキスト\n🦀\nlast";
    let crlf = [b"\xEF\xBB\xBF".as_slice(), b"primero\r\n\r\nsegundo\r\nni\xC3\xB1o\r\n"].concat();
    let spec_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models");
    let all_ops = r#"{"name":"all","input":[3,9,9],"num_classes":4,"nodes":[
{"name":"c1","op":"conv","out_channels":6,"kernel":3,"stride":2,"padding":1,"dilation":1,"groups":3,"bias":true,"bn":true,"act":"relu6","fp32":true,"bn_name":"b1"},
{"name":"c2","op":"conv","out_channels":6,"kernel":1,"act":"relu"},
{"name":"s","op":"add","inputs":["c1","c2"],"act":"relu"},
{"name":"m","op":"max_pool","kernel":2,"stride":1},
{"name":"a","op":"avg_pool","kernel":3,"padding":1},
{"name":"g","op":"global_avg_pool"},
{"name":"f","op":"flatten"},
{"name":"l1","op":"linear","out_features":5,"act":"relu"},
{"name":"l2","op":"linear","out_features":4,"bias":false,"inputs":["l1"]}]}"#;

    vec![
        ("idx_images", vec![s("images", images.clone()), s("images.gz", gz(&images))]),
        ("idx_labels", vec![s("labels", labels.clone()), s("labels.gz", gz(&labels))]),
        ("cifar_batch", vec![s("two-records", cifar.clone()), s("one-record.gz", gz(&cifar[..3073]))]),
        (
            "digits_csv",
            vec![s("three-rows.csv", digits.clone().into_bytes()), s("three-rows.csv.gz", gz(digits.as_bytes()))],
        ),
        (
            "image_decode",
            vec![
                s("grey8x8.png", prefixed(0, png(grey.clone()))),
                s("rgb7x5.png", prefixed(3, png(rgb.clone()))),
                s("rgba3x3.png", prefixed(1, png(rgba))),
                s("grey8x8.jpg", prefixed(2, jpeg(grey))),
                s("rgb7x5.jpg", prefixed(1, jpeg(rgb))),
            ],
        ),
        (
            "tensorfile",
            vec![
                s("mixed.safetensors", tf.to_bytes().unwrap()),
                s("state-dict.safetensors", sd_f32.clone()),
                s("i64.safetensors", i64_file),
            ],
        ),
        (
            "model_json",
            vec![
                s("mnist-cnn.json", std::fs::read(spec_dir.join("mnist-cnn.json")).unwrap()),
                s("resnet20.json", std::fs::read(spec_dir.join("resnet20.json")).unwrap()),
                s("all-ops.json", all_ops.as_bytes().to_vec()),
            ],
        ),
        ("state_dict", vec![s("f32.safetensors", sd_f32), s("f16.safetensors", sd_f16)]),
        (
            "text_lines",
            vec![
                s("words.txt", text.as_bytes().to_vec()),
                s("crlf-bom.txt", crlf.clone()),
                s("words.txt.gz", gz(text.as_bytes())),
                s("crlf-bom.txt.gz", gz(&crlf)),
            ],
        ),
    ]
}
