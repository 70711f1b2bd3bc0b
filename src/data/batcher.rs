//! Batches for training and evaluation: seeded per-epoch shuffling, optional augmentation, and a
//! background thread that prepares the next batches while the GPU runs the current one.

use super::augment::{augment_image, Augment};
use super::{Dataset, Normalization, Split};
use crate::{Result, WqatError};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Salt that separates the augmentation stream from the shuffling stream of the same seed.
const AUGMENT_SALT: u64 = 0xA0C3_5EED_0F1F_2B4D;
/// ChaCha words reserved per image in the augmentation stream (a draw uses 6).
const AUGMENT_WORDS_PER_IMAGE: u128 = 8;

/// A value in `0..n` from one u64 (multiply-shift; the bias is below 2^-32 for n < 2^32).
/// Written out rather than taken from `rand` so orders stay the same across `rand` versions.
pub(crate) fn below(rng: &mut impl RngCore, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// Fisher-Yates shuffle driven by [`below`].
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut impl RngCore) {
    for i in (1..v.len()).rev() {
        v.swap(i, below(rng, i + 1));
    }
}

/// The order of `n` images in epoch `epoch`: a Fisher-Yates shuffle of `0..n` driven by
/// ChaCha8 seeded with `seed` on stream `epoch`. The same (seed, epoch) always gives the same
/// order; epochs differ from each other.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut rng);
    order
}

/// How a [`Batcher`] cuts a split into batches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Images per batch (>= 1).
    pub batch_size: usize,
    /// Shuffle per epoch (see [`epoch_order`]); off keeps file order.
    pub shuffle: bool,
    /// Drop the last partial batch (training) or keep it smaller (evaluation).
    pub drop_last: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Augmentation applied to every image (training only, in practice).
    pub augment: Option<Augment>,
    /// Use only the first N images of the split.
    pub limit: Option<usize>,
    /// Batches the background thread prepares ahead (the channel bound, >= 1).
    pub prefetch: usize,
}

impl BatchConfig {
    /// Training: shuffled with `seed`, last partial batch dropped, 3 batches prefetched.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        BatchConfig { batch_size, shuffle: true, drop_last: true, seed, augment: None, limit: None, prefetch: 3 }
    }
    /// Evaluation: file order, every image once (last batch may be smaller).
    pub fn eval(batch_size: usize) -> Self {
        BatchConfig { batch_size, shuffle: false, drop_last: false, seed: 0, augment: None, limit: None, prefetch: 3 }
    }
    /// With augmentation.
    pub fn with_augment(mut self, augment: Augment) -> Self {
        self.augment = Some(augment);
        self
    }
    /// With only the first `n` images.
    pub fn with_limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
}

/// One batch ready to upload: `images` is contiguous f32 `[size, C, H, W]`, `labels` u32 `[size]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The epoch it belongs to.
    pub epoch: u64,
    /// Its index within the epoch.
    pub index: usize,
    /// Number of images (the batch size, or less for a kept last batch).
    pub size: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
}

/// Cuts one split into batches; cheap to clone (the split is shared).
#[derive(Clone, Debug)]
pub struct Batcher {
    split: Arc<Split>,
    shape: (usize, usize, usize),
    fill: Vec<f32>,
    cfg: BatchConfig,
    n: usize,
}

/// `cfg` as it applies to `ds`: augmentation is for images only.
fn for_dataset(ds: &Dataset, mut cfg: BatchConfig) -> BatchConfig {
    if ds.text.is_some() {
        cfg.augment = None;
    }
    cfg
}

impl Batcher {
    /// Batches of `split` (images of `shape`, normalized by `norm`, which gives the padding
    /// value of augmentation). Errors on a zero batch size or limit, a shape that does not
    /// match the split, or a training config that would yield no batch at all.
    pub fn new(
        split: Arc<Split>,
        shape: (usize, usize, usize),
        norm: &Normalization,
        cfg: BatchConfig,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        norm.validate()?;
        if cfg.batch_size == 0 || cfg.limit == Some(0) {
            return Err(WqatError::invalid("batch size and limit must be at least 1"));
        }
        if split.image_len() != c * h * w || norm.channels() != c {
            return Err(WqatError::shape(format!(
                "batcher: split images have {} values, shape {c}x{h}x{w}, normalization {} channels",
                split.image_len(),
                norm.channels()
            )));
        }
        let n = cfg.limit.map_or(split.len(), |l| l.min(split.len()));
        if n == 0 || (cfg.drop_last && n < cfg.batch_size) {
            return Err(WqatError::invalid(format!(
                "{n} images cannot fill one batch of {} (the last partial batch is dropped)",
                cfg.batch_size
            )));
        }
        let fill = (0..c).map(|ch| norm.zero_value(ch)).collect();
        Ok(Batcher { split, shape, fill, cfg, n })
    }
    /// Batches of the training split of `ds`. A text data set is never augmented: its
    /// `cfg.augment` is dropped (a crop or flip would shift or reverse token ids).
    pub fn train(ds: &Dataset, cfg: BatchConfig) -> Result<Self> {
        Batcher::new(ds.train.clone(), ds.shape, &ds.norm, for_dataset(ds, cfg))
    }
    /// Batches of the test split of `ds` (text: no augmentation, as [`Batcher::train`]).
    pub fn test(ds: &Dataset, cfg: BatchConfig) -> Result<Self> {
        Batcher::new(ds.test.clone(), ds.shape, &ds.norm, for_dataset(ds, cfg))
    }
    /// The configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }
    /// The split it cuts into batches.
    pub fn split(&self) -> &Arc<Split> {
        &self.split
    }
    /// Images used per epoch (the split's size, or the limit).
    pub fn num_images(&self) -> usize {
        self.n
    }
    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let b = self.cfg.batch_size;
        if self.cfg.drop_last {
            self.n / b
        } else {
            self.n.div_ceil(b)
        }
    }
    /// The image order of `epoch` (indices into the split).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.cfg.shuffle {
            epoch_order(self.n, self.cfg.seed, epoch)
        } else {
            (0..self.n).collect()
        }
    }
    /// Batch `index` of `epoch`, built on the calling thread (what [`BatchIter`] yields).
    pub fn batch(&self, epoch: u64, index: usize) -> Result<Batch> {
        if index >= self.batches_per_epoch() {
            return Err(WqatError::invalid(format!("batch {index} of {}", self.batches_per_epoch())));
        }
        let mut b = Batch { epoch, index, size: 0, images: Vec::new(), labels: Vec::new() };
        self.fill(&self.order(epoch), &mut b, epoch, index);
        Ok(b)
    }

    /// Fills `b` (reusing its buffers) with batch `index` of an epoch whose order is `order`.
    fn fill(&self, order: &[usize], b: &mut Batch, epoch: u64, index: usize) {
        let bs = self.cfg.batch_size;
        let len = self.split.image_len();
        let start = index * bs;
        let picks = &order[start..(start + bs).min(order.len())];
        b.epoch = epoch;
        b.index = index;
        b.size = picks.len();
        b.labels.clear();
        b.labels.extend(picks.iter().map(|&i| self.split.labels()[i] as u32));
        b.images.clear();
        b.images.resize(picks.len() * len, 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ AUGMENT_SALT);
        rng.set_stream(epoch);
        for (k, (&i, dst)) in picks.iter().zip(b.images.chunks_exact_mut(len)).enumerate() {
            let src = &self.split.images()[i * len..(i + 1) * len];
            match &self.cfg.augment {
                Some(aug) => {
                    rng.set_word_pos((start + k) as u128 * AUGMENT_WORDS_PER_IMAGE);
                    let p = aug.draw(&mut rng);
                    // Sizes are consistent by construction (checked in `new`).
                    let _ = augment_image(src, dst, self.shape, &self.fill, aug.pad, p);
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
    /// The batches of `epoch`, prepared on a background thread up to `prefetch` ahead.
    pub fn epoch(&self, epoch: u64) -> BatchIter {
        let (tx, rx) = sync_channel::<Batch>(self.cfg.prefetch.max(1));
        let (recycle_tx, recycle_rx) = channel::<Batch>();
        let me = self.clone();
        let count = self.batches_per_epoch();
        let handle = std::thread::Builder::new().name("wqat-batcher".into()).spawn(move || {
            let order = me.order(epoch);
            for index in 0..count {
                let mut b = recycle_rx.try_recv().unwrap_or_else(|_| Batch {
                    epoch,
                    index,
                    size: 0,
                    images: Vec::new(),
                    labels: Vec::new(),
                });
                me.fill(&order, &mut b, epoch, index);
                if tx.send(b).is_err() {
                    return; // the iterator was dropped
                }
            }
        });
        match handle {
            Ok(h) => BatchIter { rx: Some(rx), recycle: recycle_tx, handle: Some(h), remaining: count, sync: None },
            // No thread available: build the batches on the caller's thread instead.
            Err(_) => BatchIter {
                rx: None,
                recycle: recycle_tx,
                handle: None,
                remaining: count,
                sync: Some((self.clone(), self.order(epoch), epoch, 0)),
            },
        }
    }
}

/// The batches of one epoch in order; a background thread keeps the next ones ready.
/// Dropping it early stops the thread.
pub struct BatchIter {
    rx: Option<Receiver<Batch>>,
    recycle: Sender<Batch>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    sync: Option<(Batcher, Vec<usize>, u64, usize)>,
}

impl BatchIter {
    /// Hands a used batch back so its buffers are reused for a coming one (optional).
    pub fn recycle(&self, batch: Batch) {
        let _ = self.recycle.send(batch);
    }
}

impl Iterator for BatchIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        let b = match (&self.rx, &mut self.sync) {
            (Some(rx), _) => rx.recv().ok()?,
            (None, Some((batcher, order, epoch, index))) => {
                let mut b = Batch { epoch: *epoch, index: *index, size: 0, images: Vec::new(), labels: Vec::new() };
                batcher.fill(order, &mut b, *epoch, *index);
                *index += 1;
                b
            }
            (None, None) => return None,
        };
        self.remaining -= 1;
        Some(b)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for BatchIter {}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx = None; // unblocks a sender waiting on a full channel
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
