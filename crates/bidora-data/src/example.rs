//! Examples and labels, independent of any tokeniser or tensor library.

use serde::{Deserialize, Serialize};

/// The gold answer of an example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    /// A class index into the task's label names.
    Class(usize),
    /// A real-valued score (regression).
    Score(f32),
    /// One tag index per word (token classification).
    Tags(Vec<usize>),
    /// One or more reference texts (generation).
    References(Vec<String>),
}

/// One example: a text (or pair, or word sequence) and its label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The first text (for token classification: the words joined by spaces).
    pub text_a: String,
    /// The second text of a pair task.
    pub text_b: Option<String>,
    /// The words, for token classification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<String>>,
    /// The gold label (`None` for unlabelled data).
    pub label: Option<Label>,
    /// A chat row's conversation, until [`crate::chat::apply`] renders it into `text_a` with
    /// the model's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::chat::Message>>,
    /// The 1-based line of the source file the example starts on.
    pub line: usize,
}

impl Example {
    /// A single-text example.
    pub fn single(text: impl Into<String>, label: Option<Label>, line: usize) -> Self {
        Example {
            text_a: text.into(),
            text_b: None,
            words: None,
            label,
            messages: None,
            line,
        }
    }

    /// A pair example.
    pub fn pair(
        a: impl Into<String>,
        b: impl Into<String>,
        label: Option<Label>,
        line: usize,
    ) -> Self {
        Example {
            text_a: a.into(),
            text_b: Some(b.into()),
            words: None,
            label,
            messages: None,
            line,
        }
    }

    /// The class index, if the label is a class.
    pub fn class(&self) -> Option<usize> {
        match self.label {
            Some(Label::Class(c)) => Some(c),
            _ => None,
        }
    }
}
