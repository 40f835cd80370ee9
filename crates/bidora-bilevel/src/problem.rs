//! What the engine trains: a module, its losses, and the split of its parameters.

use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// A (bi-level) training problem. The engine knows nothing else about the model.
///
/// The lower level minimises `lower_loss + γ·regularizer` over the lower parameters on the
/// training split; the upper level minimises `upper_loss` over the upper parameters on the
/// validation split. For BiDoRA both losses are the task loss and the regulariser is the
/// orthogonality penalty.
pub trait BilevelProblem<B: AutodiffBackend> {
    /// The trained module.
    type Module: AutodiffModule<B>;
    /// One batch of data.
    type Batch;

    /// The lower level's loss on a training batch (a scalar, shape `[1]`).
    fn lower_loss(&self, module: &Self::Module, batch: &Self::Batch) -> Tensor<B, 1>;

    /// The upper level's loss on a validation batch; the lower loss by default.
    fn upper_loss(&self, module: &Self::Module, batch: &Self::Batch) -> Tensor<B, 1> {
        self.lower_loss(module, batch)
    }

    /// The first `⌈fraction · n⌉` examples of a batch of `n` (at least one), for the
    /// hypergradient's finite-difference passes on part of the training batch
    /// ([`crate::TrainConfig::fd_fraction`]). `None` (the default) when the problem cannot
    /// split its batches; the engine then refuses an `fd_fraction` below 1.
    fn sub_batch(&self, batch: &Self::Batch, fraction: f64) -> Option<Self::Batch> {
        let _ = (batch, fraction);
        None
    }

    /// Peer `rank`'s part of a batch when `world` peers train on it together
    /// ([`crate::distributed`]): the rows `[rank·n/world, (rank+1)·n/world)` of a batch of `n`,
    /// and their weight, the number of loss units the shard's mean loss averages over (its
    /// examples, or its non-ignored tags or target tokens for token-level losses), so that the
    /// weighted mean over peers is the whole batch's loss. `None` (the default) when the
    /// problem cannot split its batches; the engine then refuses more than one peer.
    fn shard(&self, batch: &Self::Batch, rank: usize, world: usize) -> Option<Shard<Self::Batch>> {
        let _ = (batch, rank, world);
        None
    }

    /// A regulariser `R(θ)` added to the lower objective with weight `γ`; none by default.
    fn regularizer(&self, module: &Self::Module) -> Option<Tensor<B, 1>> {
        let _ = module;
        None
    }
}

/// One peer's part of a batch: its examples (`None` when it has none: more peers than rows)
/// and the loss units its mean loss averages over (0 when it has none).
#[derive(Clone, Debug)]
pub struct Shard<T> {
    /// The peer's examples.
    pub batch: Option<T>,
    /// The loss units of `batch` (rows, or non-ignored tokens).
    pub weight: f64,
}

impl<T> Shard<T> {
    /// A whole batch with weight 1 (one peer: the weight does not matter).
    pub fn whole(batch: T) -> Self {
        Shard {
            batch: Some(batch),
            weight: 1.0,
        }
    }

    /// The batch, when it holds loss units.
    pub fn part(&self) -> Option<&T> {
        self.batch.as_ref().filter(|_| self.weight > 0.0)
    }
}

/// The rows `[rank·n/world, (rank+1)·n/world)` of `n`: peer `rank`'s share of a batch, as
/// equal as the rows allow (the first peers get one row fewer when `world` does not divide `n`).
pub fn shard_rows(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let world = world.max(1);
    (rank * n / world)..((rank + 1) * n / world)
}

/// The parameter groups the engine optimises.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamGroups {
    /// Lower level (BiDoRA: the direction `A`, `B` and the task head).
    pub lower: Vec<ParamId>,
    /// Upper level (BiDoRA: the magnitudes `m`). Empty for single-level training.
    pub upper: Vec<ParamId>,
}

impl ParamGroups {
    /// The groups of a bi-level problem: `lower` trained on the training stream, `upper` on
    /// the validation stream. For BiDoRA, with an adapter partition `p`:
    /// `ParamGroups::new(p.lower(), p.upper())` (direction ∪ head, magnitudes).
    pub fn new(lower: Vec<ParamId>, upper: Vec<ParamId>) -> Self {
        ParamGroups { lower, upper }
    }

    /// Every trained parameter: the lower group, then the upper one.
    pub fn all(&self) -> Vec<ParamId> {
        [self.lower.as_slice(), self.upper.as_slice()].concat()
    }

    /// One group holding every trained parameter (single-level training: LoRA, DoRA, full
    /// fine-tuning; with an adapter partition `p`, `ParamGroups::single(p.trainable())`).
    pub fn single(trained: Vec<ParamId>) -> Self {
        ParamGroups {
            lower: trained,
            upper: Vec::new(),
        }
    }
}
