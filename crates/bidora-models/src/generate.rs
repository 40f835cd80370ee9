//! Decoding for the causal LMs ([`crate::gpt2`], [`crate::llama`]): the [`KvCache`] that makes
//! each new token cost one position, greedy decoding with and without it, and beam search.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

/// The keys and values of the positions a decoder has seen, per layer (`[batch, kv_heads,
/// positions, head_dim]`, rotated), so that each new token costs one position instead of a
/// re-run of the prefix. Empty before the first call of `forward_cached`.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        KvCache { layers: Vec::new() }
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The positions seen so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing has been seen yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of the rows `rows` (in that order, repeats allowed): how beam search follows
    /// each surviving beam's parent.
    pub fn select(&self, rows: &[usize], device: &B::Device) -> Self {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), device);
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone().select(0, idx.clone()),
                        v.clone().select(0, idx.clone()),
                    )
                })
                .collect(),
        }
    }
}

/// The additive mask of `seq` new queries after `past` cached positions, `[1, 1, seq, past +
/// seq]`: each query sees every cached position and the new ones up to itself.
pub(crate) fn offset_causal_bias<B: Backend>(
    past: usize,
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let total = past + seq;
    let bias: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_data(TensorData::new(bias, [1, 1, seq, total]), device)
}

/// One row of token ids, `[1, len]`.
pub fn ids_row<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// The logits `[vocab]` at the last position of the first row of `logits` `[batch, seq, vocab]`.
pub fn last_position<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 1> {
    let [_, s, v] = logits.dims();
    logits.slice([0..1, s - 1..s, 0..v]).reshape([v])
}

/// The argmax of `logits` `[vocab]`.
/// The most likely token of a row of logits `[vocab]`: greedy decoding's `pick` for
/// [`decode_cached`].
pub fn greedy_pick<B: Backend>(logits: Tensor<B, 1>) -> u32 {
    argmax(logits)
}

fn argmax<B: Backend>(logits: Tensor<B, 1>) -> u32 {
    let next: i64 = logits.argmax(0).into_scalar().elem();
    u32::try_from(next).unwrap_or(0)
}

/// Decoding with a [`KvCache`]: the prompt in one pass, then one position per new token.
/// `pick` chooses each token from the last position's logits `[vocab]`; `on_token` sees the
/// new tokens so far after each one and returns true to stop there. Returns the new tokens,
/// ending with `stop` when it was picked.
pub fn decode_cached<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
    prompt: &[u32],
    new_tokens: usize,
    stop: Option<u32>,
    pick: &mut dyn FnMut(Tensor<B, 1>) -> u32,
    on_token: &mut dyn FnMut(&[u32]) -> bool,
    device: &B::Device,
) -> Vec<u32> {
    let mut cache = KvCache::new();
    let mut step = |input: &[u32]| pick(last_position(forward(ids_row(input, device), &mut cache)));
    decode_loop(prompt, new_tokens, stop, &mut step, on_token)
}

/// The loop of [`decode_cached`] for any decoder: `step` takes the new input (the prompt, then
/// the last token) and picks the next token.
pub fn decode_loop(
    prompt: &[u32],
    new_tokens: usize,
    stop: Option<u32>,
    step: &mut dyn FnMut(&[u32]) -> u32,
    on_token: &mut dyn FnMut(&[u32]) -> bool,
) -> Vec<u32> {
    let mut out = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    for _ in 0..new_tokens {
        let next = step(&input);
        out.push(next);
        if Some(next) == stop || on_token(&out) {
            break;
        }
        input = vec![next];
    }
    out
}

/// Greedy decoding with a [`KvCache`] ([`decode_cached`] with the argmax). Returns the new
/// tokens (stopping after `stop`) and, for each, the logits `[vocab]` it was chosen from.
pub fn greedy_cached<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
    prompt: &[u32],
    new_tokens: usize,
    stop: Option<u32>,
    device: &B::Device,
) -> (Vec<u32>, Vec<Tensor<B, 1>>) {
    let mut logits = Vec::new();
    let mut pick = |last: Tensor<B, 1>| {
        logits.push(last.clone());
        argmax(last)
    };
    let out = decode_cached(
        forward,
        prompt,
        new_tokens,
        stop,
        &mut pick,
        &mut |_| false,
        device,
    );
    (out, logits)
}

/// Greedy decoding of several prompts at once with one [`KvCache`] (one batch row each): the
/// prompts in one pass, then one position per row per new token, so a step's matrix products
/// serve every row. The prompts must share a length (the cache has no padding mask); rows that
/// emit `stop` end there (the stop token kept, as [`decode_cached`]) and decoding ends when all
/// have. Returns each row's new tokens, or an error naming the first prompt of another length.
pub fn greedy_batch<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    stop: Option<u32>,
    device: &B::Device,
) -> Result<Vec<Vec<u32>>, crate::ModelError> {
    let mut cache = KvCache::new();
    let mut step = |input: &[u32], rows: usize| {
        let s = input.len() / rows;
        let data: Vec<i64> = input.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(data, [rows, s]), device);
        let logits = forward(ids, &mut cache);
        let v = logits.dims()[2];
        let picked: Vec<i64> = logits
            .slice([0..rows, s - 1..s, 0..v])
            .reshape([rows, v])
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        picked
            .iter()
            .map(|&t| u32::try_from(t).unwrap_or(0))
            .collect()
    };
    batch_loop(prompts, new_tokens, stop, &mut step)
}

/// The loop of [`greedy_batch`] for any decoder: `step` takes the new input of every row
/// (`rows` rows of one length, row-major) and returns each row's next token.
pub fn batch_loop(
    prompts: &[Vec<u32>],
    new_tokens: usize,
    stop: Option<u32>,
    step: &mut dyn FnMut(&[u32], usize) -> Vec<u32>,
) -> Result<Vec<Vec<u32>>, crate::ModelError> {
    let Some(first) = prompts.first() else {
        return Ok(Vec::new());
    };
    if let Some(i) = prompts.iter().position(|p| p.len() != first.len()) {
        return Err(crate::ModelError::Invalid(format!(
            "batched decoding needs prompts of one length: prompt {i} has {} tokens, prompt 0 has {}",
            prompts[i].len(),
            first.len()
        )));
    }
    if first.is_empty() {
        return Err(crate::ModelError::Invalid(
            "batched decoding needs at least one prompt token".into(),
        ));
    }
    let rows = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(new_tokens); rows];
    let mut done = vec![false; rows];
    let mut input: Vec<u32> = prompts.concat();
    for _ in 0..new_tokens {
        input = step(&input, rows);
        for (r, &t) in input.iter().enumerate() {
            if !done[r] {
                out[r].push(t);
                done[r] = Some(t) == stop;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(out)
}

/// Greedy decoding without a cache: appends the most likely next token `new_tokens` times
/// (stopping early at `stop`), recomputing the whole prefix each step. `forward` maps
/// `(input_ids, attention_mask)` `[1, seq]` to logits `[1, seq, vocab]`.
pub fn greedy_continue<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, Tensor<B, 2, Int>) -> Tensor<B, 3>,
    prompt: &[u32],
    new_tokens: usize,
    stop: Option<u32>,
    device: &B::Device,
) -> Vec<u32> {
    let mut ids: Vec<u32> = prompt.to_vec();
    for _ in 0..new_tokens {
        let mask = Tensor::<B, 2, Int>::ones([1, ids.len()], device);
        let next = argmax(last_position(forward(ids_row(&ids, device), mask)));
        ids.push(next);
        if Some(next) == stop {
            break;
        }
    }
    ids[prompt.len()..].to_vec()
}

/// One hypothesis of beam search: its new tokens and the sum of their log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Beam {
    /// The new tokens (the stop token, if it ended the hypothesis, not included).
    pub tokens: Vec<u32>,
    /// The sum of the tokens' log-probabilities (the stop token's included).
    pub score: f64,
}

/// Log-softmax of one row of logits, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let top = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - top).exp()).sum();
    let log_z = top + sum.ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

/// Beam search with `width` beams over the [`KvCache`] (one batch row per beam): at each step
/// every beam's continuations are scored by their summed log-probability and the best `width`
/// kept; a beam that emits `stop` is finished. Returns the best hypothesis, ranked, as HF's
/// default, by its log-probability divided by its length. `width = 1` is greedy decoding.
pub fn beam_search<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
    prompt: &[u32],
    width: usize,
    new_tokens: usize,
    stop: Option<u32>,
    device: &B::Device,
) -> Beam {
    let width = width.max(1);
    let mut cache = KvCache::new();
    let mut beams = vec![Beam {
        tokens: Vec::new(),
        score: 0.0,
    }];
    let mut finished: Vec<Beam> = Vec::new();
    let mut input: Vec<Vec<u32>> = vec![prompt.to_vec()];
    for _ in 0..new_tokens {
        let (rows, s) = (input.len(), input[0].len());
        let data: Vec<i64> = input.iter().flatten().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(data, [rows, s]), device);
        let logits = forward(ids, &mut cache);
        let v = logits.dims()[2];
        let last: Vec<f32> = logits
            .slice([0..rows, s - 1..s, 0..v])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        // Every continuation of every beam, best first.
        let mut candidates: Vec<(f64, usize, u32)> = Vec::with_capacity(rows * v);
        for (b, beam) in beams.iter().enumerate() {
            for (t, lp) in log_softmax(&last[b * v..(b + 1) * v])
                .into_iter()
                .enumerate()
            {
                candidates.push((beam.score + lp, b, t as u32));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut next, mut parents) = (Vec::new(), Vec::new());
        for (score, parent, token) in candidates {
            if next.len() == width {
                break;
            }
            let mut tokens = beams[parent].tokens.clone();
            if Some(token) == stop {
                finished.push(Beam { tokens, score });
                continue;
            }
            tokens.push(token);
            next.push(Beam { tokens, score });
            parents.push(parent);
        }
        if next.is_empty() {
            beams.clear();
            break;
        }
        cache = cache.select(&parents, device);
        input = next
            .iter()
            .map(|b| vec![b.tokens[b.tokens.len() - 1]])
            .collect();
        beams = next;
    }
    let normalised = |b: &Beam| b.score / (b.tokens.len().max(1) as f64);
    finished
        .into_iter()
        .chain(beams)
        .max_by(|a, b| normalised(a).total_cmp(&normalised(b)))
        .unwrap_or(Beam {
            tokens: Vec::new(),
            score: 0.0,
        })
}
