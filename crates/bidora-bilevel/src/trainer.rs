//! The training loop: single-level (LoRA, DoRA, full fine-tuning) and bi-level (BiDoRA), with
//! the optional retraining phase. One loop runs every phase ([`Trainer::run`] → `phase`); a
//! step is a search iteration or a retraining step; evaluation and checkpoints follow each step
//! when due. Configuration, events and checkpoint/resume live in their own modules.

use std::path::PathBuf;

use burn::module::ParamId;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::Checkpoint;
pub use crate::config::{Mode, RetrainConfig, TrainConfig};
use crate::distributed::{Collective, Peers};
pub use crate::events::{Control, Data, EvalFn, Evaluation, Event, Hooks, Outcome, Phase};
use crate::hypergrad::{Hypergradient, Level, Part};
use crate::params::{to_gradients_params, values, with_values, ParamVec};
use crate::problem::{BilevelProblem, ParamGroups, Shard};
use crate::resume::RunState;
use crate::stream::{BatchStream, SplitMix64};
use crate::TrainError;

/// The training engine for a [`BilevelProblem`].
pub struct Trainer<'p, B: AutodiffBackend, P: BilevelProblem<B>> {
    problem: &'p P,
    groups: ParamGroups,
    config: TrainConfig,
    device: B::Device,
    collective: Option<&'p dyn Collective<B::InnerBackend>>,
}

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
            collective: None,
        })
    }

    /// Trains data-parallel with the peers of `collective` ([`crate::distributed`]): every
    /// peer runs this engine on the same streams and takes its shard of each batch
    /// ([`BilevelProblem::shard`]); the gradients are averaged over the peers, so every peer
    /// holds the same parameters after every step. Only rank 0 writes checkpoints; give the
    /// hooks (evaluation, events) to rank 0 alone, a stop on any peer stops them all.
    pub fn with_peers(mut self, collective: &'p dyn Collective<B::InnerBackend>) -> Self {
        self.collective = Some(collective);
        self
    }

    fn peers(&self) -> Peers<'p, B::InnerBackend> {
        Peers::new(self.collective, self.device.clone())
    }

    /// Peer `rank`'s shard of `batch` (all of it when alone).
    fn shard(&self, batch: P::Batch) -> Result<Shard<P::Batch>, TrainError> {
        let peers = self.peers();
        if !peers.is_distributed() {
            return Ok(Shard::whole(batch));
        }
        self.problem
            .shard(&batch, peers.rank(), peers.world())
            .ok_or_else(|| {
                TrainError::Config(
                    "training on several peers needs a problem that shards its batches (`BilevelProblem::shard`)".into(),
                )
            })
    }

    fn level<'a>(
        &'a self,
        module: &'a P::Module,
        peers: &'a Peers<'a, B::InnerBackend>,
    ) -> Level<'a, B, P> {
        Level {
            problem: self.problem,
            module,
            gamma: self.config.gamma,
            peers,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Seeds the run's stream (host and backend) for one pass of one step: the same `(phase, step, sub)` always draws
    /// the same numbers, so no random state needs saving and the DARTS `±` passes share masks.
    fn reseed(&self, phase: Phase, step: usize, sub: u64) {
        let phase_tag = match phase {
            Phase::Search => 1u64,
            Phase::Retrain => 2u64,
        };
        // Peers draw their own dropout masks; alone, the rank term is zero.
        let peers = self.peers();
        let rank_tag = if peers.is_distributed() {
            peers.rank() as u64 + 1
        } else {
            0
        };
        let mut rng = SplitMix64(
            self.config.seed
                ^ rank_tag.wrapping_mul(0xBF58_476D_1CE4_E5B9)
                ^ phase_tag.wrapping_mul(0xA24B_AED4_963E_E407)
                ^ (step as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25)
                ^ sub.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        );
        let seed = rng.next_u64();
        // The host stream draws what shapes the run (dropout keys); the backend's generator
        // serves problems that call `Tensor::random` themselves.
        bidora_util::rng::seed(seed);
        B::seed(&self.device, seed);
    }

    /// Runs the whole schedule: the search (or single-level training) and, if configured, the
    /// retraining phase. With `resume`, continues from a checkpoint of the same configuration
    /// and base model; `module` then provides the structure and the frozen weights (its trained
    /// values are replaced).
    pub fn run(
        &self,
        module: P::Module,
        data: Data<'_, P::Batch>,
        hooks: Hooks<'_, P::Module>,
        resume: Option<Checkpoint>,
    ) -> Result<Outcome<P::Module>, TrainError> {
        if self.config.mode == Mode::Bilevel && data.val.is_none() {
            return Err(TrainError::Config(
                "bi-level training needs a validation stream".into(),
            ));
        }
        if self.config.retrain.is_some() && data.retrain.is_none() {
            return Err(TrainError::Config(
                "the retraining phase needs a retraining stream (D_tr ∪ D_val)".into(),
            ));
        }
        let Hooks {
            on_event,
            evaluate,
            checkpoint,
            base_identity,
        } = hooks;
        let resume = resume.map(|ck| (ck, checkpoint.clone().unwrap_or_default()));
        let peers = self.peers();
        // Every peer starts from rank 0's trained values (a resume replaces them with the
        // checkpoint's, which every peer reads); alone, the module is left as it is.
        let module = match peers.is_distributed() {
            true => {
                let start = peers.from_rank0(values::<B, _>(&module, &self.groups.all()))?;
                with_values::<B, _>(module, &start)
            }
            false => module,
        };
        let (mut run, mut module) = RunState::start(
            module,
            &self.groups,
            &self.config,
            base_identity,
            resume,
            peers.world(),
            &self.device,
        )?;
        let phase_tag = usize::from(run.state.phase == Phase::Retrain);
        peers.agree_on("the phase to resume in", phase_tag)?;
        peers.agree_on("the step to resume from", run.state.step)?;
        let mut ctx = Ctx {
            data,
            on_event,
            evaluate,
            checkpoint,
        };
        ctx.seek(&run.state.positions);
        let mut completed = true;
        if run.state.phase == Phase::Search {
            (module, completed) = self.phase(Phase::Search, module, &mut run, &mut ctx)?;
            if completed && self.config.retrain.is_some() {
                module = run.enter_retraining(module, &self.config);
            }
        }
        if completed && run.state.phase == Phase::Retrain {
            (module, completed) = self.phase(Phase::Retrain, module, &mut run, &mut ctx)?;
        }
        Ok(Outcome {
            module,
            completed,
            final_eval: run.state.last_eval,
            best_eval: run.state.best,
        })
    }

    /// Runs `phase` from the state's step to its end; `false` when a hook stopped it.
    fn phase(
        &self,
        phase: Phase,
        mut module: P::Module,
        run: &mut RunState<B, P::Module>,
        ctx: &mut Ctx<'_, '_, P::Batch, P::Module>,
    ) -> Result<(P::Module, bool), TrainError> {
        let total = match (phase, &self.config.retrain) {
            (Phase::Retrain, Some(r)) => r.iterations,
            _ => self.config.iterations,
        };
        let start = Event::PhaseStart {
            phase,
            total,
            from: run.state.step,
        };
        let peers = self.peers();
        if peers.agree_control(ctx.emit(start))? == Control::Stop {
            return Ok((module, false));
        }
        while run.state.step < total {
            let step = run.state.step;
            let factor = self.config.schedule.factor(step, total);
            let event;
            (module, event) = match phase {
                Phase::Search => self.search_step(step, factor, module, run, ctx)?,
                Phase::Retrain => self.retrain_step(step, factor, module, run, ctx)?,
            };
            run.state.step += 1;
            run.state.positions = ctx.positions();
            let control = ctx.emit(event);
            let control = self.end_of_step(control, phase, step, total, &module, run, ctx)?;
            if peers.agree_control(control)? == Control::Stop {
                return Ok((module, false));
            }
        }
        Ok((module, true))
    }

    /// One search iteration (docs/METHOD.md §4): a lower step and, every `unroll` steps, an
    /// upper step with the hypergradient. Single-level mode trains both groups at once.
    fn search_step(
        &self,
        step: usize,
        factor: f64,
        module: P::Module,
        run: &mut RunState<B, P::Module>,
        ctx: &mut Ctx<'_, '_, P::Batch, P::Module>,
    ) -> Result<(P::Module, Event), TrainError> {
        let (lr_lo, lr_up) = (self.config.lower.lr * factor, self.config.upper.lr * factor);
        self.reseed(Phase::Search, step, 0);
        let batch = ctx.data.train.next_batch();
        let upper_due =
            self.config.mode == Mode::Bilevel && (step + 1).is_multiple_of(self.config.unroll);
        // The finite differences' part of the batch, cut before sharding, so that it is the
        // same examples whatever the number of peers.
        let fd = match upper_due {
            true => self.fd_batch(&batch)?.map(|b| self.shard(b)).transpose()?,
            false => None,
        };
        let batch = self.shard(batch)?;
        let ids = match self.config.mode {
            Mode::SingleLevel => run.groups.all(),
            Mode::Bilevel => run.groups.lower.clone(),
        };
        let (lower_loss, mut module) =
            self.lower_step(module, run, &batch, &ids, lr_lo, "lower", step)?;
        let mut upper_loss = None;
        let mut hypergradient_norms = None;
        if upper_due {
            let val = ctx.data.val.as_deref_mut().ok_or_else(|| {
                TrainError::Config("bi-level training needs a validation stream".into())
            })?;
            let val_batch = self.shard(val.next_batch())?;
            let mut reseed = |sub: u64| self.reseed(Phase::Search, step, sub);
            let peers = self.peers();
            let h = self
                .level(&module, &peers)
                .hypergradient(
                    &run.groups,
                    Part::of(fd.as_ref().unwrap_or(&batch)),
                    Part::of(&val_batch),
                    self.config.hypergradient,
                    &mut reseed,
                )
                .map_err(|e| with_step(e, step))?;
            check_finite("upper loss", h.upper_loss, step)?;
            hypergradient_norms = Some((h.direct_norm, h.mixed_norm));
            let mut hg = h.grad;
            self.clip(&mut hg, "hypergradient", step)?;
            let gp = to_gradients_params::<B, _>(&module, &hg);
            module = run.upper_opt.step(lr_up, module, gp);
            upper_loss = Some(h.upper_loss);
        }
        let event = Event::Step {
            phase: Phase::Search,
            step,
            total: self.config.iterations,
            lower_loss,
            upper_loss,
            lr: (lr_lo, lr_up),
            hypergradient_norms,
        };
        Ok((module, event))
    }

    /// The part of the training batch the finite differences run on: `None` for all of it.
    fn fd_batch(&self, batch: &P::Batch) -> Result<Option<P::Batch>, TrainError> {
        let f = self.config.fd_fraction;
        if f >= 1.0 || self.config.hypergradient == Hypergradient::FirstOrder {
            return Ok(None);
        }
        self.problem.sub_batch(batch, f).map(Some).ok_or_else(|| {
            TrainError::Config(format!(
                "`fd_fraction` {f} needs a problem that splits its batches (`BilevelProblem::sub_batch`)"
            ))
        })
    }

    /// One retraining step: the direction on D_tr ∪ D_val, magnitudes frozen.
    fn retrain_step(
        &self,
        step: usize,
        factor: f64,
        module: P::Module,
        run: &mut RunState<B, P::Module>,
        ctx: &mut Ctx<'_, '_, P::Batch, P::Module>,
    ) -> Result<(P::Module, Event), TrainError> {
        let r = self
            .config
            .retrain
            .ok_or_else(|| TrainError::Config("the retraining phase needs its settings".into()))?;
        let lr = r.level.lr * factor;
        self.reseed(Phase::Retrain, step, 0);
        let stream = ctx.data.retrain.as_deref_mut().ok_or_else(|| {
            TrainError::Config("the retraining phase needs a retraining stream".into())
        })?;
        let batch = self.shard(stream.next_batch())?;
        let ids = run.groups.lower.clone();
        let (loss, module) = self.lower_step(module, run, &batch, &ids, lr, "retraining", step)?;
        let event = Event::Step {
            phase: Phase::Retrain,
            step,
            total: r.iterations,
            lower_loss: loss,
            upper_loss: None,
            lr: (lr, 0.0),
            hypergradient_norms: None,
        };
        Ok((module, event))
    }

    /// An AdamW step of the lower optimiser on `ids` with `L + γR` on `batch` (averaged over
    /// the peers); returns the objective's value and the updated module.
    #[allow(clippy::too_many_arguments)]
    fn lower_step(
        &self,
        module: P::Module,
        run: &mut RunState<B, P::Module>,
        batch: &Shard<P::Batch>,
        ids: &[ParamId],
        lr: f64,
        what: &str,
        step: usize,
    ) -> Result<(f64, P::Module), TrainError> {
        let peers = self.peers();
        let (loss, mut g) = self
            .level(&module, &peers)
            .lower_grads(Part::of(batch), ids)?;
        check_finite(&format!("{what} loss"), loss, step)?;
        self.clip(&mut g, &format!("{what} gradient"), step)?;
        let gp = to_gradients_params::<B, _>(&module, &g);
        Ok((loss, run.lower_opt.step(lr, module, gp)))
    }

    /// After a step: evaluate and checkpoint when due (always at the phase's last step), and
    /// merge the hooks' stop requests.
    #[allow(clippy::too_many_arguments)]
    fn end_of_step(
        &self,
        mut control: Control,
        phase: Phase,
        step: usize,
        total: usize,
        module: &P::Module,
        run: &mut RunState<B, P::Module>,
        ctx: &mut Ctx<'_, '_, P::Batch, P::Module>,
    ) -> Result<Control, TrainError> {
        let last = run.state.step == total;
        if self.due(self.config.eval_every, run.state.step) || last {
            if let Some(c) = self.evaluate(phase, step, module, run, ctx) {
                control = control_max(control, c);
            }
        }
        let checkpoints = self.config.checkpoint_every.is_some();
        let writes = self.peers().rank() == 0;
        if self.due(self.config.checkpoint_every, run.state.step) || (last && checkpoints) {
            if let Some(path) = ctx.checkpoint.clone().filter(|_| writes) {
                run.save(module, &path)?;
                let c = ctx.emit(Event::Checkpoint {
                    phase: run.state.phase,
                    step: run.state.step,
                    path,
                });
                control = control_max(control, c);
            }
        }
        Ok(control)
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

    fn evaluate(
        &self,
        phase: Phase,
        step: usize,
        module: &P::Module,
        run: &mut RunState<B, P::Module>,
        ctx: &mut Ctx<'_, '_, P::Batch, P::Module>,
    ) -> Option<Control> {
        let f = ctx.evaluate.as_deref_mut()?;
        // Deterministic evaluation, whatever it draws (e.g. dropout left on by mistake).
        self.reseed(phase, step, 3);
        let evaluation = f(module);
        let is_best = match &run.state.best {
            Some((_, _, best)) => evaluation.better_than(best),
            None => true,
        };
        if is_best {
            run.state.best = Some((phase, step, evaluation.clone()));
        }
        run.state.last_eval = Some(evaluation.clone());
        Some(ctx.emit(Event::Eval {
            phase,
            step,
            evaluation,
            is_best,
        }))
    }
}

/// The streams and hooks of a run, as the loop uses them.
struct Ctx<'d, 'h, T, M> {
    data: Data<'d, T>,
    on_event: Option<&'h mut dyn FnMut(&Event) -> Control>,
    evaluate: Option<EvalFn<'h, M>>,
    checkpoint: Option<PathBuf>,
}

impl<T, M> Ctx<'_, '_, T, M> {
    fn emit(&mut self, e: Event) -> Control {
        match self.on_event.as_deref_mut() {
            Some(f) => f(&e),
            None => Control::Continue,
        }
    }

    fn positions(&self) -> [u64; 3] {
        positions(&*self.data.train, &self.data.val, &self.data.retrain)
    }

    fn seek(&mut self, positions: &[u64; 3]) {
        self.data.train.seek(positions[0]);
        if let Some(v) = self.data.val.as_deref_mut() {
            v.seek(positions[1]);
        }
        if let Some(r) = self.data.retrain.as_deref_mut() {
            r.seek(positions[2]);
        }
    }
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
