//! The adapted linear layer: LoRA, and DoRA/BiDoRA's magnitude–direction form (docs/METHOD.md §1).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::config::{AdapterConfig, InitA, NormMode};
use crate::AdapterError;

/// Per-layer settings that are not tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSettings {
    /// The factor `s` multiplying `B·A` (`alpha / r`, or 1).
    pub scaling: f64,
    /// Whether the norm is differentiated through.
    pub norm_mode: NormMode,
    /// Whether the norm is computed through the low-rank identity.
    pub low_rank_norm: bool,
}

impl LayerSettings {
    /// The settings an [`AdapterConfig`] gives every layer.
    pub fn from_config(config: &AdapterConfig) -> Self {
        LayerSettings {
            scaling: config.scaling(),
            norm_mode: config.norm_mode,
            low_rank_norm: config.low_rank_norm,
        }
    }
}

/// A frozen linear layer with a trainable low-rank adapter, and for DoRA/BiDoRA a trainable
/// magnitude vector.
///
/// Tensors are stored in Burn's layout, transposed with respect to PyTorch/PEFT:
///
/// | field       | here          | PEFT / PyTorch                        |
/// |-------------|---------------|---------------------------------------|
/// | `weight`    | `[in, out]`   | `base_layer.weight`: `[out, in]`      |
/// | `lora_a`    | `[in, r]`     | `lora_A.weight`: `[r, in]`            |
/// | `lora_b`    | `[r, out]`    | `lora_B.weight`: `[out, r]`           |
/// | `magnitude` | `[out]`       | `lora_magnitude_vector`: `[out]`      |
///
/// With `V = W0 + s·A·B` (here `A·B` is `[in, out]`) and `n_j = ‖V[:, j]‖₂` (one norm per output),
/// the layer computes `y = x·(V ⊙ (m ⊘ n)) + bias` without ever forming the adapted weight:
///
/// `y = x·W0 + bias + (m/n − 1) ⊙ (x̃·W0) + (m/n) ⊙ s·(x̃·A)·B`, with `x̃ = dropout(x)`;
/// without dropout this is `(m/n) ⊙ (x·W0 + s·(x·A)·B) + bias`.
///
/// LoRA (no magnitude) computes `y = x·W0 + s·(x̃·A)·B + bias`.
///
/// Dropout is active only on autodiff backends (training), as in Burn's [`Dropout`].
///
/// # Shapes
/// - input: `[..., in]`
/// - output: `[..., out]`
#[derive(Module, Debug)]
pub struct AdaptedLinear<B: Backend> {
    /// Frozen pretrained weight `W0`, `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Frozen bias, `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Down-projection `A`, `[in, r]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// Up-projection `B`, `[r, out]`, zero at init.
    pub lora_b: Param<Tensor<B, 2>>,
    /// Magnitude `m`, `[out]`, `‖W0[:, j]‖` at init. `None` for LoRA.
    pub magnitude: Option<Param<Tensor<B, 1>>>,
    /// Dropout on the adapter path's input.
    pub dropout: Dropout,
    /// Scaling and norm options.
    pub settings: LayerSettings,
}

impl<B: Backend> AdaptedLinear<B> {
    /// Wraps `base`, freezing its weight and bias, with a fresh adapter as `config` describes:
    /// `A` initialised by `config.init_a`, `B = 0`, and (DoRA/BiDoRA) `m = ‖W0[:, j]‖`, so the
    /// layer computes exactly what `base` does.
    pub fn new(base: Linear<B>, config: &AdapterConfig) -> Result<Self, AdapterError> {
        config.validate()?;
        let weight = base.weight.val();
        let device = weight.device();
        let [d_in, d_out] = weight.dims();
        let r = config.r;
        let a = match config.init_a {
            InitA::Kaiming => {
                let bound = 1.0 / (d_in as f64).sqrt();
                bidora_backend::random::<B, 2>(
                    [d_in, r],
                    Distribution::Uniform(-bound, bound),
                    &device,
                )
            }
            InitA::Gaussian => {
                bidora_backend::random::<B, 2>([d_in, r], Distribution::Normal(0.0, 1.0), &device)
            }
        };
        let b = Tensor::<B, 2>::zeros([r, d_out], &device);
        let magnitude = config
            .method
            .has_magnitude()
            .then(|| column_norm(weight.clone()));
        Self::from_parts(
            weight,
            base.bias.map(|b| b.val()),
            a,
            b,
            magnitude,
            config.dropout,
            LayerSettings::from_config(config),
        )
    }

    /// Builds a layer from its tensors (Burn layout, see the type's docs). `weight` and `bias`
    /// are frozen; `a`, `b` and `magnitude` are trainable.
    pub fn from_parts(
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
        magnitude: Option<Tensor<B, 1>>,
        dropout: f64,
        settings: LayerSettings,
    ) -> Result<Self, AdapterError> {
        let [d_in, d_out] = weight.dims();
        let [a_in, r] = a.dims();
        let [b_r, b_out] = b.dims();
        let check = |what: &str, got: Vec<usize>, want: Vec<usize>| {
            if got == want {
                Ok(())
            } else {
                Err(AdapterError::Shape {
                    tensor: what.to_string(),
                    expected: want,
                    found: got,
                })
            }
        };
        check("lora_a", vec![a_in, r], vec![d_in, r])?;
        check("lora_b", vec![b_r, b_out], vec![r, d_out])?;
        if let Some(bias) = &bias {
            check("bias", bias.dims().to_vec(), vec![d_out])?;
        }
        if let Some(m) = &magnitude {
            check("magnitude", m.dims().to_vec(), vec![d_out])?;
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(AdapterError::InvalidConfig(format!(
                "`dropout` must be in [0, 1), got {dropout}"
            )));
        }
        // Every parameter is a fresh leaf of the autodiff graph.
        let leaf = |t: Tensor<B, 2>| Param::from_tensor(t.detach());
        let leaf1 = |t: Tensor<B, 1>| Param::from_tensor(t.detach());
        Ok(AdaptedLinear {
            weight: leaf(weight).set_require_grad(false),
            bias: bias.map(|b| leaf1(b).set_require_grad(false)),
            lora_a: leaf(a),
            lora_b: leaf(b),
            magnitude: magnitude.map(leaf1),
            dropout: DropoutConfig::new(dropout).init(),
            settings,
        })
    }

    /// Input features.
    pub fn d_input(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// The adapter's rank.
    pub fn rank(&self) -> usize {
        self.lora_a.shape().dims::<2>()[1]
    }

    /// Whether this is a DoRA/BiDoRA layer (it has a magnitude vector).
    pub fn is_dora(&self) -> bool {
        self.magnitude.is_some()
    }

    /// The forward pass; see the type's docs for the formula. Dropout of the adapter's input
    /// is active when the backend records gradients (training) and `dropout > 0`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if self.dropout.prob > 0.0 && B::ad_enabled(&x.device()) {
            let dropped = bidora_backend::kernels::dropout::dropout(&self.dropout, x.clone());
            self.forward_rows(x, Some(dropped))
        } else {
            self.forward_rows(x, None)
        }
    }

    /// The training-mode forward pass with the adapter's input `x̃` given, dropout already
    /// applied by the caller (with a mask of its own): PEFT's form,
    /// `y = x·W0 + bias + (m/n − 1) ⊙ (x̃·W0) + (m/n) ⊙ s·(x̃·A)·B` for DoRA and
    /// `y = x·W0 + bias + s·(x̃·A)·B` for LoRA. [`AdaptedLinear::forward`] is this with
    /// `x̃ = dropout(x)`.
    ///
    /// # Shapes
    /// `x` and `x_dropped`: `[..., in]`; output `[..., out]`.
    pub fn forward_dropped<const D: usize>(
        &self,
        x: Tensor<B, D>,
        x_dropped: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.forward_rows(x, Some(x_dropped))
    }

    /// Flattens the leading dimensions, so that each product is one GEMM over all rows instead
    /// of one per leading index (which would also re-pack the weight for every batch element).
    fn forward_rows<const D: usize>(
        &self,
        x: Tensor<B, D>,
        x_dropped: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat = |t: Tensor<B, D>| t.reshape([rows, dims[D - 1]]);
        let mut out = dims;
        out[D - 1] = self.d_output();
        self.forward_2d(flat(x), x_dropped.map(flat)).reshape(out)
    }

    fn forward_2d(&self, x: Tensor<B, 2>, x_dropped: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
        let w = self.weight.val();
        let s = self.settings.scaling;
        let matmul = bidora_backend::kernels::matmul;
        let base = matmul(x.clone(), w.clone());
        let lora_input = x_dropped.clone().unwrap_or(x);
        let lora = matmul(matmul(lora_input, self.lora_a.val()), self.lora_b.val()).mul_scalar(s);
        let out = match (&self.magnitude, x_dropped) {
            (None, _) => base + lora,
            (Some(m), Some(dropped)) => {
                let factor = (m.val() / self.weight_norm()).unsqueeze::<2>();
                let base_dropped = matmul(dropped, w);
                base + factor.clone().sub_scalar(1.0) * base_dropped + factor * lora
            }
            (Some(m), None) => (m.val() / self.weight_norm()).unsqueeze::<2>() * (base + lora),
        };
        match &self.bias {
            Some(bias) => out + bias.val().unsqueeze(),
            None => out,
        }
    }

    /// `n_j = ‖W0[:, j] + s·(A·B)[:, j]‖₂`, one entry per output, `[out]`.
    ///
    /// Detached from the autodiff graph when the norm mode is [`NormMode::Detached`]; computed
    /// through the low-rank identity `n² = ‖W0_j‖² + 2s·⟨B_j, (Aᵀ·W0)_j⟩ + s²·B_jᵀ·(AᵀA)·B_j`
    /// when `low_rank_norm` is set.
    pub fn weight_norm(&self) -> Tensor<B, 1> {
        let (w, a, b) = (self.weight.val(), self.lora_a.val(), self.lora_b.val());
        // Detached: the norm is computed from detached inputs, so it carries no graph. (Detaching
        // the result instead made ∂L/∂m differ in the last bits from one process to the next on
        // ndarray; from detached inputs it is reproducible.)
        let (w, a, b) = match self.settings.norm_mode {
            NormMode::Exact => (w, a, b),
            NormMode::Detached => (w.detach(), a.detach(), b.detach()),
        };
        if self.settings.low_rank_norm {
            low_rank_column_norm(w, a, b, self.settings.scaling)
        } else {
            column_norm(w + bidora_backend::kernels::matmul(a, b).mul_scalar(self.settings.scaling))
        }
    }

    /// The un-normalised direction `V = W0 + s·A·B`, `[in, out]`.
    pub fn direction(&self) -> Tensor<B, 2> {
        self.weight.val()
            + self
                .lora_a
                .val()
                .matmul(self.lora_b.val())
                .mul_scalar(self.settings.scaling)
    }

    /// How far the magnitudes have moved from their initial value `‖W0‖` (per output column):
    /// `‖m − ‖W0‖‖₂ / ‖‖W0‖‖₂`, 0 at initialisation; `None` for LoRA. BiDoRA's upper level
    /// trains `m` alone, so this is where its effect shows.
    pub fn magnitude_drift(&self) -> Option<f64> {
        let m = self.magnitude.as_ref()?.val().detach();
        let w0 = column_norm(self.weight.val().detach());
        let norm = |t: Tensor<B, 1>| -> f64 {
            let v = t
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap_or_default();
            v.iter().map(|x| x * x).sum::<f64>().sqrt()
        };
        Some(norm(m - w0.clone()) / norm(w0))
    }

    /// The DoRA factor `m ⊘ n`, `[out]`; `None` for LoRA.
    pub fn magnitude_factor(&self) -> Option<Tensor<B, 1>> {
        self.magnitude
            .as_ref()
            .map(|m| m.val() / self.weight_norm())
    }

    /// The weight the adapted layer is equivalent to: `V ⊙ (m ⊘ n)` (DoRA) or `V` (LoRA),
    /// `[in, out]`.
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        let v = self.direction();
        match self.magnitude_factor() {
            Some(f) => v * f.unsqueeze_dim(0),
            None => v,
        }
    }

    /// Folds the adapter into a plain [`Linear`] layer with the same output (up to rounding).
    /// The merged layer costs exactly what the base layer costs.
    pub fn merge(&self) -> MergedLinear<B> {
        let factor = self.magnitude_factor().map(|f| f.detach());
        let weight = self.merged_weight().detach();
        MergedLinear {
            linear: Linear {
                weight: Param::from_tensor(weight).set_require_grad(false),
                bias: self
                    .bias
                    .as_ref()
                    .map(|b| Param::from_tensor(b.val().detach()).set_require_grad(false)),
            },
            dora_factor: factor,
        }
    }

    /// Recovers the adapted layer from a [`MergedLinear`] made by [`AdaptedLinear::merge`] of a
    /// layer with this adapter: `W0 = W' ⊘ (m ⊘ n) − s·A·B`. The base weight is recovered up
    /// to rounding; the adapter tensors are taken from `self`.
    pub fn unmerge(&self, merged: &MergedLinear<B>) -> Result<Self, AdapterError> {
        let w_merged = merged.linear.weight.val();
        if w_merged.dims() != self.weight.val().dims() {
            return Err(AdapterError::Shape {
                tensor: "merged weight".into(),
                expected: self.weight.val().dims().to_vec(),
                found: w_merged.dims().to_vec(),
            });
        }
        let v = match (&merged.dora_factor, self.is_dora()) {
            (Some(f), true) => w_merged / f.clone().unsqueeze_dim(0),
            (None, false) => w_merged,
            _ => {
                return Err(AdapterError::InvalidConfig(
                    "cannot unmerge: the merged layer and the adapter disagree on DoRA vs LoRA"
                        .into(),
                ))
            }
        };
        let w0 = v - self
            .lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.settings.scaling);
        Self::from_parts(
            w0.detach(),
            merged.linear.bias.as_ref().map(|b| b.val()),
            self.lora_a.val().detach(),
            self.lora_b.val().detach(),
            self.magnitude.as_ref().map(|m| m.val().detach()),
            self.dropout.prob,
            self.settings,
        )
    }

    /// The frozen base layer, as a plain [`Linear`].
    pub fn base(&self) -> Linear<B> {
        Linear {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        }
    }
}

/// An adapter folded into a plain linear layer; keeps DoRA's factor `m ⊘ n` from merge time so
/// that [`AdaptedLinear::unmerge`] can undo it (the norm cannot be recovered from the merged
/// weight alone).
#[derive(Debug, Clone)]
pub struct MergedLinear<B: Backend> {
    /// The merged layer.
    pub linear: Linear<B>,
    /// `m ⊘ n` at merge time, for DoRA/BiDoRA.
    pub dora_factor: Option<Tensor<B, 1>>,
}

/// Euclidean norm of every column of `[in, out]` `w`: `[out]`.
pub fn column_norm<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 1> {
    let out = w.dims()[1];
    w.square().sum_dim(0).sqrt().reshape([out])
}

/// Column norms of `W0 + s·A·B` through the low-rank identity, without forming the sum:
/// `n² = Σ_i W0² + 2s·Σ_k B ⊙ (Aᵀ·W0) + s²·Σ_k B ⊙ ((AᵀA)·B)` (sums over rows).
pub fn low_rank_column_norm<B: Backend>(
    w0: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f64,
) -> Tensor<B, 1> {
    let out = w0.dims()[1];
    let at = a.clone().transpose();
    let cross = (b.clone() * at.clone().matmul(w0.clone())).sum_dim(0);
    let quad = (b.clone() * at.matmul(a).matmul(b)).sum_dim(0);
    let sq = w0.square().sum_dim(0)
        + cross.mul_scalar(2.0 * scaling)
        + quad.mul_scalar(scaling * scaling);
    sq.clamp_min(0.0).sqrt().reshape([out])
}
