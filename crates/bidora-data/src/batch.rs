//! Turning examples into padded host batches. Tokenisers live with the models (they know their
//! special tokens); this module only needs the [`Tokenizer`] trait.

use crate::example::{Example, Label};

/// The label id that losses ignore (sub-word continuations, padding), as in PyTorch.
pub const IGNORE_INDEX: i64 = -100;

/// One encoded input: token ids with the model's special tokens, already truncated.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids (0 for the first text, 1 for the second), when the model uses them.
    pub type_ids: Vec<u32>,
    /// For each token, the index of the word it comes from (`None` for special tokens).
    pub word_ids: Vec<Option<usize>>,
}

/// What batching needs from a tokeniser.
pub trait Tokenizer {
    /// Encodes a text or a pair, with special tokens, truncated to `max_len` tokens (pairs:
    /// longest-first).
    fn encode(&self, text: &str, pair: Option<&str>, max_len: usize) -> Encoding;
    /// Encodes pre-split words (token classification), filling `word_ids`.
    fn encode_words(&self, words: &[String], max_len: usize) -> Encoding;
    /// Token ids of a text that continues other text: no special tokens, no truncation (a
    /// prompt's cue, a completion).
    fn encode_plain(&self, text: &str) -> Vec<u32>;
    /// The padding token id.
    fn pad_id(&self) -> u32;
}

/// Labels of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchLabels {
    /// No labels.
    None,
    /// One class per example.
    Classes(Vec<i64>),
    /// One score per example.
    Scores(Vec<f32>),
    /// One tag per token, `[batch × seq_len]`, [`IGNORE_INDEX`] where no word starts.
    Tags(Vec<i64>),
    /// Causal LM: the token ids where the loss is taken (the completion and its
    /// end-of-sequence token), [`IGNORE_INDEX`] on the prompt and the padding, `[batch ×
    /// seq_len]`; the model shifts them.
    Completion(Vec<i64>),
}

/// A padded batch in host memory, row-major `[batch, seq_len]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// Examples in the batch.
    pub batch: usize,
    /// Padded length (the longest encoding in the batch).
    pub seq_len: usize,
    /// Token ids, padded with the tokeniser's pad id.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Segment ids, 0 on padding.
    pub token_type_ids: Vec<i64>,
    /// Labels.
    pub labels: BatchLabels,
}

/// One example's encoding: its words (tagging) or its text and optional pair.
pub fn encode(example: &Example, tokenizer: &dyn Tokenizer, max_len: usize) -> Encoding {
    match &example.words {
        Some(words) => tokenizer.encode_words(words, max_len),
        None => tokenizer.encode(&example.text_a, example.text_b.as_deref(), max_len),
    }
}

/// Encodes and pads `examples` to their longest member (dynamic padding). Token-classification
/// tags go to the first sub-token of each word; other sub-tokens, special tokens and padding
/// get [`IGNORE_INDEX`].
pub fn collate(examples: &[&Example], tokenizer: &dyn Tokenizer, max_len: usize) -> HostBatch {
    let encodings: Vec<Encoding> = examples
        .iter()
        .map(|e| encode(e, tokenizer, max_len))
        .collect();
    let seq_len = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let n = examples.len();
    let mut input_ids = vec![tokenizer.pad_id() as i64; n * seq_len];
    let mut attention_mask = vec![0i64; n * seq_len];
    let mut token_type_ids = vec![0i64; n * seq_len];
    for (i, enc) in encodings.iter().enumerate() {
        for (j, id) in enc.ids.iter().enumerate() {
            input_ids[i * seq_len + j] = *id as i64;
            attention_mask[i * seq_len + j] = 1;
            token_type_ids[i * seq_len + j] = enc.type_ids.get(j).copied().unwrap_or(0) as i64;
        }
    }
    let labels = match examples.first().and_then(|e| e.label.as_ref()) {
        None => BatchLabels::None,
        Some(Label::Class(_)) => BatchLabels::Classes(
            examples
                .iter()
                .map(|e| e.class().map(|c| c as i64).unwrap_or(IGNORE_INDEX))
                .collect(),
        ),
        Some(Label::Score(_)) => BatchLabels::Scores(
            examples
                .iter()
                .map(|e| match e.label {
                    Some(Label::Score(s)) => s,
                    _ => f32::NAN,
                })
                .collect(),
        ),
        Some(Label::Tags(_)) => {
            let mut tags = vec![IGNORE_INDEX; n * seq_len];
            for (i, (ex, enc)) in examples.iter().zip(&encodings).enumerate() {
                let Some(Label::Tags(word_tags)) = &ex.label else {
                    continue;
                };
                let mut prev = None;
                for (j, w) in enc.word_ids.iter().enumerate() {
                    if let Some(w) = w {
                        if prev != Some(*w) {
                            if let Some(t) = word_tags.get(*w) {
                                tags[i * seq_len + j] = *t as i64;
                            }
                        }
                    }
                    prev = *w;
                }
            }
            BatchLabels::Tags(tags)
        }
        Some(Label::References(_)) => BatchLabels::None,
    };
    HostBatch {
        batch: n,
        seq_len,
        input_ids,
        attention_mask,
        token_type_ids,
        labels,
    }
}

/// One training row of a causal LM: token ids of the prompt (with the model's leading special
/// tokens) and of the completion (without), and the source line, for errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalRow<'a> {
    /// The prompt's ids.
    pub prompt: &'a [u32],
    /// The completion's ids.
    pub completion: &'a [u32],
    /// The 1-based line of the example in its file.
    pub line: usize,
}

/// Packs `rows` for causal-LM training with dynamic padding: each row is `prompt ++
/// completion ++ [eos]`, right-padded, labelled with [`BatchLabels::Completion`]. A row longer than `max_len` loses
/// the start of its prompt, never its completion; an empty completion, or one that does not fit
/// `max_len` with the end-of-sequence token and one prompt token, is an error naming its line.
pub fn collate_causal(
    rows: &[CausalRow<'_>],
    eos: u32,
    pad: u32,
    max_len: usize,
) -> Result<HostBatch, crate::DataError> {
    let mut packed: Vec<(Vec<u32>, usize)> = Vec::with_capacity(rows.len());
    for r in rows {
        let tail = r.completion.len() + 1;
        if r.completion.is_empty() {
            return Err(crate::DataError::Invalid(format!(
                "line {}: empty completion",
                r.line
            )));
        }
        if tail + 1 > max_len {
            return Err(crate::DataError::Invalid(format!(
                "line {}: the completion has {} tokens; with the end-of-sequence token and one \
                 prompt token it does not fit the max length {max_len}",
                r.line,
                r.completion.len()
            )));
        }
        let keep = r.prompt.len().min(max_len - tail);
        let mut ids = r.prompt[r.prompt.len() - keep..].to_vec();
        ids.extend_from_slice(r.completion);
        ids.push(eos);
        packed.push((ids, keep));
    }
    let seq_len = packed.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let n = packed.len();
    let mut input_ids = vec![i64::from(pad); n * seq_len];
    let mut attention_mask = vec![0i64; n * seq_len];
    let mut labels = vec![IGNORE_INDEX; n * seq_len];
    for (i, (ids, prompt_len)) in packed.iter().enumerate() {
        for (j, &id) in ids.iter().enumerate() {
            input_ids[i * seq_len + j] = i64::from(id);
            attention_mask[i * seq_len + j] = 1;
            if j >= *prompt_len {
                labels[i * seq_len + j] = i64::from(id);
            }
        }
    }
    Ok(HostBatch {
        batch: n,
        seq_len,
        input_ids,
        attention_mask,
        token_type_ids: vec![0; n * seq_len],
        labels: BatchLabels::Completion(labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_rows_mask_the_prompt_pad_right_and_truncate_the_prompt_only() {
        let (eos, pad, x) = (9, 0, IGNORE_INDEX);
        let rows = [
            CausalRow {
                prompt: &[1, 2, 3],
                completion: &[4, 5],
                line: 1,
            },
            CausalRow {
                prompt: &[6],
                completion: &[7],
                line: 2,
            },
        ];
        let b = collate_causal(&rows, eos, pad, 16).unwrap();
        assert_eq!((b.batch, b.seq_len), (2, 6));
        assert_eq!(b.input_ids, vec![1, 2, 3, 4, 5, 9, 6, 7, 9, 0, 0, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(
            b.labels,
            BatchLabels::Completion(vec![x, x, x, 4, 5, 9, x, 7, 9, x, x, x])
        );
        assert_eq!(b.token_type_ids, vec![0; 12]);
        // Max length 4: the prompt keeps its last token, the completion and EOS stay whole.
        let b = collate_causal(&rows[..1], eos, pad, 4).unwrap();
        assert_eq!(b.input_ids, vec![3, 4, 5, 9]);
        assert_eq!(b.labels, BatchLabels::Completion(vec![x, 4, 5, 9]));
        // No room for one prompt token, or nothing to learn: errors naming the line.
        let err = collate_causal(&rows[..1], eos, pad, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("max length 3"),
            "{err}"
        );
        let empty = [CausalRow {
            prompt: &[1],
            completion: &[],
            line: 7,
        }];
        let err = collate_causal(&empty, eos, pad, 8).unwrap_err().to_string();
        assert!(
            err.contains("line 7") && err.contains("empty completion"),
            "{err}"
        );
    }

    /// Characters as tokens: `[1] a [2] b [2]`, words split into characters.
    struct Chars;
    impl Tokenizer for Chars {
        fn encode(&self, text: &str, pair: Option<&str>, max_len: usize) -> Encoding {
            let mut ids = vec![1];
            let mut type_ids = vec![0];
            ids.extend(text.bytes().map(u32::from));
            type_ids.resize(ids.len(), 0);
            ids.push(2);
            type_ids.push(0);
            if let Some(p) = pair {
                ids.extend(p.bytes().map(u32::from));
                ids.push(2);
                type_ids.resize(ids.len(), 1);
            }
            ids.truncate(max_len);
            type_ids.truncate(max_len);
            let word_ids = vec![None; ids.len()];
            Encoding {
                ids,
                type_ids,
                word_ids,
            }
        }
        fn encode_words(&self, words: &[String], _max_len: usize) -> Encoding {
            let mut e = Encoding {
                ids: vec![1],
                type_ids: vec![0],
                word_ids: vec![None],
            };
            for (w, word) in words.iter().enumerate() {
                for b in word.bytes() {
                    e.ids.push(u32::from(b));
                    e.type_ids.push(0);
                    e.word_ids.push(Some(w));
                }
            }
            e
        }
        fn encode_plain(&self, text: &str) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
        fn pad_id(&self) -> u32 {
            0
        }
    }

    #[test]
    fn pads_to_the_longest_and_aligns_tags_to_first_subtokens() {
        let a = Example::pair("ab", "c", Some(Label::Class(1)), 1);
        let b = Example::single("d", Some(Label::Class(0)), 2);
        let batch = collate(&[&a, &b], &Chars, 16);
        assert_eq!(batch.seq_len, 6);
        assert_eq!(
            batch.input_ids,
            vec![1, 97, 98, 2, 99, 2, 1, 100, 2, 0, 0, 0]
        );
        assert_eq!(
            batch.attention_mask,
            vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
        );
        assert_eq!(
            batch.token_type_ids,
            vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(batch.labels, BatchLabels::Classes(vec![1, 0]));

        let t = Example {
            text_a: "ab c".into(),
            text_b: None,
            words: Some(vec!["ab".into(), "c".into()]),
            label: Some(Label::Tags(vec![3, 4])),
            messages: None,
            line: 1,
        };
        let batch = collate(&[&t], &Chars, 16);
        assert_eq!(batch.labels, BatchLabels::Tags(vec![-100, 3, -100, 4]));
    }
}
