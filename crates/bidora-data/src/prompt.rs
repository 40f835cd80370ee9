//! How a generation example becomes a causal-LM row: the prompt is `before + source + after`
//! (the task's [`PromptFormat`]), the completion is one reference, and the model learns to
//! write the completion and stop.
//!
//! A long source loses its *end* ([`Truncation::SourceEnd`]: an article keeps its lead and the
//! cue that asks for the headline) or, for prompts taken verbatim, the prompt loses its *start*
//! ([`Truncation::PromptStart`], as [`crate::batch::collate_causal`] does). The completion is
//! never cut.

use crate::batch::Tokenizer;

/// Which end of a too-long prompt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Cut the source's end; `before` and `after` stay whole.
    SourceEnd,
    /// Cut the prompt's start (prompts used verbatim).
    PromptStart,
}

/// A generation task's prompt layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptFormat {
    /// Text before the source.
    pub before: &'static str,
    /// The cue after the source (`"\nHeadline:"`).
    pub after: &'static str,
    /// Text before each completion (`" "` after a cue ending in `:`).
    pub completion_prefix: &'static str,
    /// Where decoding stops besides the end-of-sequence token (`"\n"` for one-line outputs).
    pub stop: Option<&'static str>,
    /// Which end of a long prompt goes.
    pub truncation: Truncation,
    /// Whether the tokeniser's own leading special tokens (a BOS) start the prompt; not for
    /// chat prompts, whose template writes its special tokens as text (HF's
    /// `apply_chat_template` tokenises them the same way).
    pub special_tokens: bool,
}

impl PromptFormat {
    /// Prompts and completions taken as they are.
    pub const VERBATIM: PromptFormat = PromptFormat {
        before: "",
        after: "",
        completion_prefix: "",
        stop: None,
        truncation: Truncation::PromptStart,
        special_tokens: true,
    };

    /// Chat prompts rendered by the model's template ([`crate::chat`]): taken as they are,
    /// without the tokeniser's leading special tokens.
    pub const CHAT: PromptFormat = PromptFormat {
        special_tokens: false,
        ..PromptFormat::VERBATIM
    };

    /// The prompt's token ids for `source`, at most `budget` of them (at least one): the
    /// tokeniser's leading special tokens, `before + source` and `after`. With
    /// [`Truncation::SourceEnd`] the source's end is cut to fit; with
    /// [`Truncation::PromptStart`] the start of the whole prompt is.
    pub fn prompt_ids(&self, tok: &dyn Tokenizer, source: &str, budget: usize) -> Vec<u32> {
        let budget = budget.max(1);
        let text = format!("{}{source}", self.before);
        let head = if self.special_tokens {
            tok.encode(&text, None, usize::MAX).ids
        } else {
            tok.encode_plain(&text)
        };
        let tail = if self.after.is_empty() {
            Vec::new()
        } else {
            tok.encode_plain(self.after)
        };
        let mut ids = match self.truncation {
            Truncation::SourceEnd if head.len() + tail.len() > budget => {
                let keep = budget.saturating_sub(tail.len()).max(1);
                head[..keep.min(head.len())].to_vec()
            }
            _ => head,
        };
        ids.extend(tail);
        if ids.len() > budget {
            ids.drain(..ids.len() - budget);
        }
        ids
    }

    /// The completion's token ids (no special tokens; the end-of-sequence token is added by
    /// [`crate::batch::collate_causal`]).
    pub fn completion_ids(&self, tok: &dyn Tokenizer, completion: &str) -> Vec<u32> {
        if completion.is_empty() {
            return Vec::new();
        }
        tok.encode_plain(&format!("{}{completion}", self.completion_prefix))
    }

    /// A generated continuation as the metrics see it: cut at the stop string, trimmed.
    pub fn finish(&self, generated: &str) -> String {
        let cut = self
            .stop
            .and_then(|s| generated.find(s))
            .unwrap_or(generated.len());
        generated[..cut].trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Encoding;

    /// Bytes as tokens, with a leading special token 1 on `encode`.
    struct Bytes;
    impl Tokenizer for Bytes {
        fn encode(&self, text: &str, _pair: Option<&str>, max_len: usize) -> Encoding {
            let mut ids = vec![1];
            ids.extend(text.bytes().map(u32::from));
            ids.truncate(max_len);
            Encoding {
                ids,
                ..Encoding::default()
            }
        }
        fn encode_words(&self, _words: &[String], _max_len: usize) -> Encoding {
            Encoding::default()
        }
        fn encode_plain(&self, text: &str) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
        fn pad_id(&self) -> u32 {
            0
        }
    }

    fn text(ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| if i == 1 { '^' } else { i as u8 as char })
            .collect()
    }

    const CUED: PromptFormat = PromptFormat {
        before: "A: ",
        after: "\nH:",
        completion_prefix: " ",
        stop: Some("\n"),
        truncation: Truncation::SourceEnd,
        special_tokens: true,
    };

    #[test]
    fn chat_prompts_have_no_leading_special_token() {
        assert_eq!(
            text(&PromptFormat::CHAT.prompt_ids(&Bytes, "<s>q", 100)),
            "<s>q"
        );
        assert_eq!(
            text(&PromptFormat::VERBATIM.prompt_ids(&Bytes, "q", 100)),
            "^q"
        );
    }

    #[test]
    fn a_cued_prompt_loses_the_end_of_its_source_and_keeps_its_cue() {
        let p = |budget| text(&CUED.prompt_ids(&Bytes, "one two", budget));
        assert_eq!(p(100), "^A: one two\nH:");
        // 14 tokens whole; at 10 the source keeps "one" and the cue stays.
        assert_eq!(p(14), "^A: one two\nH:");
        assert_eq!(p(10), "^A: one\nH:");
        // Too small for the cue and a source token: the cue's end survives.
        assert_eq!(p(3), "\nH:");
        assert_eq!(p(0), ":");
        assert_eq!(text(&CUED.completion_ids(&Bytes, "Title")), " Title");
        assert!(CUED.completion_ids(&Bytes, "").is_empty());
        assert_eq!(CUED.finish(" Title here\nA: more"), "Title here");
    }

    #[test]
    fn a_verbatim_prompt_loses_its_start() {
        let v = PromptFormat::VERBATIM;
        assert_eq!(text(&v.prompt_ids(&Bytes, "abcdef", 100)), "^abcdef");
        assert_eq!(text(&v.prompt_ids(&Bytes, "abcdef", 4)), "cdef");
        assert_eq!(text(&v.completion_ids(&Bytes, "xy")), "xy");
        assert_eq!(v.finish(" a\nb "), "a\nb");
    }
}
