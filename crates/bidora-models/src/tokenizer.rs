//! Tokenisers loaded offline from a model folder: `tokenizer.json` (any HF fast tokeniser), or
//! a BERT `vocab.txt` (WordPiece with BERT's normaliser, pre-tokeniser and `[CLS] … [SEP]`
//! template, lower-casing as `tokenizer_config.json` says).

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, InputSequence, TruncationParams, TruncationStrategy};

use crate::ModelError;

/// One encoded input.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
    /// The word each token comes from (`None` for special tokens).
    pub word_ids: Vec<Option<usize>>,
}

/// A tokeniser with its padding id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

fn err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid(format!(
        "cannot load the tokenizer `{}`: {e}",
        path.display()
    ))
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, or else builds a BERT WordPiece tokeniser from
    /// `dir/vocab.txt`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| err(&json, e))?
        } else {
            let vocab = dir.join("vocab.txt");
            if !vocab.is_file() {
                return Err(ModelError::Io {
                    path: json,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no tokenizer.json or vocab.txt in the model folder",
                    ),
                });
            }
            let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["do_lower_case"].as_bool())
                .unwrap_or(true);
            let model = WordPiece::from_file(&vocab.to_string_lossy())
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| err(&vocab, e))?;
            let mut t = tokenizers::Tokenizer::new(model);
            t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
            t.with_pre_tokenizer(Some(BertPreTokenizer));
            let id = |tok: &str| {
                t.token_to_id(tok)
                    .ok_or_else(|| err(&vocab, format!("no `{tok}` token")))
            };
            let (sep, cls) = (id("[SEP]")?, id("[CLS]")?);
            t.with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
            t
        };
        inner.with_padding(None);
        let pad_id = ["[PAD]", "<pad>", "<|endoftext|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        Ok(Tokenizer { inner, pad_id })
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    fn run(&self, input: EncodeInput<'_>, max_len: usize) -> Result<Encoded, ModelError> {
        let mut t = self.inner.clone();
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .map_err(|e| ModelError::Invalid(format!("truncation to {max_len}: {e}")))?;
        let enc = t
            .encode(input, true)
            .map_err(|e| ModelError::Invalid(format!("tokenisation failed: {e}")))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            word_ids: enc
                .get_word_ids()
                .iter()
                .map(|w| w.map(|w| w as usize))
                .collect(),
        })
    }

    /// Encodes a text or a pair with special tokens, truncated (longest first) to `max_len`.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        max_len: usize,
    ) -> Result<Encoded, ModelError> {
        let input = match pair {
            Some(p) => EncodeInput::Dual(text.into(), p.into()),
            None => EncodeInput::Single(text.into()),
        };
        self.run(input, max_len)
    }

    /// Encodes pre-split words, keeping which word each token comes from.
    pub fn encode_words(&self, words: &[String], max_len: usize) -> Result<Encoded, ModelError> {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        self.run(EncodeInput::Single(InputSequence::from(words)), max_len)
    }
}
