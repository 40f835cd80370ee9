//! Decoding for the causal LMs ([`crate::gpt2`], [`crate::llama`]): the [`KvCache`] that makes
//! each new token cost one position, and greedy decoding with and without it.

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

/// Greedy decoding with a [`KvCache`]: the prompt in one pass, then one position per new
/// token. Returns the new tokens (stopping after `stop`) and, for each, the logits `[vocab]`
/// it was chosen from.
pub fn greedy_cached<B: Backend>(
    forward: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
    prompt: &[u32],
    new_tokens: usize,
    stop: Option<u32>,
    device: &B::Device,
) -> (Vec<u32>, Vec<Tensor<B, 1>>) {
    let mut cache = KvCache::new();
    let (mut out, mut logits) = (Vec::new(), Vec::new());
    let mut input: Vec<u32> = prompt.to_vec();
    for _ in 0..new_tokens {
        let s = input.len();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(input.iter().map(|t| *t as i64).collect::<Vec<_>>(), [1, s]),
            device,
        );
        let all = forward(ids, &mut cache);
        let v = all.dims()[2];
        let last = all.slice([0..1, s - 1..s, 0..v]).reshape([v]);
        let next: i64 = last.clone().argmax(0).into_scalar().elem();
        let next = u32::try_from(next).unwrap_or(0);
        out.push(next);
        logits.push(last);
        if Some(next) == stop {
            break;
        }
        input = vec![next];
    }
    (out, logits)
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
        let s = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|t| *t as i64).collect::<Vec<_>>(), [1, s]),
            device,
        );
        let mask = Tensor::<B, 2, Int>::ones([1, s], device);
        let logits = forward(input, mask);
        let v = logits.dims()[2];
        let last = logits.slice([0..1, s - 1..s, 0..v]).reshape([v]);
        let next: i64 = last.argmax(0).into_scalar().elem();
        let next = u32::try_from(next).unwrap_or(0);
        ids.push(next);
        if Some(next) == stop {
            break;
        }
    }
    ids[prompt.len()..].to_vec()
}
