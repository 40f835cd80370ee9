//! Tokenisers loaded offline: from a model folder's `tokenizer.json` (any HF fast tokeniser),
//! GPT-2 BPE files (`vocab.json` or `encoder.json`, with `merges.txt` or `vocab.bpe`), or a BERT
//! `vocab.txt` (WordPiece with BERT's normaliser, pre-tokeniser and `[CLS] … [SEP]` template,
//! lower-casing as `tokenizer_config.json` says); or from the vocabulary inside a GGUF file.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::AddedToken;

use crate::gguf::{Gguf, Value};
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

/// The chat template a tokeniser ships (Jinja source, as HF's `apply_chat_template` runs
/// it) with the texts of its BOS and EOS tokens, which templates use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplateText {
    /// The template.
    pub source: String,
    /// `bos_token` (empty when the tokeniser has none).
    pub bos: String,
    /// `eos_token` (empty when the tokeniser has none).
    pub eos: String,
}

/// A tokeniser with its padding id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    chat: Option<ChatTemplateText>,
    /// A copy configured to truncate at a length, kept for the next call with that length.
    truncating: std::sync::Mutex<Option<(usize, tokenizers::Tokenizer)>>,
}

/// The chat template of an HF folder: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates: the `default` one), with that
/// file's `bos_token` and `eos_token` (strings or `{"content": …}` objects).
fn folder_chat_template(dir: &Path) -> Result<Option<ChatTemplateText>, ModelError> {
    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| err(&config_path, e))?,
        Err(_) => serde_json::Value::Null,
    };
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| err(&jinja, e))?)
    } else {
        match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| named.first())
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    let token = |key: &str| match &config[key] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().unwrap_or_default().to_string(),
    };
    Ok(source.map(|source| ChatTemplateText {
        source,
        bos: token("bos_token"),
        eos: token("eos_token"),
    }))
}

fn err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid(format!(
        "cannot load the tokenizer `{}`: {e}",
        path.display()
    ))
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`; else GPT-2 BPE files (`vocab.json`/`encoder.json` +
    /// `merges.txt`/`vocab.bpe`); else a BERT WordPiece tokeniser from `dir/vocab.txt`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let json = dir.join("tokenizer.json");
        let bpe_vocab = ["vocab.json", "encoder.json"]
            .map(|f| dir.join(f))
            .into_iter()
            .find(|p| p.is_file());
        let bpe_merges = ["merges.txt", "vocab.bpe"]
            .map(|f| dir.join(f))
            .into_iter()
            .find(|p| p.is_file());
        let inner = if json.is_file() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| err(&json, e))?
        } else if let (Some(vocab), Some(merges)) = (bpe_vocab, bpe_merges) {
            Self::gpt2_files(&vocab, &merges)?
        } else {
            Self::wordpiece(dir)?
        };
        let mut tok = Self::finish(inner);
        tok.chat = folder_chat_template(dir)?;
        Ok(tok)
    }

    /// GPT-2's byte-level BPE from its vocabulary and merges files.
    fn gpt2_files(vocab: &Path, merges: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
        let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| err(vocab, e))?;
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(t)
    }

    /// The byte-level BPE vocabulary of a GGUF file (`tokenizer.ggml.model = "gpt2"`), with
    /// its control tokens (`<|im_start|>`, …) as special tokens. SmolLM's pre-tokeniser
    /// (`tokenizer.ggml.pre = "smollm"`) also splits digits one by one.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let bad = |what: String| err(&g.path, what);
        let model = g.require("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model `{model}` is not supported (gpt2 byte-level BPE is)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, ModelError> {
            g.require(key)?
                .as_array()
                .ok_or_else(|| bad(format!("`{key}` is not an array")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut t = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        if g.get("tokenizer.ggml.pre").and_then(Value::as_str) == Some("smollm") {
            t.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            t.with_pre_tokenizer(Some(byte_level));
        }
        t.with_decoder(Some(ByteLevelDecoder::default()));
        // Token type 3 is a control token.
        if let Some(types) = g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| ty.as_u64() == Some(3))
                .map(|(_, tok)| AddedToken::from(tok.clone(), true))
                .collect();
            t.add_special_tokens(&special);
        }
        let mut tok = Self::finish(t);
        let special = |key: &str| {
            g.get(key)
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(usize::try_from(i).ok()?))
                .cloned()
                .unwrap_or_default()
        };
        tok.chat = g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(|source| ChatTemplateText {
                source: source.to_string(),
                bos: special("tokenizer.ggml.bos_token_id"),
                eos: special("tokenizer.ggml.eos_token_id"),
            });
        if let Some(pad) = g
            .get("tokenizer.ggml.padding_token_id")
            .and_then(Value::as_u64)
        {
            tok.pad_id = pad as u32;
        }
        Ok(tok)
    }

    fn wordpiece(dir: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        if !vocab.is_file() {
            return Err(ModelError::Io {
                path: json,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tokenizer.json, GPT-2 vocab.json + merges.txt, or vocab.txt in the model folder",
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
        Ok(t)
    }

    fn finish(mut inner: tokenizers::Tokenizer) -> Self {
        inner.with_padding(None);
        let pad_id = ["[PAD]", "<pad>", "<|endoftext|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        Tokenizer {
            inner,
            pad_id,
            chat: None,
            truncating: std::sync::Mutex::new(None),
        }
    }

    /// The chat template the tokeniser ships, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplateText> {
        self.chat.as_ref()
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Invalid(format!("cannot decode {ids:?}: {e}")))
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    fn run(&self, input: EncodeInput<'_>, max_len: usize) -> Result<Encoded, ModelError> {
        let mut cache = self
            .truncating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.as_ref().map(|(n, _)| *n) != Some(max_len) {
            let mut t = self.inner.clone();
            t.with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Invalid(format!("truncation to {max_len}: {e}")))?;
            *cache = Some((max_len, t));
        }
        let Some((_, t)) = cache.as_ref() else {
            return Err(ModelError::Invalid("tokenizer cache is empty".into()));
        };
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

    /// Token ids of `text` without special tokens or truncation: a continuation that follows
    /// other text (a prompt's cue, a completion).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(EncodeInput::Single(text.into()), false)
            .map_err(|e| ModelError::Invalid(format!("tokenisation failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes pre-split words, keeping which word each token comes from.
    pub fn encode_words(&self, words: &[String], max_len: usize) -> Result<Encoded, ModelError> {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        self.run(EncodeInput::Single(InputSequence::from(words)), max_len)
    }
}
