//! Data loaders: round trips on generated files, the embedded digits, malformed inputs (errors,
//! never panics), batcher and augmentation determinism, and full MNIST when ../shared has it.

use flate2::write::GzEncoder;
use std::io::Write;
use std::path::{Path, PathBuf};
use wqat::data::*;
use wqat::WqatError;

/// Normalized values are compared with this absolute tolerance (same f32 formula both sides).
const NORM_ATOL: f32 = 1e-6;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn pixels(n: usize, salt: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 37 + salt * 11) % 256) as u8).collect()
}

/// Asserts a format error whose message contains `needle` (case-insensitive).
fn expect_format<T: std::fmt::Debug>(what: &str, r: wqat::Result<T>, needle: &str) {
    match r {
        Err(WqatError::Format { message, .. }) => {
            assert!(message.to_lowercase().contains(needle), "{what}: message {message:?} lacks {needle:?}")
        }
        other => panic!("{what}: want a format error containing {needle:?}, got {other:?}"),
    }
}

fn write_idx_dir(dir: &Path, gzip: bool, names_without_gz: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let (trp, trl) = (pixels(7 * 20, 1), vec![3, 1, 4, 1, 5, 9, 2]);
    let (tep, tel) = (pixels(3 * 20, 2), vec![6, 5, 3]);
    let files = [
        ("train-images-idx3-ubyte", idx_images(7, 5, 4, &trp)),
        ("train-labels-idx1-ubyte", idx_labels(&trl)),
        ("t10k-images-idx3-ubyte", idx_images(3, 5, 4, &tep)),
        ("t10k-labels-idx1-ubyte", idx_labels(&tel)),
    ];
    for (name, bytes) in files {
        let (name, bytes) = match (gzip, names_without_gz) {
            (false, _) => (name.to_string(), bytes),
            (true, false) => (format!("{name}.gz"), gz(&bytes)),
            (true, true) => (name.to_string(), gz(&bytes)),
        };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    (trp, trl, tep, tel)
}

#[test]
fn idx_round_trip_raw_gz_and_misnamed_gz() {
    for (tag, gzip, plain_names) in [("raw", false, false), ("gz", true, false), ("gz-no-ext", true, true)] {
        let dir = tmpdir(&format!("idx-{tag}"));
        let (trp, trl, tep, tel) = write_idx_dir(&dir, gzip, plain_names);
        assert_eq!(detect(dir.to_str().unwrap()).unwrap(), DataSource::Idx(dir.clone()));
        let ds = load(dir.to_str().unwrap()).unwrap();
        // Named by its folder, whatever the files hold.
        let folder = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!((ds.name.as_str(), ds.shape, ds.num_classes), (folder.as_str(), (1, 5, 4), 10), "{tag}");
        assert_eq!(ds.train.labels(), &trl[..]);
        assert_eq!(ds.test.labels(), &tel[..]);
        let want = |p: &[u8]| -> Vec<f32> { p.iter().map(|&v| (v as f32 / 255.0 - MNIST_MEAN) / MNIST_STD).collect() };
        wqat::testing::assert_close(tag, ds.train.images(), &want(&trp), 0.0, NORM_ATOL);
        wqat::testing::assert_close(tag, ds.test.images(), &want(&tep), 0.0, NORM_ATOL);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn cifar_records(labels: &[u8], salt: usize) -> (Vec<u8>, Vec<u8>) {
    let px = pixels(labels.len() * 3072, salt);
    let mut bytes = Vec::new();
    for (l, img) in labels.iter().zip(px.chunks_exact(3072)) {
        bytes.push(*l);
        bytes.extend_from_slice(img);
    }
    (bytes, px)
}

#[test]
fn cifar_round_trip_raw_and_gz() {
    for gzip in [false, true] {
        let dir = tmpdir(&format!("cifar-{gzip}"));
        let (b1, p1) = cifar_records(&[0, 9, 3, 3], 1);
        let (b2, p2) = cifar_records(&[7, 2, 5], 2);
        let (bt, pt) = cifar_records(&[8, 1], 3);
        for (name, bytes) in [("data_batch_1.bin", b1), ("data_batch_2.bin", b2), ("test_batch.bin", bt)] {
            let (name, bytes) = if gzip { (format!("{name}.gz"), gz(&bytes)) } else { (name.to_string(), bytes) };
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        assert_eq!(detect(dir.to_str().unwrap()).unwrap(), DataSource::Cifar(dir.clone()));
        let ds = load(dir.to_str().unwrap()).unwrap();
        assert_eq!((ds.name.as_str(), ds.shape, ds.num_classes), ("cifar10", (3, 32, 32), 10));
        assert_eq!(ds.class_names[9], "truck");
        assert_eq!(ds.train.labels(), &[0, 9, 3, 3, 7, 2, 5]);
        assert_eq!(ds.test.labels(), &[8, 1]);
        let norm = |p: &[u8]| -> Vec<f32> {
            p.iter()
                .enumerate()
                .map(|(i, &v)| (v as f32 / 255.0 - CIFAR10_MEAN[i / 1024 % 3]) / CIFAR10_STD[i / 1024 % 3])
                .collect()
        };
        let train_px: Vec<u8> = [p1, p2].concat();
        wqat::testing::assert_close("cifar train", ds.train.images(), &norm(&train_px), 0.0, NORM_ATOL);
        wqat::testing::assert_close("cifar test", ds.test.images(), &norm(&pt), 0.0, NORM_ATOL);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn rgb(w: u32, h: u32, salt: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 40 + salt) as u8, (y * 50 + salt) as u8, (salt * 30) as u8]))
}

#[test]
fn image_folder_round_trip() {
    let root = tmpdir("folder");
    // Classes are sorted by name: "ant" (label 0, 3 images), "bee" (label 1, 6 images).
    for (class, count) in [("bee", 6u32), ("ant", 3)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..count {
            rgb(6, 5, i + if class == "bee" { 100 } else { 0 })
                .save(root.join(class).join(format!("{i:02}.png")))
                .unwrap();
        }
    }
    std::fs::write(root.join("ant").join("notes.txt"), "ignored").unwrap();
    assert_eq!(detect(root.to_str().unwrap()).unwrap(), DataSource::Folder(root.clone()));
    let ds = load(root.to_str().unwrap()).unwrap();
    assert_eq!(ds.shape, (3, 5, 6));
    assert_eq!(ds.class_names, vec!["ant", "bee"]);
    // Per class, file index 4 (every fifth) goes to test: bee/04.png.
    assert_eq!(ds.train.labels(), &[0, 0, 0, 1, 1, 1, 1, 1]);
    assert_eq!(ds.test.labels(), &[1]);
    let want = rgb(6, 5, 104);
    let img = ds.test.image(0).unwrap();
    for (x, y, p) in want.enumerate_pixels() {
        for c in 0..3 {
            let got = img[c * 30 + y as usize * 6 + x as usize];
            let exp = ds.norm.apply(c, p.0[c] as f32);
            assert!((got - exp).abs() <= NORM_ATOL, "pixel ({x},{y}) channel {c}: {got} vs {exp}");
        }
    }
    // The per-channel statistics are the training split's: normalized mean ~0.
    let mean: f32 = ds.train.images().iter().sum::<f32>() / ds.train.images().len() as f32;
    assert!(mean.abs() < 1e-3, "train mean after normalization {mean}");
    // A chosen shape converts to grey and resizes; JPEG decodes too.
    let jpg = root.join("ant").join("zz.jpg");
    image::DynamicImage::ImageRgb8(rgb(9, 7, 3)).save(&jpg).unwrap();
    let grey = load_image_folder(&root, Some((1, 4, 4))).unwrap();
    assert_eq!((grey.shape, grey.train.len() + grey.test.len()), ((1, 4, 4), 10));
    // train/ + test/ layout.
    let split = tmpdir("folder-split");
    for (part, class, salt) in [("train", "x", 1), ("train", "y", 2), ("test", "y", 3)] {
        std::fs::create_dir_all(split.join(part).join(class)).unwrap();
        rgb(4, 4, salt).save(split.join(part).join(class).join("a.png")).unwrap();
    }
    let ds = load(split.to_str().unwrap()).unwrap();
    assert_eq!((ds.train.labels(), ds.test.labels()), (&[0u8, 1][..], &[1u8][..]));
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
}

#[test]
fn digits_embedded() {
    let ds = Dataset::digits().unwrap();
    assert_eq!((ds.name.as_str(), ds.shape, ds.num_classes), ("digits", (1, 8, 8), 10));
    assert_eq!((ds.train.len(), ds.test.len()), (1438, 359));
    assert_eq!(ds.train.images().len(), 1438 * 64);
    assert!(ds.train.labels().iter().chain(ds.test.labels()).all(|&l| l < 10));
    let again = load("digits").unwrap();
    assert_eq!((ds.train.labels(), ds.test.images()), (again.train.labels(), again.test.images()));
    // Every class appears in the test split; normalization gives mean ~0, std ~1 overall.
    assert!((0..10).all(|c| ds.test.labels().contains(&c)));
    let all: Vec<f32> = [ds.train.images(), ds.test.images()].concat();
    let mean = all.iter().sum::<f32>() / all.len() as f32;
    let std = (all.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / all.len() as f32).sqrt();
    assert!(mean.abs() < 1e-3 && (std - 1.0).abs() < 1e-3, "digits normalized mean {mean} std {std}");
    let (px, labels) = parse_digits_csv(DIGITS_CSV_GZ).unwrap();
    assert_eq!((px.len(), labels.len(), labels[0], labels[1]), (1797 * 64, 1797, 0, 1));
}

#[test]
fn malformed_idx_gives_errors() {
    let good = idx_images(2, 3, 3, &pixels(18, 0));
    expect_format("empty", parse_idx_images(&[]), "truncated");
    expect_format("bad magic", parse_idx_images(&[1, 2, 3, 4, 0, 0, 0, 1]), "bad magic");
    expect_format("type", parse_idx_images(&[0, 0, 0x0d, 3, 0, 0, 0, 1]), "element type");
    expect_format("labels as images", parse_idx_images(&idx_labels(&[1, 2])), "dimension");
    expect_format("images as labels", parse_idx_labels(&good, 10), "dimension");
    expect_format("short header", parse_idx_images(&good[..10]), "truncated");
    expect_format("short data", parse_idx_images(&good[..good.len() - 1]), "truncated");
    expect_format("trailing", parse_idx_images(&[&good[..], &[0]].concat()), "trailing");
    expect_format("zero dim", parse_idx_images(&idx_images(2, 0, 3, &[])), "zero");
    let huge = idx_images(u32::MAX, u32::MAX, u32::MAX, &[1, 2, 3]);
    expect_format("huge claim", parse_idx_images(&huge), "claims");
    expect_format(
        "huge count",
        parse_idx_labels(&idx_labels(&[1])[..4].iter().chain(&[255u8; 4]).copied().collect::<Vec<_>>(), 10),
        "truncated",
    );
    expect_format("label range", parse_idx_labels(&idx_labels(&[1, 10]), 10), "out of range");
    let z = gz(&good);
    let mut flipped = z.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0x55;
    expect_format("gz flipped", parse_idx_images(&flipped), "gzip");
    expect_format("gz cut", parse_idx_images(&z[..z.len() - 5]), "gzip");
    let mut crc = z.clone();
    let at = crc.len() - 8;
    crc[at] ^= 1;
    expect_format("gz crc", parse_idx_images(&crc), "gzip");
    expect_format("gz header only", parse_idx_images(&[0x1f, 0x8b]), "gzip");
    // Every prefix of a valid file (raw and gz) is an error, never a panic.
    for k in 0..good.len() {
        assert!(parse_idx_images(&good[..k]).is_err(), "raw prefix {k}");
    }
    for k in 0..z.len() {
        assert!(parse_idx_images(&z[..k]).is_err(), "gz prefix {k}");
    }
    // Count mismatch and size mismatch between files of a directory.
    let dir = tmpdir("idx-bad");
    write_idx_dir(&dir, false, false);
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&[1, 2, 3])).unwrap();
    expect_format("count mismatch", load_idx_dir(&dir), "disagree");
    write_idx_dir(&dir, false, false);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(3, 4, 5, &pixels(60, 0))).unwrap();
    expect_format("dims mismatch", load_idx_dir(&dir), "test images are 4x5");
    write_idx_dir(&dir, false, false);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(&[1, 200, 3])).unwrap();
    match load_idx_dir(&dir) {
        Err(WqatError::Format { path, message }) => {
            assert!(path.ends_with("t10k-labels-idx1-ubyte") && message.contains("200"), "{path:?}: {message}")
        }
        other => panic!("label out of range: {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_cifar_digits_images_give_errors() {
    let (good, _) = cifar_records(&[1, 2], 0);
    expect_format("empty", parse_cifar_batch(&[]), "empty");
    expect_format("short", parse_cifar_batch(&good[..3072]), "truncated");
    expect_format("long", parse_cifar_batch(&[&good[..], &[0; 5]].concat()), "truncated");
    let mut bad_label = good.clone();
    bad_label[3073] = 10;
    expect_format("label", parse_cifar_batch(&bad_label), "record 1 has label 10");
    let z = gz(&good);
    expect_format("gz cut", parse_cifar_batch(&z[..z.len() / 2]), "gzip");
    for k in (0..good.len()).step_by(97) {
        assert!(parse_cifar_batch(&good[..k]).is_err(), "prefix {k}");
    }
    assert_eq!(parse_cifar_batch(&gz(&good)).unwrap().labels, vec![1, 2]);

    let row = |v: &str, l: &str| format!("{}{v},{l}\n", "0,".repeat(63));
    expect_format("fields", parse_digits_csv(b"1,2,3\n"), "fields");
    expect_format("pixel", parse_digits_csv(row("17", "1").as_bytes()), "over 16");
    expect_format("label", parse_digits_csv(row("1", "10").as_bytes()), "label");
    expect_format("text", parse_digits_csv(row("x", "1").as_bytes()), "not an integer");
    expect_format("utf8", parse_digits_csv(&[0xff, 0xfe, 0x00]), "utf-8");
    expect_format("empty", parse_digits_csv(b"\n\n"), "no rows");
    expect_format("gz", parse_digits_csv(&DIGITS_CSV_GZ[..1000]), "gzip");
    assert_eq!(parse_digits_csv(row("16", "9").as_bytes()).unwrap().1, vec![9]);

    expect_format("random bytes", decode_image(&pixels(300, 5), (3, 4, 4)), "decode");
    let mut png = Vec::new();
    rgb(8, 8, 1).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    expect_format("cut png", decode_image(&png[..png.len() / 2], (3, 4, 4)), "decode");
    assert!(matches!(decode_image(&png, (2, 4, 4)), Err(WqatError::InvalidArgument(_))));
    assert!(matches!(decode_image(&png, (3, 0, 4)), Err(WqatError::InvalidArgument(_))));
    assert_eq!(decode_image(&png, (3, 8, 8)).unwrap().len(), 192);
    let root = tmpdir("folder-bad");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a").join("x.png"), &png[..40]).unwrap();
    match load_image_folder(&root, Some((3, 8, 8))) {
        Err(WqatError::Format { path, .. }) => assert!(path.ends_with("x.png"), "{path:?}"),
        other => panic!("corrupt png: {other:?}"),
    }
    std::fs::remove_dir_all(&root).unwrap();

    let empty = tmpdir("empty");
    expect_format("empty dir", load(empty.to_str().unwrap()), "no data set");
    assert!(load("/nonexistent/wqat/data").is_err());
    let file = empty.join("f.bin");
    std::fs::write(&file, b"x").unwrap();
    expect_format("a file", load(file.to_str().unwrap()), "not a directory");
    std::fs::remove_dir_all(&empty).unwrap();
}

fn small_split(n: usize, shape: (usize, usize, usize)) -> std::sync::Arc<Split> {
    let len = shape.0 * shape.1 * shape.2;
    let images = (0..n * len).map(|i| i as f32 * 0.01).collect();
    std::sync::Arc::new(Split::new(images, (0..n).map(|i| (i % 10) as u8).collect(), len).unwrap())
}

#[test]
fn batcher_determinism_and_shapes() {
    let ds = Dataset::digits().unwrap();
    let b = Batcher::train(&ds, BatchConfig::train(100, 7)).unwrap();
    assert_eq!(b.batches_per_epoch(), 14);
    let e0: Vec<Batch> = b.epoch(0).collect();
    let again: Vec<Batch> = Batcher::train(&ds, BatchConfig::train(100, 7)).unwrap().epoch(0).collect();
    assert_eq!(e0, again, "same seed and epoch must give the same batches");
    assert_eq!(e0[3], b.batch(0, 3).unwrap(), "background thread and direct call agree");
    let e1: Vec<Batch> = b.epoch(1).collect();
    assert_ne!(e0[0].labels, e1[0].labels, "epochs differ");
    let s8: Vec<Batch> = Batcher::train(&ds, BatchConfig::train(100, 8)).unwrap().epoch(0).collect();
    assert_ne!(e0[0].images, s8[0].images, "seeds differ");
    for (k, batch) in e0.iter().enumerate() {
        assert_eq!((batch.index, batch.size, batch.images.len(), batch.labels.len()), (k, 100, 6400, 100));
    }
    let mut order = b.order(0);
    assert_eq!(&order[..3], &epoch_order(1438, 7, 0)[..3]);
    order.sort_unstable();
    assert_eq!(order, (0..1438).collect::<Vec<_>>(), "an epoch is a permutation");
    for (k, &i) in b.order(0)[..100].iter().enumerate() {
        assert_eq!(e0[0].labels[k], ds.train.labels()[i] as u32);
        assert_eq!(&e0[0].images[k * 64..(k + 1) * 64], ds.train.image(i).unwrap());
    }
    // Evaluation keeps the last partial batch, in file order.
    let ev: Vec<Batch> = Batcher::test(&ds, BatchConfig::eval(100)).unwrap().epoch(0).collect();
    assert_eq!(ev.iter().map(|b| b.size).collect::<Vec<_>>(), vec![100, 100, 100, 59]);
    let labels: Vec<u32> = ev.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, ds.test.labels().iter().map(|&l| l as u32).collect::<Vec<_>>());
    // Limit: the first N training images only.
    let lim = Batcher::train(&ds, BatchConfig::train(100, 7).with_limit(250)).unwrap();
    assert_eq!((lim.num_images(), lim.batches_per_epoch()), (250, 2));
    assert!(lim.order(3).iter().all(|&i| i < 250));
    // Dropping an iterator early stops its thread; recycled buffers are reused.
    let mut it = b.epoch(2);
    let first = it.next().unwrap();
    it.recycle(first);
    assert_eq!(it.len(), 13);
    drop(it);
    // Bad configurations are errors.
    assert!(Batcher::train(&ds, BatchConfig::train(0, 1)).is_err());
    assert!(Batcher::train(&ds, BatchConfig::train(5000, 1)).is_err());
    assert!(Batcher::train(&ds, BatchConfig::train(10, 1).with_limit(0)).is_err());
    assert!(Batcher::new(small_split(4, (3, 2, 2)), (1, 2, 2), &Normalization::mnist(), BatchConfig::eval(2)).is_err());
}

#[test]
fn augmentation_determinism_and_semantics() {
    let shape = (3, 32, 32);
    let split = small_split(20, shape);
    let cfg = BatchConfig::train(8, 11).with_augment(Augment::cifar());
    let norm = Normalization::cifar10();
    let run =
        |cfg: BatchConfig| -> Vec<Batch> { Batcher::new(split.clone(), shape, &norm, cfg).unwrap().epoch(4).collect() };
    let a = run(cfg.clone());
    assert_eq!(a, run(cfg.clone()), "augmentation is deterministic under seed and epoch");
    assert_ne!(a[0].images, run(BatchConfig { augment: None, ..cfg.clone() })[0].images, "augmentation changes images");
    assert_ne!(a[0].images, run(BatchConfig { seed: 12, ..cfg.clone() })[0].images);
    // Every output value is either a source value of the same image and channel or the fill.
    let b = Batcher::new(split.clone(), shape, &norm, cfg).unwrap();
    for (k, &i) in b.order(4)[..8].iter().enumerate() {
        let src = split.image(i).unwrap();
        for ch in 0..3 {
            let fill = norm.zero_value(ch);
            let plane = &src[ch * 1024..(ch + 1) * 1024];
            for &v in &a[0].images[k * 3072 + ch * 1024..k * 3072 + (ch + 1) * 1024] {
                assert!(v == fill || plane.contains(&v), "image {i} channel {ch}: {v} is neither source nor fill");
            }
        }
    }
    // Semantics on one image: identity, shift, flip.
    let (c, h, w) = (2, 3, 4);
    let src: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
    let fill = [-1.0, -2.0];
    let mut dst = vec![0.0; src.len()];
    let p = |dx, dy, flip| AugmentParams { dx, dy, flip };
    augment_image(&src, &mut dst, (c, h, w), &fill, 2, p(2, 2, false)).unwrap();
    assert_eq!(dst, src, "centre crop without flip is the identity");
    augment_image(&src, &mut dst, (c, h, w), &fill, 2, p(3, 2, false)).unwrap();
    assert_eq!(&dst[..4], &[1.0, 2.0, 3.0, -1.0], "shift left by one, fill on the right");
    augment_image(&src, &mut dst, (c, h, w), &fill, 2, p(2, 0, false)).unwrap();
    assert_eq!(&dst[12..20], &[-2.0, -2.0, -2.0, -2.0, -2.0, -2.0, -2.0, -2.0], "two fill rows on top");
    augment_image(&src, &mut dst, (c, h, w), &fill, 0, p(0, 0, true)).unwrap();
    assert_eq!(&dst[..4], &[3.0, 2.0, 1.0, 0.0], "flip");
    let mut twice = vec![0.0; src.len()];
    augment_image(&dst, &mut twice, (c, h, w), &fill, 0, p(0, 0, true)).unwrap();
    assert_eq!(twice, src, "flip twice is the identity");
    assert!(augment_image(&src, &mut dst, (c, h, w), &fill, 2, p(5, 0, false)).is_err());
    assert!(augment_image(&src[1..], &mut dst, (c, h, w), &fill, 2, p(0, 0, false)).is_err());
}

/// ../shared/data/<name> seen from the project root, or from a worktree one level deeper.
fn shared(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("../shared/data").join(name), root.join("../../shared/data").join(name)].into_iter().find(|p| p.is_dir())
}

#[test]
fn full_mnist_if_present() {
    let Some(dir) = shared("mnist") else {
        eprintln!("SKIPPED full_mnist_if_present: ../shared/data/mnist is absent");
        return;
    };
    let t = std::time::Instant::now();
    let ds = load_idx_dir(&dir).unwrap();
    eprintln!("loaded full MNIST in {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!((ds.train.len(), ds.test.len(), ds.shape), (60000, 10000, (1, 28, 28)));
    assert_eq!(&ds.train.labels()[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&ds.test.labels()[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let mean = ds.train.images().iter().map(|&v| v as f64).sum::<f64>() / ds.train.images().len() as f64;
    assert!(mean.abs() < 1e-3, "MNIST train mean after normalization {mean}");
}

#[test]
fn cifar_golden_if_present() {
    let Some(dir) = shared("cifar10") else {
        eprintln!("SKIPPED cifar_golden_if_present: ../shared/data/cifar10 is absent");
        return;
    };
    let bytes = std::fs::read(dir.join("train_first4000_lossless.bin.gz")).unwrap();
    let b = parse_cifar_batch(&bytes).unwrap();
    assert_eq!((b.labels.len(), b.pixels.len()), (4000, 4000 * 3072));
    assert_eq!(&b.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
}

#[test]
fn random_mutations_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xF022);
    let idx = idx_images(3, 4, 5, &pixels(60, 1));
    let (cifar, _) = cifar_records(&[1, 2], 0);
    let csv = format!("{}16,3\n", "1,".repeat(63)).into_bytes();
    let mut png = Vec::new();
    rgb(6, 6, 2).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let inputs = [idx.clone(), gz(&idx), idx_labels(&[1, 2, 3]), cifar.clone(), gz(&cifar), csv.clone(), gz(&csv), png];
    for round in 0..400 {
        for (k, input) in inputs.iter().enumerate() {
            let mut m = input.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..m.len());
                match rng.random_range(0..3) {
                    0 => m[at] = rng.random(),
                    1 => m.truncate(at),
                    _ => m.insert(at, rng.random()),
                }
                if m.is_empty() {
                    break;
                }
            }
            // Results may be Ok or Err; reaching the end of the loop means nothing panicked.
            let _ = (parse_idx_images(&m), parse_idx_labels(&m, 10), parse_cifar_batch(&m), parse_digits_csv(&m));
            if k == 7 && round % 4 == 0 {
                let _ = decode_image(&m, (3, 6, 6));
            }
        }
    }
}

/// Manual: `cargo test --test data_loaders -- --ignored --nocapture` (about 1 GB of memory).
#[test]
#[ignore = "loads all of CIFAR-10 (~0.7 GB as f32); run by hand"]
fn full_cifar_and_batcher_throughput() {
    let Some(dir) = shared("cifar10") else {
        eprintln!("SKIPPED full_cifar_and_batcher_throughput: ../shared/data/cifar10 is absent");
        return;
    };
    let t = std::time::Instant::now();
    let ds = load(dir.to_str().unwrap()).unwrap();
    eprintln!("loaded full CIFAR-10 in {:.2} s: {}", t.elapsed().as_secs_f64(), ds.summary());
    assert_eq!((ds.train.len(), ds.test.len()), (50000, 10000));
    assert_eq!(&ds.train.labels()[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    let b = Batcher::train(&ds, BatchConfig::train(128, 1).with_augment(Augment::cifar())).unwrap();
    let t = std::time::Instant::now();
    let mut it = b.epoch(0);
    let mut n = 0;
    while let Some(batch) = it.next() {
        n += batch.size;
        it.recycle(batch);
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!("augmented epoch: {n} images in {s:.2} s ({:.0} images/s)", n as f64 / s);
}

/// Writes `root/<split>/<file>` (directories created).
fn write_text(root: &Path, split: &str, file: &str, bytes: &[u8]) {
    std::fs::create_dir_all(root.join(split)).unwrap();
    std::fs::write(root.join(split).join(file), bytes).unwrap();
}

/// Token ids of `bytes` as [`TextEncoding::encode`] should give them: CLS, the bytes cut to
/// `max_len - 1`, PAD to `max_len`.
fn ids(bytes: &[u8], max_len: usize) -> Vec<f32> {
    let k = bytes.len().min(max_len - 1);
    let mut v = vec![256.0];
    v.extend(bytes[..k].iter().map(|&b| b as f32));
    v.resize(max_len, 257.0);
    v
}

#[test]
fn text_encoding_ids() {
    assert_eq!(
        (TextEncoding::BYTE_VOCAB, TextEncoding::CLS_ID, TextEncoding::PAD_ID, TextEncoding::VOCAB),
        (256, 256, 257, 258)
    );
    let e = TextEncoding::new(6).unwrap();
    assert_eq!(e.encode("hi"), vec![256.0, 104.0, 105.0, 257.0, 257.0, 257.0]);
    assert_eq!(e.encode(""), vec![256.0, 257.0, 257.0, 257.0, 257.0, 257.0]);
    assert_eq!(e.encode("abcde"), vec![256.0, 97.0, 98.0, 99.0, 100.0, 101.0], "exactly max_len - 1 bytes: no PAD");
    assert_eq!(e.encode("abcdefgh"), ids(b"abcdefgh", 6), "cut to max_len - 1 bytes");
    // "straße": 's' 't' 'r' 'a' then ß = C3 9F; the cut after 5 bytes splits the character.
    assert_eq!(e.encode("straße"), vec![256.0, 115.0, 116.0, 114.0, 97.0, 195.0]);
    assert_eq!(TextEncoding::new(2).unwrap().encode("xyz"), vec![256.0, 120.0]);
    assert_eq!(TextEncoding::default().max_len, DEFAULT_MAX_LEN);
    assert_eq!(DEFAULT_MAX_LEN, 24);
    for bad in [0, 1, MAX_TEXT_LEN + 1] {
        assert!(matches!(TextEncoding::new(bad), Err(WqatError::InvalidArgument(_))), "max_len {bad}");
    }
    // Hand-built invalid values do not panic.
    assert_eq!(TextEncoding { max_len: 1 }.encode("abc"), vec![256.0]);
    assert!(TextEncoding { max_len: 0 }.encode("abc").is_empty());
    let json = serde_json::to_string(&e).unwrap();
    assert_eq!(json, r#"{"max_len":6}"#);
    assert_eq!(serde_json::from_str::<TextEncoding>(&json).unwrap(), e);
}

#[test]
fn parse_text_lines_rules() {
    let lines = parse_text_lines(b"\xEF\xBB\xBFone\r\n\r\n\ntwo words\n  spaced \r\nni\xC3\xB1o\nlast").unwrap();
    assert_eq!(lines, ["one", "two words", "  spaced ", "niño", "last"]);
    assert!(parse_text_lines(b"").unwrap().is_empty());
    assert!(parse_text_lines(b"\n\r\n\n").unwrap().is_empty());
    assert_eq!(parse_text_lines(&gz(b"a\nb\n")).unwrap(), ["a", "b"]);
    let r = parse_text_lines(b"good\n\nfine\nbad\xFFbyte\n");
    expect_format("utf8", r, "line 4");
    match parse_text_lines(b"ok\n\xC3\n") {
        Err(e @ WqatError::Format { .. }) => {
            let m = e.to_string();
            assert!(m.contains("<bytes>") && m.contains("line 2") && m.contains("UTF-8"), "{m}");
        }
        other => panic!("truncated UTF-8: {other:?}"),
    }
    expect_format("gz cut", parse_text_lines(&gz(b"hello\nworld\n")[..12]), "gzip");
}

#[test]
fn text_folder_round_trip() {
    let root = tmpdir("text");
    // Class files are read in name order whatever the directory order; a gzipped class,
    // CRLF endings, empty lines, a last line without newline, multi-byte UTF-8.
    write_text(&root, "train", "zeta.txt", b"zz top\nz\n");
    write_text(&root, "train", "alpha.txt", "hi\r\n\r\n\nstraße\r\nlast".as_bytes());
    write_text(&root, "train", "mid.txt.gz", &gz("日本\n\nx\n".as_bytes()));
    write_text(&root, "train", "README.md", b"not a class");
    write_text(&root, "train", ".hidden.txt", b"not a class either");
    write_text(&root, "test", "alpha.txt", b"yo\n");
    write_text(&root, "test", "mid.txt", b"m1\nm2\n");
    write_text(&root, "test", "zeta.txt", b"\nzulu\n");
    let spec = root.to_str().unwrap();
    assert_eq!(detect(spec).unwrap(), DataSource::Text(root.clone()));
    assert!(is_text_folder(&root));

    let ds = load_with(spec, &LoadOptions { max_len: 6 }).unwrap();
    assert_eq!(ds.name, root.file_name().unwrap().to_str().unwrap());
    assert_eq!((ds.shape, ds.num_classes), ((1, 1, 6), 3));
    assert_eq!(ds.class_names, ["alpha", "mid", "zeta"]);
    assert_eq!(ds.text, Some(TextEncoding { max_len: 6 }));
    assert_eq!(ds.norm, Normalization::identity());
    assert_eq!(ds.norm.apply(0, 257.0), 257.0, "identity normalization");
    // Samples in class then line order, stored in the fixed shuffled order (classes mixed).
    let stored = |n: usize| wqat::data::epoch_order(n, wqat::data::TEXT_ORDER_SEED, 0);
    let (tro, teo) = (stored(7), stored(4));
    let train_labels = [0u8, 0, 0, 1, 1, 2, 2];
    assert_eq!(ds.train.labels(), tro.iter().map(|&i| train_labels[i]).collect::<Vec<_>>());
    let test_labels = [0u8, 1, 1, 2];
    assert_eq!(ds.test.labels(), teo.iter().map(|&i| test_labels[i]).collect::<Vec<_>>());
    let train: Vec<&[u8]> = vec![b"hi", "straße".as_bytes(), b"last", "日本".as_bytes(), b"x", b"zz top", b"z"];
    let want: Vec<f32> = tro.iter().flat_map(|&i| ids(train[i], 6)).collect();
    assert_eq!(ds.train.images(), &want[..]);
    let test_text = [&b"yo"[..], b"m1", b"m2", b"zulu"];
    let test: Vec<f32> = teo.iter().flat_map(|&i| ids(test_text[i], 6)).collect();
    assert_eq!(ds.test.images(), &test[..]);
    // "straße" is cut inside ß (5 bytes kept), 日本 (6 bytes) inside 本.
    let at = |k: usize| tro.iter().position(|&i| i == k).unwrap();
    assert_eq!(ds.train.image(at(1)).unwrap(), &[256.0, 115.0, 116.0, 114.0, 97.0, 195.0]);
    assert_eq!(ds.train.image(at(3)).unwrap(), &[256.0, 230.0, 151.0, 165.0, 230.0, 156.0]);
    assert!(ds.summary().contains("3 classes, 7 train / 4 test sequences of at most 6 tokens"), "{}", ds.summary());

    // The default max_len; `load` = `load_with` defaults.
    let ds24 = load(spec).unwrap();
    assert_eq!((ds24.shape, ds24.text), ((1, 1, 24), Some(TextEncoding { max_len: 24 })));
    assert_eq!(ds24.train.image(at(1)).unwrap(), &ids("straße".as_bytes(), 24)[..]);
    assert_eq!(load_text_folder(&root, TextEncoding::new(6).unwrap()).unwrap().train.images(), &want[..]);

    // Text is never augmented: the batcher drops the augmentation and hands out the ids.
    let cfg = BatchConfig::train(7, 3).with_augment(Augment::cifar());
    let b = Batcher::train(&ds, cfg.clone()).unwrap();
    assert_eq!(b.config().augment, None);
    let batch = b.batch(0, 0).unwrap();
    for (k, &i) in b.order(0).iter().enumerate() {
        assert_eq!(&batch.images[k * 6..(k + 1) * 6], ds.train.image(i).unwrap(), "sample {i}");
        assert_eq!(batch.labels[k], ds.train.labels()[i] as u32);
    }
    assert_eq!(Batcher::test(&ds, BatchConfig::eval(4).with_augment(Augment::cifar())).unwrap().config().augment, None);
    // Image sets keep it.
    let digits = Dataset::digits().unwrap();
    assert!(digits.text.is_none());
    assert_eq!(Batcher::train(&digits, cfg).unwrap().config().augment, Some(Augment::cifar()));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Asserts a format error on a path ending in `file` whose message contains `needle`.
fn expect_text_error(what: &str, r: wqat::Result<Dataset>, file: &str, needle: &str) {
    match r {
        Err(WqatError::Format { path, message }) => {
            assert!(path.ends_with(file), "{what}: error names {path:?}, want .../{file}");
            assert!(message.contains(needle), "{what}: message {message:?} lacks {needle:?}");
        }
        other => panic!("{what}: want a format error on {file}, got {other:?}"),
    }
}

#[test]
fn malformed_text_folders_give_errors() {
    let root = tmpdir("text-bad");
    let spec = root.to_str().unwrap().to_string();
    let reset = || {
        let _ = std::fs::remove_dir_all(&root);
        write_text(&root, "train", "a.txt", b"one\ntwo\n");
        write_text(&root, "train", "b.txt", b"three\n");
        write_text(&root, "test", "a.txt", b"four\n");
        write_text(&root, "test", "b.txt", b"five\n");
    };
    reset();
    assert_eq!(load(&spec).unwrap().train.len(), 3);

    write_text(&root, "train", "b.txt", b"fine\n\nbad \xC3\x28 here\n");
    expect_text_error("bad utf-8", load(&spec), "train/b.txt", "line 3");
    write_text(&root, "train", "b.txt", &gz(b"ok\n\xFF\n"));
    expect_text_error("bad utf-8 in gzip", load(&spec), "train/b.txt", "line 2");
    write_text(&root, "train", "b.txt", &gz(b"ok\nok\nok\n")[..15]);
    expect_text_error("cut gzip", load(&spec), "train/b.txt", "gzip");

    reset();
    write_text(&root, "test", "b.txt", b"\n\r\n\n");
    expect_text_error("empty class", load(&spec), "test/b.txt", "no samples");
    write_text(&root, "test", "b.txt", b"");
    expect_text_error("empty file", load(&spec), "test/b.txt", "no samples");

    reset();
    std::fs::remove_file(root.join("test/b.txt")).unwrap();
    expect_text_error("missing in test", load(&spec), "train/b.txt", "no test file");
    reset();
    write_text(&root, "test", "c.txt", b"six\n");
    expect_text_error("missing in train", load(&spec), "test/c.txt", "no train file");
    reset();
    write_text(&root, "train", "a.txt.gz", &gz(b"dup\n"));
    expect_text_error("two files for a class", load(&spec), "train/a.txt.gz", "two files");

    reset();
    for f in ["a.txt", "b.txt"] {
        std::fs::remove_file(root.join("test").join(f)).unwrap();
    }
    expect_text_error("no test files", load(&spec), "test", "no <class>.txt");
    std::fs::remove_dir_all(root.join("test")).unwrap();
    expect_text_error("no test dir", load(&spec), "test", "missing directory");

    reset();
    for f in ["a.txt", "b.txt"] {
        std::fs::remove_file(root.join("train").join(f)).unwrap();
    }
    expect_format("no train files", load(&spec), "no data set");

    reset();
    assert!(matches!(load_with(&spec, &LoadOptions { max_len: 1 }), Err(WqatError::InvalidArgument(_))));
    // Image sets ignore max_len.
    assert_eq!(load_with("digits", &LoadOptions { max_len: 1 }).unwrap().shape, (1, 8, 8));

    let _ = std::fs::remove_dir_all(&root);
    for c in 0..257 {
        write_text(&root, "train", &format!("c{c:03}.txt"), b"x\n");
        write_text(&root, "test", &format!("c{c:03}.txt"), b"x\n");
    }
    expect_text_error("257 classes", load(&spec), "train", "at most 256");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn words_if_present() {
    let Some(dir) = shared("words") else {
        eprintln!("SKIPPED words_if_present: ../shared/data/words is absent");
        return;
    };
    let t = std::time::Instant::now();
    let ds = load(dir.to_str().unwrap()).unwrap();
    eprintln!("loaded words in {:.2} s: {}", t.elapsed().as_secs_f64(), ds.summary());
    assert_eq!(ds.name, "words");
    assert_eq!(ds.class_names, ["dutch", "english", "french", "german", "italian", "spanish"]);
    assert_eq!((ds.num_classes, ds.train.len(), ds.test.len()), (6, 120_000, 12_000));
    assert_eq!(ds.shape, (1, 1, 24));
    for c in 0..6u8 {
        assert_eq!(ds.train.labels().iter().filter(|&&l| l == c).count(), 20_000, "train class {c}");
        assert_eq!(ds.test.labels().iter().filter(|&&l| l == c).count(), 2_000, "test class {c}");
    }
    for split in [&ds.train, &ds.test] {
        for i in 0..split.len() {
            let s = split.image(i).unwrap();
            assert_eq!(s[0], 256.0);
            assert!(s[1] < 256.0, "sample {i} is empty");
            assert!(s.iter().all(|&v| v.fract() == 0.0 && (0.0..258.0).contains(&v)));
        }
    }
    // The first line of train/english.txt (sample 20,000 in class order) is "dodson".
    let order = wqat::data::epoch_order(ds.train.len(), wqat::data::TEXT_ORDER_SEED, 0);
    let first_en = order.iter().position(|&i| i == 20_000).unwrap();
    assert_eq!(ds.train.labels()[first_en], 1);
    assert_eq!(ds.train.image(first_en).unwrap(), &ids(b"dodson", 24)[..]);
}
