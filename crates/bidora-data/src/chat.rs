//! Chat conversations (`{"messages": [{"role", "content"}, …]}` rows) and the model's chat
//! template, the Jinja program that HF tokenisers ship (`tokenizer_config.json`'s
//! `chat_template`, GGUF's `tokenizer.chat_template`) and that `apply_chat_template` runs.
//!
//! A conversation becomes a prompt and a completion as TRL's completion-only training has it:
//! the prompt is every message before the last (an assistant's) rendered with the generation
//! prompt; the completion is what rendering the whole conversation adds after that prompt,
//! cut before the end-of-sequence token's text (the batcher appends that token), so the model
//! learns the template's own end of turn. The reference a generated answer is scored against
//! is the last message's content.

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::example::{Example, Label};
use crate::tasks::TaskData;
use crate::DataError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (the template decides what it accepts).
    pub role: String,
    /// The text.
    pub content: String,
}

/// A compiled chat template with the special tokens' texts it may use.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// The template's name in its environment.
const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source` (Jinja, as HF tokenisers ship it); `bos` and `eos` are the texts of
    /// the tokeniser's special tokens (`bos_token`, `eos_token` in the template).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, DataError> {
        let mut env = Environment::new();
        // Python string methods (`.strip()`, `.startswith()`, …) that HF templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| DataError::Invalid(format!("the chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The text of `messages`, ending with the assistant's cue when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| DataError::Invalid(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| DataError::Invalid(format!("the chat template failed: {e}")))
    }

    /// The prompt and completion of a conversation whose last message is the assistant's (see
    /// the module's documentation).
    pub fn split(&self, conversation: &[Message]) -> Result<(String, String), DataError> {
        let Some((last, before)) = conversation.split_last() else {
            return Err(DataError::Invalid("an empty conversation".into()));
        };
        if last.role != "assistant" {
            return Err(DataError::Invalid(format!(
                "the last message is the {}'s; training and evaluation need an assistant's answer last",
                last.role
            )));
        }
        let prompt = self.render(before, true)?;
        let whole = self.render(conversation, false)?;
        let Some(rest) = whole.strip_prefix(&prompt) else {
            return Err(DataError::Invalid(
                "the chat template does not render the conversation as its prompt followed by the answer"
                    .into(),
            ));
        };
        let completion = match rest.find(&self.eos) {
            Some(i) if !self.eos.is_empty() => &rest[..i],
            _ => rest,
        };
        Ok((prompt, completion.to_string()))
    }
}

/// Turns every conversation of `data` into a prompt (`text_a`, the template's text) and its
/// answer: training examples learn the rendered completion, evaluation examples are scored
/// against the last message's content. Errors name the example's line; conversations without
/// a `template` are an error that says so. Returns whether there were any (their prompts then
/// take [`crate::prompt::PromptFormat::CHAT`]).
pub fn apply(data: &mut TaskData, template: Option<&ChatTemplate>) -> Result<bool, DataError> {
    let mut any = false;
    let train = data.train.iter_mut().map(|e| (e, true));
    let eval = data
        .eval
        .iter_mut()
        .flat_map(|(_, set)| set.iter_mut())
        .map(|e| (e, false));
    for (example, training) in train.chain(eval) {
        let Some(messages) = example.messages.take() else {
            continue;
        };
        any = true;
        let Some(template) = template else {
            return Err(DataError::Invalid(format!(
                "line {}: a chat row (`messages`) needs the model's chat template, and this model's tokeniser has none; give `prompt`/`completion` rows instead",
                example.line
            )));
        };
        let (prompt, completion) = template
            .split(&messages)
            .map_err(|e| DataError::Invalid(format!("line {}: {e}", example.line)))?;
        let reference = if training {
            completion
        } else {
            messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default()
        };
        *example = Example {
            label: Some(Label::References(vec![reference])),
            ..Example::single(prompt, None, example.line)
        };
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (ChatML with a default system message).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_splits_into_the_prompt_with_its_cue_and_the_answer() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let (prompt, completion) = t
            .split(&[msg("user", "Hi?"), msg("assistant", "Hello.")])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(completion, "Hello.");
    }

    #[test]
    fn an_end_of_turn_that_is_not_eos_stays_in_the_completion() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}<eot>{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}{{ '' if add_generation_prompt else eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let (prompt, completion) = t
            .split(&[msg("user", " 2+2? "), msg("assistant", "4")])
            .unwrap();
        assert_eq!(prompt, "<s>[user] 2+2?<eot>[assistant] ");
        assert_eq!(completion, "4<eot>");
    }

    #[test]
    fn apply_renders_training_completions_and_scores_against_the_content() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let chat = |line| Example {
            messages: Some(vec![msg("user", "Hi?"), msg("assistant", "Hello.")]),
            ..Example::single("", None, line)
        };
        let mut data = TaskData {
            train: vec![chat(1), Example::single("plain", None, 2)],
            eval: vec![("dev".into(), vec![chat(3)])],
            labels: Vec::new(),
        };
        let mut bare = data.clone();
        assert!(apply(&mut data, Some(&t)).unwrap());
        let prompt = t.render(&[msg("user", "Hi?")], true).unwrap();
        assert_eq!(data.train[0].text_a, prompt);
        assert_eq!(data.train[0].messages, None);
        assert_eq!(data.train[1].text_a, "plain");
        assert_eq!(data.eval[0].1[0].text_a, prompt);
        assert_eq!(
            data.eval[0].1[0].label,
            Some(Label::References(vec!["Hello.".into()]))
        );
        let e = apply(&mut bare, None).unwrap_err().to_string();
        assert!(e.starts_with("invalid argument: line 1: a chat row"), "{e}");
    }

    #[test]
    fn bad_conversations_and_templates_are_errors() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let e = t.split(&[msg("user", "Hi?")]).unwrap_err().to_string();
        assert!(e.contains("the last message is the user's"), "{e}");
        assert!(t.split(&[]).unwrap_err().to_string().contains("empty"));
        let e = ChatTemplate::new("{% for %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not compile"), "{e}");
        let raising = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('users first') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let e = raising
            .split(&[msg("system", "s"), msg("assistant", "a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("users first"), "{e}");
        // A template that puts the cue somewhere the full rendering does not have it.
        let odd = ChatTemplate::new(
            "{% if add_generation_prompt %}CUE{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = odd
            .split(&[msg("user", "q"), msg("assistant", "a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompt followed by the answer"), "{e}");
    }
}
