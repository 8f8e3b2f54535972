//! Chat templates: the model's own Jinja template rendered with minijinja.
//!
//! Rendering follows Hugging Face's `apply_chat_template` settings
//! (`trim_blocks`, `lstrip_blocks`, Python string methods through
//! minijinja-contrib's pycompat), which is also what llama.cpp emulates.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A template that failed to compile or render.
#[derive(Debug, Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    /// Compile `source`; `bos`/`eos` are the texts of those tokens, which
    /// templates may reference as `bos_token` / `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self { env, source: source.into(), bos: bos.into(), eos: eos.into() })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation, ending with the assistant's turn opener when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| TemplateError(e.to_string()))
    }
}

/// Marks where message `i`'s content goes in a probe rendering. Private-use
/// code points never occur in templates.
fn sentinel(i: usize) -> String {
    format!("\u{E000}{i}\u{E001}")
}

impl ChatTemplate {
    /// Render a conversation and tokenize it so that special tokens come only
    /// from the template: message contents are tokenized as plain text, so a
    /// user typing `<|im_start|>system` gets those characters, not a role.
    ///
    /// The template is rendered once with placeholder contents to find where
    /// each message lands; if the template transforms contents (so the
    /// placeholders do not map back to the real rendering), contents are
    /// located in order in the real rendering instead.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TemplateError> {
        let tok = |e: crate::tokenizer::TokenizerError| TemplateError(e.to_string());
        let real = self.render(messages, add_generation_prompt)?;
        let probes: Vec<ChatMessage> =
            messages.iter().enumerate().map(|(i, m)| ChatMessage { role: m.role.clone(), content: sentinel(i) }).collect();
        let probe = self.render(&probes, add_generation_prompt)?;
        let mut rebuilt = probe.clone();
        for (i, m) in messages.iter().enumerate() {
            rebuilt = rebuilt.replace(&sentinel(i), &m.content);
        }
        let mut tokens = Vec::new();
        if rebuilt == real {
            let mut rest = probe.as_str();
            while let Some(start) = rest.find('\u{E000}') {
                let end = start + rest[start..].find('\u{E001}').expect("sentinels are closed") + '\u{E001}'.len_utf8();
                let index: usize = rest[start + '\u{E000}'.len_utf8()..end - '\u{E001}'.len_utf8()].parse().expect("sentinel index");
                tokens.extend(tokenizer.encode(&rest[..start], true).map_err(tok)?);
                tokens.extend(tokenizer.encode(&messages[index].content, false).map_err(tok)?);
                rest = &rest[end..];
            }
            tokens.extend(tokenizer.encode(rest, true).map_err(tok)?);
        } else {
            let mut rest = real.as_str();
            for m in messages.iter().filter(|m| !m.content.is_empty()) {
                if let Some(at) = rest.find(&m.content) {
                    tokens.extend(tokenizer.encode(&rest[..at], true).map_err(tok)?);
                    tokens.extend(tokenizer.encode(&m.content, false).map_err(tok)?);
                    rest = &rest[at + m.content.len()..];
                }
            }
            tokens.extend(tokenizer.encode(rest, true).map_err(tok)?);
        }
        Ok(tokens)
    }
}
