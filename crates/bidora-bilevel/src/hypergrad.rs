//! Hypergradients of the upper objective with respect to the upper parameters (docs/METHOD.md §4).
//!
//! With `v = ∇_θ L_val(θ, M)`, the implicit-function-theorem hypergradient is
//! `∂L_val/∂M − ∇²_{M,θ} L_tr · H⁻¹ · v` (`H` the lower objective's Hessian in θ). Burn has
//! first-order autodiff only, so every second-order quantity is a central finite difference of
//! gradients, taken on perturbed *copies* of the module:
//!
//! - [`Hypergradient::FirstOrder`]: `h = ∂L_val/∂M` (the mixed term is dropped).
//! - [`Hypergradient::Darts`]: `H⁻¹ ≈ I`, `ε = alpha / ‖v‖`,
//!   `h = ∂L_val/∂M − ξ·(∇_M L_tr(θ + εv) − ∇_M L_tr(θ − εv)) / 2ε`.
//! - [`Hypergradient::Neumann`]: `H⁻¹v ≈ α·Σ_{j=0..J} (I − αH)^j v`, each `H·p` a central
//!   difference of `∇_θ L_tr`, then the same mixed term with `H⁻¹v` in place of `v`.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::distributed::Peers;
use crate::params::{gradients, perturbed, values, ParamVec};
use crate::problem::{BilevelProblem, ParamGroups, Shard};
use crate::TrainError;

/// The finite-difference step numerator of the DARTS hypergradient (ε = 0.01 / ‖v‖).
pub const DEFAULT_FD_ALPHA: f64 = 0.01;

/// How the upper level's gradient is approximated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Hypergradient {
    /// Only the direct gradient `∂L_val/∂M`.
    FirstOrder,
    /// DARTS: the mixed term with `H⁻¹ ≈ I` by a central difference.
    Darts {
        /// `ε = alpha / ‖v‖` (0.01 in the reference code).
        alpha: f64,
        /// Weight of the mixed term (1 in the reference code).
        xi: f64,
    },
    /// Truncated Neumann series for `H⁻¹v`, Hessian–vector products by central differences.
    Neumann {
        /// Number of series terms after the first.
        iterations: usize,
        /// Series step `α`; needs `α·λ_max(H) < 2` to converge.
        alpha: f64,
    },
}

/// The hypergradient methods by name, without their parameters (for command lines and files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum HypergradientMethod {
    /// [`Hypergradient::FirstOrder`].
    #[cfg_attr(feature = "clap", value(name = "first_order"))]
    FirstOrder,
    /// [`Hypergradient::Darts`].
    #[default]
    Darts,
    /// [`Hypergradient::Neumann`].
    Neumann,
}

/// The DARTS mixed term's weight ξ (1 in the reference code).
pub const DEFAULT_XI: f64 = 1.0;
/// Neumann: series terms after the first.
pub const DEFAULT_NEUMANN_ITERATIONS: usize = 3;
/// Neumann: series step α.
pub const DEFAULT_NEUMANN_ALPHA: f64 = 0.1;

impl Default for Hypergradient {
    fn default() -> Self {
        Hypergradient::Darts {
            alpha: DEFAULT_FD_ALPHA,
            xi: DEFAULT_XI,
        }
    }
}

/// The lower objective `L_tr + γR` of a module on a batch, and its backward pass.
pub(crate) fn lower_objective_grads<B: AutodiffBackend, P: BilevelProblem<B>>(
    problem: &P,
    module: &P::Module,
    batch: &P::Batch,
    gamma: f64,
) -> (f64, B::Gradients) {
    let mut loss = problem.lower_loss(module, batch);
    if gamma != 0.0 {
        if let Some(r) = problem.regularizer(module) {
            loss = loss + r.mul_scalar(gamma);
        }
    }
    let value = scalar(&loss);
    (value, loss.backward())
}

pub(crate) fn scalar<B: burn::tensor::backend::Backend>(t: &burn::tensor::Tensor<B, 1>) -> f64 {
    use burn::tensor::ElementConversion;
    t.clone().into_scalar().elem::<f64>()
}

/// Everything the upper step needs, computed at the current `(θ, M)`.
pub struct HypergradientResult<B: AutodiffBackend> {
    /// The hypergradient `h` over the upper parameters.
    pub grad: ParamVec<B::InnerBackend>,
    /// `L_val` on the validation batch.
    pub upper_loss: f64,
    /// `‖∂L_val/∂M‖`, the direct term's norm.
    pub direct_norm: f64,
    /// The norm of what the method subtracts from the direct term (DARTS: `ξ·∇²_{M,θ}L_tr·v`;
    /// Neumann: the mixed term with `H⁻¹v`); `None` for the first-order method.
    pub mixed_norm: Option<f64>,
}

/// Computes the hypergradient of `problem` at `module`, alone on whole batches.
///
/// `train_batch` is the lower level's last batch (the finite differences use it), `val_batch`
/// the upper level's. `reseed` is called before every pass that may draw random numbers, with
/// the same value for the `+` and `−` passes, so that dropout masks agree.
#[allow(clippy::too_many_arguments)]
pub fn hypergradient<B: AutodiffBackend, P: BilevelProblem<B>>(
    problem: &P,
    module: &P::Module,
    groups: &ParamGroups,
    train_batch: &P::Batch,
    val_batch: &P::Batch,
    method: Hypergradient,
    gamma: f64,
    reseed: &mut dyn FnMut(u64),
) -> Result<HypergradientResult<B>, TrainError>
where
    P::Module: AutodiffModule<B>,
{
    let peers = Peers::new(None, Default::default());
    let (train, val) = (Part::whole(train_batch), Part::whole(val_batch));
    let level = Level {
        problem,
        module,
        gamma,
        peers: &peers,
    };
    level.hypergradient(groups, train, val, method, reseed)
}

/// A peer's part of a batch: its examples (none when its shard is empty) and their weight.
pub(crate) struct Part<'a, T> {
    pub batch: Option<&'a T>,
    pub weight: f64,
}

impl<T> Clone for Part<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Part<'_, T> {}

impl<'a, T> Part<'a, T> {
    pub fn whole(batch: &'a T) -> Self {
        Part {
            batch: Some(batch),
            weight: 1.0,
        }
    }

    pub fn of(shard: &'a Shard<T>) -> Self {
        Part {
            batch: shard.part(),
            weight: shard.weight,
        }
    }
}

/// The upper loss and its gradients over the upper and the lower parameters.
type UpperGrads<B> = (
    f64,
    ParamVec<<B as AutodiffBackend>::InnerBackend>,
    ParamVec<<B as AutodiffBackend>::InnerBackend>,
);

/// What every gradient of one step is taken against: the problem at the current module, the
/// regulariser's weight, and the peers the gradients are averaged over.
pub(crate) struct Level<'a, B: AutodiffBackend, P: BilevelProblem<B>> {
    pub problem: &'a P,
    pub module: &'a P::Module,
    pub gamma: f64,
    pub peers: &'a Peers<'a, B::InnerBackend>,
}

impl<B: AutodiffBackend, P: BilevelProblem<B>> Level<'_, B, P> {
    /// The lower objective `L_tr + γR` on `part` and its gradient over `ids`, averaged over the
    /// peers (a peer without examples contributes nothing).
    pub fn lower_grads(
        &self,
        part: Part<'_, P::Batch>,
        ids: &[burn::module::ParamId],
    ) -> Result<(f64, ParamVec<B::InnerBackend>), TrainError> {
        let module = self.module;
        let (loss, g) = match part.batch {
            Some(batch) => {
                let (loss, grads) = lower_objective_grads(self.problem, module, batch, self.gamma);
                (loss, gradients::<B, _>(&grads, module, ids))
            }
            None => (0.0, values::<B, _>(module, ids).zeros_like()),
        };
        let (g, losses) = self.peers.weighted_mean(g, &[loss], part.weight)?;
        Ok((losses[0], g))
    }

    /// The upper loss on `val` and its gradients over the upper and the lower parameters
    /// (`∂L_val/∂M`, `v`), averaged over the peers in one exchange.
    fn upper_grads(
        &self,
        groups: &ParamGroups,
        val: Part<'_, P::Batch>,
        reseed: &mut dyn FnMut(u64),
    ) -> Result<UpperGrads<B>, TrainError> {
        let all = groups.all();
        let (loss, g) = match val.batch {
            Some(batch) => {
                reseed(1);
                let loss = self.problem.upper_loss(self.module, batch);
                let value = scalar(&loss);
                let grads = loss.backward();
                (value, gradients::<B, _>(&grads, self.module, &all))
            }
            None => (0.0, values::<B, _>(self.module, &all).zeros_like()),
        };
        let (g, losses) = self.peers.weighted_mean(g, &[loss], val.weight)?;
        let (upper, lower) = g.partition(&groups.upper);
        Ok((losses[0], upper, lower))
    }

    /// The hypergradient at the module: the direct term on `val`, the mixed term (if the
    /// method has one) by central differences on `train`.
    pub fn hypergradient(
        &self,
        groups: &ParamGroups,
        train: Part<'_, P::Batch>,
        val: Part<'_, P::Batch>,
        method: Hypergradient,
        reseed: &mut dyn FnMut(u64),
    ) -> Result<HypergradientResult<B>, TrainError> {
        let (upper_loss, g_direct, v) = self.upper_grads(groups, val, reseed)?;
        if !upper_loss.is_finite() {
            return Err(TrainError::NonFinite {
                what: "upper loss".into(),
                value: upper_loss,
                step: 0,
            });
        }
        let direct_norm = g_direct.norm();
        let difference = |d: &ParamVec<B::InnerBackend>,
                          alpha: f64,
                          wrt: &[burn::module::ParamId],
                          reseed: &mut dyn FnMut(u64)| {
            self.central_difference(train, d, alpha, wrt, reseed)
        };
        // The second-order term `m` and its weight: h = ∂L_val/∂M − weight·m.
        let second_order = match method {
            Hypergradient::FirstOrder => None,
            Hypergradient::Darts { alpha, xi } => {
                difference(&v, alpha, &groups.upper, reseed)?.map(|m| (m, xi))
            }
            Hypergradient::Neumann { iterations, alpha } => {
                // p_0 = v; acc = Σ_j (I − αH)^j v.
                let mut p = v.clone();
                let mut acc = v.clone();
                for _ in 0..iterations {
                    let Some(hp) = difference(&p, DEFAULT_FD_ALPHA, &groups.lower, reseed)? else {
                        break;
                    };
                    p = p.add_scaled(&hp, -alpha);
                    acc = acc.add_scaled(&p, 1.0);
                }
                let inv_h_v = acc.scale(alpha);
                difference(&inv_h_v, DEFAULT_FD_ALPHA, &groups.upper, reseed)?.map(|m| (m, 1.0))
            }
        };
        // A zero direction (`None` from the difference) makes the term zero, not absent.
        let mixed_norm = (method != Hypergradient::FirstOrder).then(|| {
            second_order
                .as_ref()
                .map_or(0.0, |(m, w)| m.norm() * w.abs())
        });
        let grad = match &second_order {
            Some((m, w)) => g_direct.add_scaled(m, -w),
            None => g_direct,
        };
        Ok(HypergradientResult {
            grad,
            upper_loss,
            direct_norm,
            mixed_norm,
        })
    }

    /// Central difference, along `d` (over the lower parameters), of the gradient of the lower
    /// objective with respect to `wrt`, with `ε = alpha / ‖d‖`: with `wrt` = the upper
    /// parameters this is the mixed term `∇²_{M,θ} L_tr · d`, with `wrt` = the lower ones the
    /// Hessian–vector product `H·d`. Each peer differences on its part of the batch and the
    /// results are averaged (the difference is linear in the per-example losses). `None` when
    /// `d = 0` (the term is then zero); `d` is the same on every peer, so they all agree.
    fn central_difference(
        &self,
        part: Part<'_, P::Batch>,
        d: &ParamVec<B::InnerBackend>,
        alpha: f64,
        wrt: &[burn::module::ParamId],
        reseed: &mut dyn FnMut(u64),
    ) -> Result<Option<ParamVec<B::InnerBackend>>, TrainError> {
        let norm = d.norm();
        if norm == 0.0 || !norm.is_finite() {
            return Ok(None);
        }
        let eps = alpha / norm;
        let local = match part.batch {
            Some(batch) => {
                let mut grad_at = |sign: f64| {
                    let m = perturbed::<B, _>(self.module, d, sign * eps);
                    reseed(2);
                    let (_, grads) = lower_objective_grads(self.problem, &m, batch, self.gamma);
                    gradients::<B, _>(&grads, &m, wrt)
                };
                let plus = grad_at(1.0);
                let minus = grad_at(-1.0);
                plus.add_scaled(&minus, -1.0).scale(1.0 / (2.0 * eps))
            }
            None => values::<B, _>(self.module, wrt).zeros_like(),
        };
        let (mean, _) = self.peers.weighted_mean(local, &[], part.weight)?;
        Ok(Some(mean))
    }
}
