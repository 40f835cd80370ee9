//! The training loop: single-level (LoRA, DoRA, full fine-tuning) and bi-level (BiDoRA), with
//! the optional retraining phase, evaluation, events and checkpoints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::ParamId;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointState};
use crate::hypergrad::{hypergradient, lower_objective_grads, Hypergradient};
use crate::params::{
    gradients, param_ids, to_gradients_params, values, with_ids, with_values, ParamVec,
};
use crate::problem::{BilevelProblem, ParamGroups};
use crate::schedule::{LevelConfig, Schedule};
use crate::stream::{BatchStream, SplitMix64};
use crate::TrainError;

/// One level or two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every trainable parameter (lower ∪ upper groups) by one optimiser on the training
    /// stream: LoRA, DoRA, full fine-tuning, and BiDoRA's γ/first-order ablations' baselines.
    SingleLevel,
    /// BiDoRA: lower group on the training stream, upper group on the validation stream.
    #[default]
    Bilevel,
}

/// Settings of the optional retraining phase (docs/METHOD.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Steps of retraining.
    pub iterations: usize,
    /// Optimiser of the direction during retraining.
    pub level: LevelConfig,
}

/// Everything that shapes a run. Defaults follow docs/METHOD.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// One level or two.
    pub mode: Mode,
    /// Lower-level steps of the search (or of single-level training).
    pub iterations: usize,
    /// An upper step after every `unroll` lower steps.
    pub unroll: usize,
    /// Weight of the regulariser in the lower objective.
    pub gamma: f64,
    /// Hypergradient approximation.
    pub hypergradient: Hypergradient,
    /// Lower-level optimiser (the only one in single-level mode).
    pub lower: LevelConfig,
    /// Upper-level optimiser.
    pub upper: LevelConfig,
    /// Learning-rate schedule of every level and phase.
    pub schedule: Schedule,
    /// Global-norm gradient clipping, per level.
    pub clip_grad_norm: Option<f64>,
    /// Evaluate every this many steps (and always at the end of each phase).
    pub eval_every: Option<usize>,
    /// Write a checkpoint every this many steps (needs a checkpoint path).
    pub checkpoint_every: Option<usize>,
    /// Seed of the per-step random state (dropout).
    pub seed: u64,
    /// The retraining phase, if any.
    pub retrain: Option<RetrainConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            mode: Mode::Bilevel,
            iterations: 1000,
            unroll: 1,
            gamma: 1e-5,
            hypergradient: Hypergradient::default(),
            lower: LevelConfig::default(),
            upper: LevelConfig::default(),
            schedule: Schedule::default(),
            clip_grad_norm: None,
            eval_every: None,
            checkpoint_every: None,
            seed: 0,
            retrain: None,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.iterations == 0 {
            return bad("`iterations` must be at least 1");
        }
        if self.unroll == 0 {
            return bad("`unroll` must be at least 1");
        }
        if !self.gamma.is_finite() || self.gamma < 0.0 {
            return bad("`gamma` must be a non-negative number");
        }
        for (name, level) in [("lower", &self.lower), ("upper", &self.upper)] {
            if !(level.lr.is_finite() && level.lr >= 0.0) {
                return Err(TrainError::Config(format!(
                    "`{name}.lr` must be a non-negative number"
                )));
            }
        }
        if self.eval_every == Some(0) || self.checkpoint_every == Some(0) {
            return bad("`eval_every` and `checkpoint_every` must be at least 1 when set");
        }
        if let Some(r) = &self.retrain {
            if r.iterations == 0 {
                return bad("`retrain.iterations` must be at least 1");
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if c.is_nan() || c <= 0.0 {
                return bad("`clip_grad_norm` must be positive");
            }
        }
        match self.hypergradient {
            Hypergradient::Darts { alpha, .. } | Hypergradient::Neumann { alpha, .. }
                if alpha.is_nan() || alpha <= 0.0 =>
            {
                bad("the hypergradient's `alpha` must be positive")
            }
            _ => Ok(()),
        }
    }
}

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Single-level training, or BiDoRA's bi-level search.
    Search,
    /// BiDoRA's retraining of the direction with frozen magnitudes.
    Retrain,
}

/// An evaluation: named metrics and which one ranks runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Metric values by name.
    pub metrics: BTreeMap<String, f64>,
    /// The metric that decides "best".
    pub primary: String,
    /// Whether a larger primary metric is better.
    pub higher_is_better: bool,
}

impl Evaluation {
    /// An evaluation with one metric.
    pub fn single(name: &str, value: f64, higher_is_better: bool) -> Self {
        Evaluation {
            metrics: BTreeMap::from([(name.to_string(), value)]),
            primary: name.to_string(),
            higher_is_better,
        }
    }

    /// The primary metric's value (NaN when missing).
    pub fn score(&self) -> f64 {
        self.metrics.get(&self.primary).copied().unwrap_or(f64::NAN)
    }

    fn better_than(&self, other: &Evaluation) -> bool {
        let (a, b) = (self.score(), other.score());
        if b.is_nan() {
            return !a.is_nan();
        }
        if self.higher_is_better {
            a > b
        } else {
            a < b
        }
    }
}

/// What the engine reports while it runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A phase begins.
    PhaseStart {
        /// Which.
        phase: Phase,
        /// Its number of steps.
        total: usize,
        /// Its first step (non-zero when resuming).
        from: usize,
    },
    /// One step finished.
    Step {
        /// Phase.
        phase: Phase,
        /// Step index within the phase (0-based).
        step: usize,
        /// Steps in the phase.
        total: usize,
        /// Lower objective (`L_tr + γR`) on the step's batch.
        lower_loss: f64,
        /// Upper loss on the validation batch, when an upper step ran.
        upper_loss: Option<f64>,
        /// Learning rates used (lower, upper).
        lr: (f64, f64),
    },
    /// An evaluation.
    Eval {
        /// Phase.
        phase: Phase,
        /// Step index (the evaluation follows this step).
        step: usize,
        /// The result.
        evaluation: Evaluation,
        /// Whether it is the best so far.
        is_best: bool,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The phase it was written in.
        phase: Phase,
        /// Completed steps in the phase.
        step: usize,
        /// The file.
        path: PathBuf,
    },
}

/// Whether the run goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop now (as an interruption would); the outcome reports what was done.
    Stop,
}

/// The data of a run.
pub struct Data<'a, T> {
    /// Training batches (D_tr for BiDoRA; the whole train set for single-level runs).
    pub train: &'a mut dyn BatchStream<Batch = T>,
    /// Validation batches (D_val), for the upper level.
    pub val: Option<&'a mut dyn BatchStream<Batch = T>>,
    /// Retraining batches (D_tr ∪ D_val).
    pub retrain: Option<&'a mut dyn BatchStream<Batch = T>>,
}

/// An evaluation callback.
pub type EvalFn<'a, M> = &'a mut dyn FnMut(&M) -> Evaluation;

/// Callbacks of a run.
pub struct Hooks<'a, M> {
    /// Called with every event.
    pub on_event: Option<&'a mut dyn FnMut(&Event) -> Control>,
    /// Evaluates the module (switch to the inner backend with `valid()` inside).
    pub evaluate: Option<EvalFn<'a, M>>,
    /// Where checkpoints are written (one file, replaced atomically).
    pub checkpoint: Option<PathBuf>,
    /// The identity of the frozen part of the module (e.g. a fingerprint of the base model's
    /// files). Checkpoints hold only the trained parameters, so a resume rebuilds the rest
    /// from the base model: it is refused when the checkpoint names another identity.
    pub base_identity: Option<String>,
}

impl<M> Default for Hooks<'_, M> {
    fn default() -> Self {
        Hooks {
            on_event: None,
            evaluate: None,
            checkpoint: None,
            base_identity: None,
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome<M> {
    /// The trained module.
    pub module: M,
    /// Whether every phase ran to its end (false when a hook stopped the run).
    pub completed: bool,
    /// The evaluation after the last step.
    pub final_eval: Option<Evaluation>,
    /// The best evaluation: phase, step, value.
    pub best_eval: Option<(Phase, usize, Evaluation)>,
}

/// The training engine for a [`BilevelProblem`].
pub struct Trainer<'p, B: AutodiffBackend, P: BilevelProblem<B>> {
    problem: &'p P,
    groups: ParamGroups,
    config: TrainConfig,
    device: B::Device,
}

type Rec = BinBytesRecorder<FullPrecisionSettings>;

impl<'p, B: AutodiffBackend, P: BilevelProblem<B>> Trainer<'p, B, P> {
    /// An engine for `problem`, optimising `groups` as `config` says, on `device`.
    pub fn new(
        problem: &'p P,
        groups: ParamGroups,
        config: TrainConfig,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if groups.lower.is_empty() && groups.upper.is_empty() {
            return Err(TrainError::Config("no parameter to train".into()));
        }
        if config.mode == Mode::Bilevel && groups.upper.is_empty() {
            return Err(TrainError::Config(
                "bi-level training needs upper-level parameters (magnitudes): use a DoRA/BiDoRA adapter, or single-level mode".into(),
            ));
        }
        Ok(Trainer {
            problem,
            groups,
            config,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn reseed(&self, phase: Phase, step: usize, sub: u64) {
        let phase_tag = match phase {
            Phase::Search => 1u64,
            Phase::Retrain => 2u64,
        };
        let mut rng = SplitMix64(
            self.config.seed
                ^ phase_tag.wrapping_mul(0xA24B_AED4_963E_E407)
                ^ (step as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25)
                ^ sub.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        );
        B::seed(&self.device, rng.next_u64());
    }

    /// Runs the whole schedule: the search (or single-level training) and, if configured, the
    /// retraining phase. With `resume`, continues from a checkpoint of the same configuration;
    /// `module` then only provides the structure (its values are replaced).
    pub fn run(
        &self,
        module: P::Module,
        data: Data<'_, P::Batch>,
        hooks: Hooks<'_, P::Module>,
        resume: Option<Checkpoint>,
    ) -> Result<Outcome<P::Module>, TrainError> {
        let Data {
            train,
            mut val,
            mut retrain,
        } = data;
        if self.config.mode == Mode::Bilevel && val.is_none() {
            return Err(TrainError::Config(
                "bi-level training needs a validation stream".into(),
            ));
        }
        if self.config.retrain.is_some() && retrain.is_none() {
            return Err(TrainError::Config(
                "the retraining phase needs a retraining stream (D_tr ∪ D_val)".into(),
            ));
        }
        let Hooks {
            mut on_event,
            mut evaluate,
            checkpoint: checkpoint_path,
            base_identity,
        } = hooks;
        let config_json = serde_json::to_value(&self.config).unwrap_or_default();
        let recorder = Rec::default();
        let ck_err = |m: String| TrainError::Checkpoint {
            path: checkpoint_path.clone().unwrap_or_default(),
            message: m,
        };

        let mut module = module;
        let mut state = CheckpointState {
            phase: Phase::Search,
            step: 0,
            positions: [0; 3],
            best: None,
            last_eval: None,
            config: config_json.clone(),
            base: base_identity.clone(),
        };
        let mut groups = self.groups.clone();
        let mut lower_opt = self.config.lower.adamw().init::<B, P::Module>();
        let mut upper_opt = self.config.upper.adamw().init::<B, P::Module>();
        let initial_direction: ParamVec<B::InnerBackend>;

        if let Some(ck) = resume {
            if ck.state.config != config_json {
                return Err(ck_err(
                    "the checkpoint was written with a different training configuration".into(),
                ));
            }
            if let (Some(saved), Some(now)) = (&ck.state.base, &base_identity) {
                if saved != now {
                    return Err(TrainError::BaseChanged {
                        path: checkpoint_path.clone().unwrap_or_default(),
                        saved: saved.clone(),
                        now: now.clone(),
                    });
                }
            }
            // The optimiser states and the saved values are keyed by the parameter ids of the
            // run that wrote the checkpoint: the module takes them over (by position), and the
            // groups, which name the template's ids, are translated the same way.
            let template_ids = param_ids(&module);
            if template_ids.len() != ck.param_ids.len() {
                return Err(ck_err(format!(
                    "the checkpoint's module has {} parameters, this one {}",
                    ck.param_ids.len(),
                    template_ids.len()
                )));
            }
            let saved_ids: Vec<ParamId> =
                ck.param_ids.iter().map(|&id| ParamId::from(id)).collect();
            module = with_ids(module, &saved_ids);
            let trained = ParamVec::from_host(&ck.trained, &self.device);
            check_shapes(&values::<B, _>(&module, &trained.ids()), &trained).map_err(ck_err)?;
            module = with_values::<B, _>(module, &trained);
            let map: std::collections::HashMap<_, _> =
                template_ids.into_iter().zip(saved_ids).collect();
            let translate = |ids: &[ParamId]| -> Vec<ParamId> {
                ids.iter()
                    .map(|id| map.get(id).copied().unwrap_or(*id))
                    .collect()
            };
            groups = ParamGroups {
                lower: translate(&groups.lower),
                upper: translate(&groups.upper),
            };
            if ck.state.phase == Phase::Retrain {
                let r = self
                    .config
                    .retrain
                    .as_ref()
                    .map(|r| r.level)
                    .unwrap_or_default();
                lower_opt = r.adamw().init::<B, P::Module>();
            }
            lower_opt = lower_opt.load_record(
                recorder
                    .load(ck.lower_optim.clone(), &self.device)
                    .map_err(|e| ck_err(format!("optimiser record: {e}")))?,
            );
            if !ck.upper_optim.is_empty() {
                upper_opt = upper_opt.load_record(
                    recorder
                        .load(ck.upper_optim.clone(), &self.device)
                        .map_err(|e| ck_err(format!("optimiser record: {e}")))?,
                );
            }
            initial_direction = ParamVec::from_host(&ck.initial_direction, &self.device);
            state = ck.state;
            state.base = base_identity.clone();
        } else {
            initial_direction = values::<B, _>(&module, &groups.lower);
        }
        let saved = Saved {
            trained: [groups.lower.clone(), groups.upper.clone()].concat(),
            initial_direction,
        };
        let search_ids = match self.config.mode {
            Mode::SingleLevel => [groups.lower.clone(), groups.upper.clone()].concat(),
            Mode::Bilevel => groups.lower.clone(),
        };
        train.seek(state.positions[0]);
        if let Some(v) = val.as_deref_mut() {
            v.seek(state.positions[1]);
        }
        if let Some(r) = retrain.as_deref_mut() {
            r.seek(state.positions[2]);
        }

        let mut emit = |e: Event| -> Control {
            match on_event.as_deref_mut() {
                Some(f) => f(&e),
                None => Control::Continue,
            }
        };

        // ---- search (or single-level training)
        if state.phase == Phase::Search {
            let total = self.config.iterations;
            if emit(Event::PhaseStart {
                phase: Phase::Search,
                total,
                from: state.step,
            }) == Control::Stop
            {
                return Ok(self.outcome(module, false, state));
            }
            while state.step < total {
                let step = state.step;
                let factor = self.config.schedule.factor(step, total);
                let (lr_lo, lr_up) = (self.config.lower.lr * factor, self.config.upper.lr * factor);
                self.reseed(Phase::Search, step, 0);
                let batch = train.next_batch();
                let (lower_loss, grads) =
                    lower_objective_grads(self.problem, &module, &batch, self.config.gamma);
                check_finite("lower loss", lower_loss, step)?;
                let mut g = gradients::<B, _>(&grads, &module, &search_ids);
                self.clip(&mut g, "lower gradient", step)?;
                let gp = to_gradients_params::<B, _>(&module, &g);
                module = lower_opt.step(lr_lo, module, gp);

                let mut upper_loss = None;
                if self.config.mode == Mode::Bilevel
                    && (step + 1).is_multiple_of(self.config.unroll)
                {
                    let val_stream = val.as_deref_mut().ok_or_else(|| {
                        TrainError::Config("bi-level training needs a validation stream".into())
                    })?;
                    let val_batch = val_stream.next_batch();
                    let mut reseed = |sub: u64| self.reseed(Phase::Search, step, sub);
                    let h = hypergradient(
                        self.problem,
                        &module,
                        &groups,
                        &batch,
                        &val_batch,
                        self.config.hypergradient,
                        self.config.gamma,
                        &mut reseed,
                    )
                    .map_err(|e| with_step(e, step))?;
                    check_finite("upper loss", h.upper_loss, step)?;
                    let mut hg = h.grad;
                    self.clip(&mut hg, "hypergradient", step)?;
                    let gp = to_gradients_params::<B, _>(&module, &hg);
                    module = upper_opt.step(lr_up, module, gp);
                    upper_loss = Some(h.upper_loss);
                }
                state.step += 1;
                state.positions = positions(train, &val, &retrain);
                let control = emit(Event::Step {
                    phase: Phase::Search,
                    step,
                    total,
                    lower_loss,
                    upper_loss,
                    lr: (lr_lo, lr_up),
                });
                let control = self.end_of_step(
                    control,
                    Phase::Search,
                    step,
                    total,
                    &mut evaluate,
                    &checkpoint_path,
                    &module,
                    (&lower_opt, &upper_opt),
                    &saved,
                    &mut state,
                    &mut emit,
                )?;
                if control == Control::Stop {
                    return Ok(self.outcome(module, false, state));
                }
            }
            if let Some(r) = &self.config.retrain {
                // Reset the direction to its pre-search values; freeze the magnitudes.
                module = with_values::<B, _>(module, &saved.initial_direction);
                lower_opt = r.level.adamw().init::<B, P::Module>();
                state.phase = Phase::Retrain;
                state.step = 0;
            }
        }

        // ---- retraining
        if let (Some(r), Phase::Retrain) = (&self.config.retrain, state.phase) {
            let stream = retrain.ok_or_else(|| {
                TrainError::Config("the retraining phase needs a retraining stream".into())
            })?;
            let total = r.iterations;
            if emit(Event::PhaseStart {
                phase: Phase::Retrain,
                total,
                from: state.step,
            }) == Control::Stop
            {
                return Ok(self.outcome(module, false, state));
            }
            while state.step < total {
                let step = state.step;
                let lr = r.level.lr * self.config.schedule.factor(step, total);
                self.reseed(Phase::Retrain, step, 0);
                let batch = stream.next_batch();
                let (loss, grads) =
                    lower_objective_grads(self.problem, &module, &batch, self.config.gamma);
                check_finite("retraining loss", loss, step)?;
                let mut g = gradients::<B, _>(&grads, &module, &groups.lower);
                self.clip(&mut g, "retraining gradient", step)?;
                let gp = to_gradients_params::<B, _>(&module, &g);
                module = lower_opt.step(lr, module, gp);
                state.step += 1;
                state.positions[2] = stream.position();
                let control = emit(Event::Step {
                    phase: Phase::Retrain,
                    step,
                    total,
                    lower_loss: loss,
                    upper_loss: None,
                    lr: (lr, 0.0),
                });
                let control = self.end_of_step(
                    control,
                    Phase::Retrain,
                    step,
                    total,
                    &mut evaluate,
                    &checkpoint_path,
                    &module,
                    (&lower_opt, &upper_opt),
                    &saved,
                    &mut state,
                    &mut emit,
                )?;
                if control == Control::Stop {
                    return Ok(self.outcome(module, false, state));
                }
            }
        }
        Ok(self.outcome(module, true, state))
    }

    /// After a step: evaluate and checkpoint when due (always at the phase's last step), and
    /// merge the hooks' stop requests.
    #[allow(clippy::too_many_arguments)]
    fn end_of_step<O1: Optimizer<P::Module, B>, O2: Optimizer<P::Module, B>>(
        &self,
        mut control: Control,
        phase: Phase,
        step: usize,
        total: usize,
        evaluate: &mut Option<EvalFn<'_, P::Module>>,
        checkpoint_path: &Option<PathBuf>,
        module: &P::Module,
        optimisers: (&O1, &O2),
        saved: &Saved<B::InnerBackend>,
        state: &mut CheckpointState,
        emit: &mut dyn FnMut(Event) -> Control,
    ) -> Result<Control, TrainError> {
        let last = state.step == total;
        if self.due(self.config.eval_every, state.step) || last {
            if let Some(c) = self.evaluate(evaluate, module, phase, step, state, emit) {
                control = control_max(control, c);
            }
        }
        if self.due(self.config.checkpoint_every, state.step)
            || (last && self.config.checkpoint_every.is_some())
        {
            let c = self.checkpoint(
                checkpoint_path,
                module,
                optimisers.0,
                optimisers.1,
                saved,
                state,
                emit,
            )?;
            control = control_max(control, c);
        }
        Ok(control)
    }

    fn outcome(
        &self,
        module: P::Module,
        completed: bool,
        state: CheckpointState,
    ) -> Outcome<P::Module> {
        Outcome {
            module,
            completed,
            final_eval: state.last_eval,
            best_eval: state.best,
        }
    }

    fn due(&self, every: Option<usize>, done: usize) -> bool {
        every.is_some_and(|k| done.is_multiple_of(k))
    }

    fn clip(
        &self,
        g: &mut ParamVec<B::InnerBackend>,
        what: &str,
        step: usize,
    ) -> Result<(), TrainError> {
        let norm = match self.config.clip_grad_norm {
            Some(max) => g.clip_norm(max),
            None => g.norm(),
        };
        check_finite(what, norm, step)
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        evaluate: &mut Option<EvalFn<'_, P::Module>>,
        module: &P::Module,
        phase: Phase,
        step: usize,
        state: &mut CheckpointState,
        emit: &mut dyn FnMut(Event) -> Control,
    ) -> Option<Control> {
        let f = evaluate.as_deref_mut()?;
        // Deterministic evaluation, whatever it draws (e.g. dropout left on by mistake).
        self.reseed(phase, step, 3);
        let evaluation = f(module);
        let is_best = match &state.best {
            Some((_, _, best)) => evaluation.better_than(best),
            None => true,
        };
        if is_best {
            state.best = Some((phase, step, evaluation.clone()));
        }
        state.last_eval = Some(evaluation.clone());
        Some(emit(Event::Eval {
            phase,
            step,
            evaluation,
            is_best,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn checkpoint<O1: Optimizer<P::Module, B>, O2: Optimizer<P::Module, B>>(
        &self,
        checkpoint_path: &Option<PathBuf>,
        module: &P::Module,
        lower_opt: &O1,
        upper_opt: &O2,
        saved: &Saved<B::InnerBackend>,
        state: &CheckpointState,
        emit: &mut dyn FnMut(Event) -> Control,
    ) -> Result<Control, TrainError> {
        let Some(path) = checkpoint_path else {
            return Ok(Control::Continue);
        };
        let err = |m: String| TrainError::Checkpoint {
            path: path.clone(),
            message: m,
        };
        let recorder = Rec::default();
        let lower_bytes = recorder
            .record(lower_opt.to_record(), ())
            .map_err(|e| err(format!("optimiser record: {e}")))?;
        let upper_bytes = recorder
            .record(upper_opt.to_record(), ())
            .map_err(|e| err(format!("optimiser record: {e}")))?;
        let ck = Checkpoint {
            state: state.clone(),
            param_ids: param_ids(module).iter().map(|id| id.val()).collect(),
            trained: values::<B, _>(module, &saved.trained).to_host(),
            lower_optim: lower_bytes,
            upper_optim: upper_bytes,
            initial_direction: saved.initial_direction.to_host(),
        };
        ck.save(path)?;
        Ok(emit(Event::Checkpoint {
            phase: state.phase,
            step: state.step,
            path: path.clone(),
        }))
    }
}

/// What every checkpoint of a run saves besides the optimisers and the state.
struct Saved<B: burn::tensor::backend::Backend> {
    /// The trained parameters (both levels' groups), by the ids the module carries.
    trained: Vec<ParamId>,
    /// The direction from before the search, restored for the retraining phase.
    initial_direction: ParamVec<B>,
}

/// Checks that saved values have the shapes (lengths) of the parameters they replace.
fn check_shapes<B: burn::tensor::backend::Backend>(
    current: &ParamVec<B>,
    saved: &ParamVec<B>,
) -> Result<(), String> {
    if current.len() != saved.len() {
        return Err(format!(
            "the checkpoint trains {} parameters this module does not have",
            saved.len() - current.len().min(saved.len())
        ));
    }
    for id in saved.ids() {
        let (a, b) = (current.get(id), saved.get(id));
        let (a, b) = (a.map(|t| t.dims()[0]), b.map(|t| t.dims()[0]));
        if a != b {
            return Err(format!(
                "a trained parameter has {} values in the checkpoint, {} in this module",
                b.unwrap_or(0),
                a.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

fn positions<T>(
    train: &dyn BatchStream<Batch = T>,
    val: &Option<&mut dyn BatchStream<Batch = T>>,
    retrain: &Option<&mut dyn BatchStream<Batch = T>>,
) -> [u64; 3] {
    [
        train.position(),
        val.as_ref().map(|v| v.position()).unwrap_or(0),
        retrain.as_ref().map(|r| r.position()).unwrap_or(0),
    ]
}

fn control_max(a: Control, b: Control) -> Control {
    if a == Control::Stop || b == Control::Stop {
        Control::Stop
    } else {
        Control::Continue
    }
}

fn check_finite(what: &str, value: f64, step: usize) -> Result<(), TrainError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            what: what.to_string(),
            value,
            step,
        })
    }
}

fn with_step(e: TrainError, step: usize) -> TrainError {
    match e {
        TrainError::NonFinite { what, value, .. } => TrainError::NonFinite { what, value, step },
        other => other,
    }
}
