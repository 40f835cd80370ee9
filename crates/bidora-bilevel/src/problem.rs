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
    /// The groups of BiDoRA from an adapter partition: lower = direction ∪ head, upper =
    /// magnitude.
    pub fn bilevel(partition: &bidora_adapters::ParamPartition) -> Self {
        ParamGroups {
            lower: partition.lower(),
            upper: partition.upper(),
        }
    }

    /// One group holding every trainable parameter (LoRA, DoRA, full fine-tuning).
    pub fn single_level(partition: &bidora_adapters::ParamPartition) -> Self {
        ParamGroups {
            lower: partition.trainable(),
            upper: Vec::new(),
        }
    }
}
