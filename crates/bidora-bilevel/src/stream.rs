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
}

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
        })
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
            // Fisher–Yates.
            for i in (1..n).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
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

    #[test]
    fn empty_input_is_an_error() {
        assert!(ShuffledBatches::new(Vec::<u8>::new(), 2, 0, |_: &[&u8]| ()).is_err());
        assert!(ShuffledBatches::new(vec![1u8], 0, 0, |_: &[&u8]| ()).is_err());
    }
}
