//! Vectors over a module's parameters: gradients and values of a set of parameters, each
//! flattened to rank 1, with the vector arithmetic the hypergradients need, and mappers that
//! build new modules from them.
//!
//! Perturbed modules are always *new* modules whose parameters are computed from the untouched
//! originals (`θ ± ε·v`); nothing is ever added and then subtracted back, so the original is
//! exactly what it was.

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// One flattened tensor per parameter, in the module's visiting order.
#[derive(Clone, Debug)]
pub struct ParamVec<B: Backend> {
    entries: Vec<(ParamId, Tensor<B, 1>)>,
}

impl<B: Backend> ParamVec<B> {
    /// The parameter ids, in order.
    pub fn ids(&self) -> Vec<ParamId> {
        self.entries.iter().map(|(id, _)| *id).collect()
    }

    /// The flattened tensor of one parameter.
    pub fn get(&self, id: ParamId) -> Option<&Tensor<B, 1>> {
        self.entries.iter().find(|(i, _)| *i == id).map(|(_, t)| t)
    }

    /// This vector followed by `other` (which holds other parameters).
    pub fn concat(mut self, other: Self) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// The entries of `ids` and the others, each in this vector's order.
    pub fn partition(self, ids: &[ParamId]) -> (Self, Self) {
        let wanted: HashSet<ParamId> = ids.iter().copied().collect();
        let (a, b) = self
            .entries
            .into_iter()
            .partition(|(id, _)| wanted.contains(id));
        (ParamVec { entries: a }, ParamVec { entries: b })
    }

    /// Position of each parameter in the vector.
    fn index(&self) -> HashMap<ParamId, usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect()
    }

    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `Σ ‖v_p‖²` (one device sync).
    pub fn squared_norm(&self) -> f64 {
        self.entries
            .iter()
            .map(|(_, t)| t.clone().square().sum())
            .reduce(|a, b| a + b)
            .map(|s| s.into_scalar().elem::<f64>())
            .unwrap_or(0.0)
    }

    /// `‖v‖₂` (one device sync).
    pub fn norm(&self) -> f64 {
        self.squared_norm().sqrt()
    }

    /// `self + alpha · other` (same parameters, same order).
    pub fn add_scaled(&self, other: &Self, alpha: f64) -> Self {
        debug_assert_eq!(self.ids(), other.ids());
        ParamVec {
            entries: self
                .entries
                .iter()
                .zip(&other.entries)
                .map(|((id, a), (_, b))| (*id, a.clone() + b.clone().mul_scalar(alpha)))
                .collect(),
        }
    }

    /// The number of values over every parameter.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.dims()[0]).sum()
    }

    /// Every parameter's values end to end; `None` when there is no parameter.
    pub fn flatten(&self) -> Option<Tensor<B, 1>> {
        if self.entries.is_empty() {
            return None;
        }
        Some(Tensor::cat(
            self.entries.iter().map(|(_, t)| t.clone()).collect(),
            0,
        ))
    }

    /// The inverse of [`ParamVec::flatten`]: `flat` cut into this vector's parameters.
    pub fn unflatten(&self, flat: Tensor<B, 1>) -> Self {
        let mut start = 0;
        let entries = self
            .entries
            .iter()
            .map(|(id, t)| {
                let n = t.dims()[0];
                start += n;
                (*id, flat.clone().slice(start - n..start))
            })
            .collect();
        ParamVec { entries }
    }

    /// Zeros of the same parameters and shapes.
    pub fn zeros_like(&self) -> Self {
        ParamVec {
            entries: self
                .entries
                .iter()
                .map(|(id, t)| (*id, t.zeros_like()))
                .collect(),
        }
    }

    /// `alpha · self`.
    pub fn scale(&self, alpha: f64) -> Self {
        ParamVec {
            entries: self
                .entries
                .iter()
                .map(|(id, t)| (*id, t.clone().mul_scalar(alpha)))
                .collect(),
        }
    }

    /// Rescales so that the norm is at most `max_norm` (global-norm clipping, as PyTorch's
    /// `clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.norm();
        if norm > max_norm && norm.is_finite() {
            *self = self.scale(max_norm / (norm + 1e-6));
        }
        norm
    }

    /// Whether every entry is finite (one device sync).
    pub fn is_finite(&self) -> bool {
        self.squared_norm().is_finite()
    }

    /// Values as host vectors, keyed by raw id (for checkpoints).
    pub fn to_host(&self) -> Vec<(u64, Vec<f32>)> {
        self.entries
            .iter()
            .map(|(id, t)| {
                let data = t.clone().into_data().convert::<f32>();
                (id.val(), data.to_vec::<f32>().unwrap_or_default())
            })
            .collect()
    }

    /// Rebuilds from [`ParamVec::to_host`] output.
    pub fn from_host(host: &[(u64, Vec<f32>)], device: &B::Device) -> Self {
        ParamVec {
            entries: host
                .iter()
                .map(|(id, v)| {
                    let n = v.len();
                    let t =
                        Tensor::from_data(burn::tensor::TensorData::new(v.clone(), [n]), device);
                    (ParamId::from(*id), t)
                })
                .collect(),
        }
    }
}

/// The gradients of `ids` in `grads`, flattened; a parameter without a gradient (it did not
/// take part in the loss) gets zeros.
pub fn gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    grads: &B::Gradients,
    module: &M,
    ids: &[ParamId],
) -> ParamVec<B::InnerBackend> {
    struct V<'a, B: AutodiffBackend> {
        grads: &'a B::Gradients,
        wanted: HashSet<ParamId>,
        entries: Vec<(ParamId, Tensor<B::InnerBackend, 1>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !self.wanted.contains(&param.id) {
                return;
            }
            let value = param.val();
            let n = value.shape().num_elements();
            let flat = match value.grad(self.grads) {
                Some(g) => g.reshape([n]),
                None => Tensor::zeros([n], &value.device()),
            };
            self.entries.push((param.id, flat));
        }
    }
    let mut v = V::<B> {
        grads,
        wanted: ids.iter().copied().collect(),
        entries: Vec::new(),
    };
    module.visit(&mut v);
    ParamVec { entries: v.entries }
}

/// The current values of `ids`, flattened.
pub fn values<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    ids: &[ParamId],
) -> ParamVec<B::InnerBackend> {
    struct V<B: AutodiffBackend> {
        wanted: HashSet<ParamId>,
        entries: Vec<(ParamId, Tensor<B::InnerBackend, 1>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.wanted.contains(&param.id) {
                let value = param.val().inner();
                let n = value.shape().num_elements();
                self.entries.push((param.id, value.reshape([n])));
            }
        }
    }
    let mut v = V::<B> {
        wanted: ids.iter().copied().collect(),
        entries: Vec::new(),
    };
    module.visit(&mut v);
    ParamVec { entries: v.entries }
}

/// Every parameter id of `module`, in visiting order.
pub fn param_ids<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<ParamId> {
    struct V(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.id);
        }
    }
    let mut v = V(Vec::new());
    module.visit(&mut v);
    v.0
}

/// `module` with its float parameters renamed, in visiting order, to `ids` (which must hold
/// one id per parameter; values are untouched). A resumed run takes over the ids of the run
/// that wrote the checkpoint, since optimiser states are keyed by them.
pub fn with_ids<B: Backend, M: burn::module::Module<B>>(module: M, ids: &[ParamId]) -> M {
    struct Rename<'a> {
        ids: &'a [ParamId],
        next: usize,
    }
    impl<B: Backend> ModuleMapper<B> for Rename<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(&id) = self.ids.get(self.next) else {
                return param;
            };
            self.next += 1;
            let (_, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Rename { ids, next: 0 })
}

enum Edit<'a, B: Backend> {
    /// `θ_p ← θ_p + eps · d_p`
    Perturb(&'a ParamVec<B>, f64),
    /// `θ_p ← v_p`
    Set(&'a ParamVec<B>),
}

struct Editor<'a, B: Backend> {
    edit: Edit<'a, B>,
    index: HashMap<ParamId, usize>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Editor<'_, B::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(&i) = self.index.get(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let inner = tensor.inner();
        let new_inner = match &self.edit {
            Edit::Perturb(dir, eps) => {
                inner + dir.entries[i].1.clone().reshape(shape).mul_scalar(*eps)
            }
            Edit::Set(values) => values.entries[i].1.clone().reshape(shape),
        };
        let mut new = Tensor::<B, D>::from_inner(new_inner);
        if require_grad {
            new = new.require_grad();
        }
        Param::from_mapped_value(id, new, mapper)
    }
}

fn edit<B: AutodiffBackend, M: AutodiffModule<B>>(module: M, e: Edit<'_, B::InnerBackend>) -> M {
    let vec = match &e {
        Edit::Perturb(v, _) | Edit::Set(v) => *v,
    };
    let index = vec.index();
    module.map(&mut Editor::<B::InnerBackend> { edit: e, index })
}

/// A new module whose parameters in `direction` are `θ + eps·direction`; `module` itself is
/// untouched (Burn modules are cheap to clone: tensors are shared).
pub fn perturbed<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    direction: &ParamVec<B::InnerBackend>,
    eps: f64,
) -> M {
    edit(module.clone(), Edit::Perturb(direction, eps))
}

/// `module` with the parameters in `values` replaced by those values.
pub fn with_values<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    values: &ParamVec<B::InnerBackend>,
) -> M {
    edit(module, Edit::Set(values))
}

/// Converts a flattened gradient vector back into Burn's `GradientsParams` for an optimiser.
pub fn to_gradients_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    vec: &ParamVec<B::InnerBackend>,
) -> GradientsParams {
    struct V<'a, B: AutodiffBackend> {
        vec: &'a ParamVec<B::InnerBackend>,
        index: HashMap<ParamId, usize>,
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(&i) = self.index.get(&param.id) {
                let shape = param.val().shape();
                let g: Tensor<B::InnerBackend, D> = self.vec.entries[i].1.clone().reshape(shape);
                self.out.register(param.id, g);
            }
        }
    }
    let index = vec.index();
    let mut v = V::<B> {
        vec,
        index,
        out: GradientsParams::new(),
    };
    module.visit(&mut v);
    v.out
}
