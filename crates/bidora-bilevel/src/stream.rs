//! Endless, seeded, resumable streams of batches.

/// An endless stream of batches whose position can be saved and restored, so that a resumed
/// run sees exactly the batches an uninterrupted one would.
pub trait BatchStream {
    /// One batch.
    type Batch;
    /// The next batch.
    fn next_batch(&mut self) -> Self::Batch;
    /// How many batches have been drawn.
    fn position(&self) -> u64;
    /// Continues as if `position` batches had been drawn.
    fn seek(&mut self, position: u64);
}

/// Batches of `batch_size` examples, reshuffled every epoch by a permutation derived from
/// `(seed, epoch)`; the last partial batch of an epoch is kept. `make_batch` turns a slice of
/// examples into a batch (e.g. tokenised tensors).
pub struct ShuffledBatches<T, F> {
    examples: Vec<T>,
    batch_size: usize,
    seed: u64,
    make_batch: F,
    position: u64,
    epoch: Option<(u64, Vec<usize>)>,
    /// Each example's length and the window, in batches, sorted by it
    /// ([`ShuffledBatches::grouped_by_length`]).
    grouping: Option<(Vec<usize>, usize)>,
}

/// Batches per window of [`ShuffledBatches::grouped_by_length`] (HF Trainer's
/// `group_by_length` sorts "megabatches" of 50 batches).
pub const DEFAULT_LENGTH_WINDOW: usize = 50;

impl<T, F> ShuffledBatches<T, F> {
    /// A stream over `examples`; panics never: an empty set or a zero batch size is an error.
    pub fn new(
        examples: Vec<T>,
        batch_size: usize,
        seed: u64,
        make_batch: F,
    ) -> Result<Self, crate::TrainError> {
        if examples.is_empty() {
            return Err(crate::TrainError::Config(
                "a batch stream needs at least one example".into(),
            ));
        }
        if batch_size == 0 {
            return Err(crate::TrainError::Config(
                "batch size must be at least 1".into(),
            ));
        }
        Ok(ShuffledBatches {
            examples,
            batch_size,
            seed,
            make_batch,
            position: 0,
            epoch: None,
            grouping: None,
        })
    }

    /// Puts examples of similar `lengths` (one per example, e.g. tokens) into the same batch,
    /// so that a dynamically padded batch pads little: each epoch's shuffled order is cut into
    /// windows of `window` batches, each window is sorted by length (longest first, ties in
    /// shuffled order), and the full batches are then shuffled among themselves (the partial
    /// one stays last). Like the plain stream it is a function of `(seed, epoch)`: resuming
    /// replays it exactly.
    pub fn grouped_by_length(
        mut self,
        lengths: Vec<usize>,
        window: usize,
    ) -> Result<Self, crate::TrainError> {
        if lengths.len() != self.examples.len() {
            return Err(crate::TrainError::Config(format!(
                "{} lengths for {} examples",
                lengths.len(),
                self.examples.len()
            )));
        }
        if window == 0 {
            return Err(crate::TrainError::Config(
                "the length-grouping window must be at least 1 batch".into(),
            ));
        }
        self.grouping = Some((lengths, window));
        self.epoch = None;
        Ok(self)
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.examples.len().div_ceil(self.batch_size) as u64
    }

    fn order(&mut self, epoch: u64) -> &[usize] {
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let n = self.examples.len();
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = SplitMix64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            shuffle(&mut order, &mut rng);
            if let Some((lengths, window)) = &self.grouping {
                let bs = self.batch_size;
                for w in order.chunks_mut(window * bs) {
                    w.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
                }
                let mut batches: Vec<&[usize]> = order.chunks(bs).collect();
                let full = if n.is_multiple_of(bs) {
                    batches.len()
                } else {
                    batches.len() - 1
                };
                shuffle(&mut batches[..full], &mut rng);
                order = batches.concat();
            }
            self.epoch = Some((epoch, order));
        }
        self.epoch
            .as_ref()
            .map(|(_, o)| o.as_slice())
            .unwrap_or(&[])
    }
}

impl<T, B, F: FnMut(&[&T]) -> B> BatchStream for ShuffledBatches<T, F> {
    type Batch = B;

    fn next_batch(&mut self) -> B {
        let per_epoch = self.batches_per_epoch();
        let epoch = self.position / per_epoch;
        let k = (self.position % per_epoch) as usize;
        let bs = self.batch_size;
        let idx: Vec<usize> = {
            let order = self.order(epoch);
            let end = ((k + 1) * bs).min(order.len());
            order[k * bs..end].to_vec()
        };
        self.position += 1;
        let items: Vec<&T> = idx.iter().map(|&i| &self.examples[i]).collect();
        (self.make_batch)(&items)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn seek(&mut self, position: u64) {
        self.position = position;
    }
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

pub use bidora_util::SplitMix64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_permutations_and_seek_replays() {
        let mut s = ShuffledBatches::new((0..10).collect::<Vec<u32>>(), 4, 7, |b: &[&u32]| {
            b.iter().map(|x| **x).collect::<Vec<u32>>()
        })
        .unwrap();
        let epoch: Vec<Vec<u32>> = (0..3).map(|_| s.next_batch()).collect();
        assert_eq!(
            epoch.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut all: Vec<u32> = epoch.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let next: Vec<Vec<u32>> = (0..4).map(|_| s.next_batch()).collect();
        assert_ne!(next[0..3].concat(), epoch.concat(), "reshuffled each epoch");
        s.seek(3);
        let replay: Vec<Vec<u32>> = (0..4).map(|_| s.next_batch()).collect();
        assert_eq!(replay, next);
    }

    /// Batches of a grouped stream over examples whose length is their value mod 7.
    fn grouped(n: u32, bs: usize, window: usize) -> impl BatchStream<Batch = Vec<u32>> {
        let lengths = (0..n).map(|x| (x % 7) as usize).collect();
        ShuffledBatches::new((0..n).collect::<Vec<u32>>(), bs, 7, |b: &[&u32]| {
            b.iter().map(|x| **x).collect::<Vec<u32>>()
        })
        .unwrap()
        .grouped_by_length(lengths, window)
        .unwrap()
    }

    #[test]
    fn length_grouping_keeps_epochs_permutations_and_pads_less() {
        let (n, bs) = (100u32, 4);
        let mut s = grouped(n, bs, 5);
        let epoch: Vec<Vec<u32>> = (0..25).map(|_| s.next_batch()).collect();
        let mut all = epoch.concat();
        all.sort();
        assert_eq!(
            all,
            (0..n).collect::<Vec<_>>(),
            "each epoch is a permutation"
        );
        // Padding: the sum over batches of (longest × size − total length).
        let pad = |batches: &[Vec<u32>]| -> u32 {
            batches
                .iter()
                .map(|b| {
                    let l: Vec<u32> = b.iter().map(|x| x % 7).collect();
                    l.iter().max().unwrap() * l.len() as u32 - l.iter().sum::<u32>()
                })
                .sum()
        };
        let mut plain =
            ShuffledBatches::new((0..n).collect::<Vec<u32>>(), bs, 7, |b: &[&u32]| {
                b.iter().map(|x| **x).collect::<Vec<u32>>()
            })
            .unwrap();
        let plain_epoch: Vec<Vec<u32>> = (0..25).map(|_| plain.next_batch()).collect();
        // 20 examples per window, about 3 per length: most batches hold one or two lengths.
        assert!(
            pad(&epoch) * 3 < pad(&plain_epoch),
            "{} vs {}",
            pad(&epoch),
            pad(&plain_epoch)
        );
        // Batches are shuffled after sorting: not longest-first within every window.
        let firsts: Vec<u32> = epoch.iter().step_by(5).map(|b| b[0] % 7).collect();
        assert_ne!(firsts, vec![6; 5], "{firsts:?}");
        // The next epoch differs, and seeking replays.
        let next: Vec<Vec<u32>> = (0..25).map(|_| s.next_batch()).collect();
        assert_ne!(next, epoch);
        s.seek(25);
        assert_eq!((0..25).map(|_| s.next_batch()).collect::<Vec<_>>(), next);
        let mut again = grouped(n, bs, 5);
        assert_eq!(
            (0..25).map(|_| again.next_batch()).collect::<Vec<_>>(),
            epoch
        );
    }

    #[test]
    fn length_grouping_keeps_the_partial_batch_last_and_checks_its_input() {
        let mut s = grouped(10, 4, 50);
        let sizes: Vec<usize> = (0..3).map(|_| s.next_batch().len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let make = |b: &[&u8]| b.len();
        let s = ShuffledBatches::new(vec![1u8, 2], 1, 0, make).unwrap();
        assert!(s.grouped_by_length(vec![1], 5).is_err());
        let s = ShuffledBatches::new(vec![1u8, 2], 1, 0, make).unwrap();
        assert!(s.grouped_by_length(vec![1, 2], 0).is_err());
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(ShuffledBatches::new(Vec::<u8>::new(), 2, 0, |_: &[&u8]| ()).is_err());
        assert!(ShuffledBatches::new(vec![1u8], 0, 0, |_: &[&u8]| ()).is_err());
    }
}
