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

    /// A regulariser `R(θ)` added to the lower objective with weight `γ`; none by default.
    fn regularizer(&self, module: &Self::Module) -> Option<Tensor<B, 1>> {
        let _ = module;
        None
    }
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
