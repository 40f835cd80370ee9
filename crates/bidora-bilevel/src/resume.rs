//! Checkpoint and resume: what a run's state is made of, how it is written, and how a run
//! continues from it bit-identically.
//!
//! The module's frozen parameters are not saved: a resumed run is given a module rebuilt the
//! same way (same base weights) and takes over the saved parameter ids, trained values,
//! optimiser states, stream positions and step. The random state needs no saving: every pass
//! reseeds from `(seed, phase, step, pass)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::checkpoint::{Checkpoint, CheckpointState};
use crate::config::TrainConfig;
use crate::events::Phase;
use crate::params::{param_ids, values, with_ids, with_values, ParamVec};
use crate::problem::ParamGroups;
use crate::TrainError;

/// The optimiser of each level.
pub(crate) type Adam<B, M> = OptimizerAdaptor<AdamW, M, B>;

type Rec = BinBytesRecorder<FullPrecisionSettings>;

/// Everything a run carries from step to step.
pub(crate) struct RunState<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The groups, by the ids the module carries.
    pub groups: ParamGroups,
    pub lower_opt: Adam<B, M>,
    pub upper_opt: Adam<B, M>,
    /// Phase, step, stream positions, best and last evaluation.
    pub state: CheckpointState,
    /// The direction from before the search, restored for the retraining phase.
    pub initial_direction: ParamVec<B::InnerBackend>,
    /// When this process started (or resumed) the run.
    pub started: Instant,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> RunState<B, M> {
    /// A new run's state and module, or the checkpoint's (refused when it was written with
    /// another configuration or base model, or for another module structure).
    pub fn start(
        module: M,
        groups: &ParamGroups,
        config: &TrainConfig,
        base_identity: Option<String>,
        resume: Option<(Checkpoint, PathBuf)>,
        world: usize,
        device: &B::Device,
    ) -> Result<(Self, M), TrainError> {
        let config_json = serde_json::to_value(config).unwrap_or_default();
        let Some((ck, path)) = resume else {
            let state = CheckpointState {
                phase: Phase::Search,
                step: 0,
                positions: [0; 3],
                best: None,
                last_eval: None,
                config: config_json,
                base: base_identity,
                world,
                elapsed_s: Some(0.0),
            };
            let initial_direction = values::<B, _>(&module, &groups.lower);
            let run = Self::assemble(groups.clone(), state, initial_direction, config);
            return Ok((run, module));
        };
        let err = |message: String| TrainError::Checkpoint {
            path: path.clone(),
            message,
        };
        if ck.state.world != world {
            return Err(err(format!(
                "the checkpoint was written by a run on {} peer(s), this run has {world}: resume with the same number of devices (the shards of every batch depend on it)",
                ck.state.world
            )));
        }
        if ck.state.config != config_json {
            return Err(err(
                "the checkpoint was written with a different training configuration".into(),
            ));
        }
        if let (Some(saved), Some(now)) = (&ck.state.base, &base_identity) {
            if saved != now {
                return Err(TrainError::BaseChanged {
                    path,
                    saved: saved.clone(),
                    now: now.clone(),
                });
            }
        }
        let (module, groups) = take_over_ids(module, groups, &ck.param_ids).map_err(err)?;
        let trained = ParamVec::from_host(&ck.trained, device);
        check_shapes(&values::<B, _>(&module, &trained.ids()), &trained).map_err(err)?;
        let module = with_values::<B, _>(module, &trained);
        let initial_direction = ParamVec::from_host(&ck.initial_direction, device);
        let mut state = ck.state;
        state.base = base_identity;
        let mut run = Self::assemble(groups, state, initial_direction, config);
        if run.state.phase == Phase::Retrain {
            run.lower_opt = retrain_optimiser(config);
        }
        let load = |bytes: Vec<u8>| {
            Rec::default()
                .load(bytes, device)
                .map_err(|e| err(format!("optimiser record: {e}")))
        };
        run.lower_opt = run.lower_opt.load_record(load(ck.lower_optim)?);
        if !ck.upper_optim.is_empty() {
            run.upper_opt = run.upper_opt.load_record(load(ck.upper_optim)?);
        }
        Ok((run, module))
    }

    fn assemble(
        groups: ParamGroups,
        state: CheckpointState,
        initial_direction: ParamVec<B::InnerBackend>,
        config: &TrainConfig,
    ) -> Self {
        RunState {
            groups,
            lower_opt: config.lower.adamw().init::<B, M>(),
            upper_opt: config.upper.adamw().init::<B, M>(),
            state,
            initial_direction,
            started: Instant::now(),
        }
    }

    /// From the search to retraining: the direction back to its pre-search values, a fresh
    /// optimiser with the retraining settings, the magnitudes kept (docs/METHOD.md §5).
    pub fn enter_retraining(&mut self, module: M, config: &TrainConfig) -> M {
        self.lower_opt = retrain_optimiser(config);
        self.state.phase = Phase::Retrain;
        self.state.step = 0;
        with_values::<B, _>(module, &self.initial_direction)
    }

    /// Writes the checkpoint of `module` atomically.
    pub fn save(&self, module: &M, path: &Path) -> Result<(), TrainError> {
        let err = |m: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: m,
        };
        let record =
            |bytes: Result<Vec<u8>, _>| bytes.map_err(|e| err(format!("optimiser record: {e}")));
        let recorder = Rec::default();
        let mut state = self.state.clone();
        let here = self.started.elapsed().as_secs_f64();
        state.elapsed_s = state.elapsed_s.map(|before| before + here);
        let ck = Checkpoint {
            state,
            param_ids: param_ids(module).iter().map(|id| id.val()).collect(),
            trained: values::<B, _>(module, &self.groups.all()).to_host(),
            lower_optim: record(recorder.record(self.lower_opt.to_record(), ()))?,
            upper_optim: record(recorder.record(self.upper_opt.to_record(), ()))?,
            initial_direction: self.initial_direction.to_host(),
        };
        ck.save(path)
    }
}

fn retrain_optimiser<B: AutodiffBackend, M: AutodiffModule<B>>(config: &TrainConfig) -> Adam<B, M> {
    config
        .retrain
        .as_ref()
        .map(|r| r.level)
        .unwrap_or_default()
        .adamw()
        .init::<B, M>()
}

/// Renames the module's parameters, by position, to the ids of the run that wrote the
/// checkpoint (its optimiser states and saved values are keyed by them), and translates the
/// groups, which name the module's own ids, the same way.
fn take_over_ids<B: Backend, M: burn::module::Module<B>>(
    module: M,
    groups: &ParamGroups,
    saved: &[u64],
) -> Result<(M, ParamGroups), String> {
    let own = param_ids(&module);
    if own.len() != saved.len() {
        return Err(format!(
            "the checkpoint's module has {} parameters, this one {}",
            saved.len(),
            own.len()
        ));
    }
    let saved: Vec<ParamId> = saved.iter().map(|&id| ParamId::from(id)).collect();
    let map: HashMap<ParamId, ParamId> = own.into_iter().zip(saved.iter().copied()).collect();
    let translate = |ids: &[ParamId]| {
        ids.iter()
            .map(|id| map.get(id).copied().unwrap_or(*id))
            .collect()
    };
    let groups = ParamGroups::new(translate(&groups.lower), translate(&groups.upper));
    Ok((with_ids(module, &saved), groups))
}

/// Checks that saved values have the lengths of the parameters they replace.
fn check_shapes<B: Backend>(current: &ParamVec<B>, saved: &ParamVec<B>) -> Result<(), String> {
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
