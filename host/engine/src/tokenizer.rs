//! Text ⇄ token ids, through the `tokenizers` crate.
//!
//! A model directory's `tokenizer.json` is used as is. A GGUF file carries
//! its vocabulary in `tokenizer.ggml.*` metadata instead; we rebuild the same
//! byte-level BPE from it, with the pre-tokenizer that llama.cpp uses for the
//! file's `tokenizer.ggml.pre` so token ids agree with llama.cpp's.
//!
//! Two encoders are kept: one that recognises special tokens written in the
//! text (for templates the server renders itself) and one that treats them as
//! plain text (for anything a user wrote), so user content can never inject
//! a role marker.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::GgufFile;

/// What can go wrong building or using a tokenizer.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Library(String),
}

fn lib(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Library(e.to_string())
}

/// llama.cpp's pre-tokenizer regexes, by `tokenizer.ggml.pre` (the GPT-2
/// one is built into the byte-level pre-tokenizer).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's tokenizer plus the token ids that end a generation.
#[derive(Clone)]
pub struct Tokenizer {
    with_special: tokenizers::Tokenizer,
    plain: tokenizers::Tokenizer,
    /// Tokens that end generation (end of sequence / end of turn).
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size).field("eog", &self.eog).finish()
    }
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let meta = |e: crate::gguf::GgufError| TokenizerError::Metadata(e.to_string());
        let model = file.str("tokenizer.ggml.model").map_err(meta)?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model {model:?}: only byte-level BPE (\"gpt2\") is implemented so far"
            )));
        }
        let tokens: Vec<String> = file
            .array("tokenizer.ggml.tokens")
            .map_err(meta)?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| TokenizerError::Metadata("non-string token".into())))
            .collect::<Result<_, _>>()?;
        let types: Vec<u64> = match file.array("tokenizer.ggml.token_type") {
            Ok(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let merges: Vec<(String, String)> = file
            .array("tokenizer.ggml.merges")
            .map_err(meta)?
            .iter()
            .map(|v| {
                let s = v.as_str().ok_or_else(|| TokenizerError::Metadata("non-string merge".into()))?;
                let (a, b) =
                    s.split_once(' ').ok_or_else(|| TokenizerError::Metadata(format!("merge {s:?} has no space")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<_, TokenizerError>>()?;
        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let pre = file.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let pre_tokenizer = pre_tokenizer_for(pre)?;

        let build = |with_special: bool| -> Result<tokenizers::Tokenizer, TokenizerError> {
            let bpe = BPE::builder()
                .vocab_and_merges(
                    vocab.iter().map(|(k, v)| (k.clone(), *v)).collect::<tokenizers::models::bpe::Vocab>(),
                    merges.clone(),
                )
                .build()
                .map_err(lib)?;
            let mut tk = tokenizers::Tokenizer::new(bpe);
            tk.with_pre_tokenizer(Some(pre_tokenizer.clone()));
            tk.with_decoder(Some(ByteLevelDecoder::default()));
            if with_special {
                // Control (3) and user-defined (4) tokens are matched whole in text.
                let specials: Vec<AddedToken> = tokens
                    .iter()
                    .zip(&types)
                    .filter(|(_, ty)| matches!(ty, 3 | 4))
                    .map(|(t, _)| AddedToken::from(t.clone(), true))
                    .collect();
                tk.add_special_tokens(&specials);
            }
            Ok(tk)
        };
        let id = |key: &str| file.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut eog: Vec<u32> = eos.into_iter().chain(id("tokenizer.ggml.eot_token_id")).collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"] {
            if let Some(&i) = vocab.get(name) {
                if types.get(i as usize).is_some_and(|t| *t == 3) && !eog.contains(&i) {
                    eog.push(i);
                }
            }
        }
        // A fill-in-the-middle "repository" or "padding" token starts another
        // document: llama.cpp ends generations there too (for SmolLM2 that is
        // `<reponame>`), so `ignore_eos` bans the same set in both.
        for name in [
            "<|fim_pad|>",
            "<fim-pad>",
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
            "<|file_sep|>",
        ] {
            if let Some(&i) = vocab.get(name) {
                if !eog.contains(&i) {
                    eog.push(i);
                }
            }
        }
        let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Self { with_special: build(true)?, plain: build(false)?, eog, bos, eos, add_bos, vocab_size: tokens.len() })
    }

    /// Load a Hugging Face `tokenizer.json`. End-of-generation ids come from
    /// the model's config (`eos_token_id`, which may be a list).
    pub fn from_file(path: &Path, eos: &[u32], bos: Option<u32>) -> Result<Self, TokenizerError> {
        Self::from_hf(tokenizers::Tokenizer::from_file(path).map_err(lib)?, eos, bos)
    }

    /// A tokenizer of one word (`<unk>`, id 0) for models with random
    /// weights (`model::synthetic`): it encodes any text as `<unk>`s and
    /// decodes other ids as nothing. Benchmarks feed such models token ids.
    pub fn placeholder() -> Self {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
        let t: tokenizers::Tokenizer = json.parse().expect("the placeholder tokenizer's JSON is valid");
        Self::from_hf(t, &[], None).expect("the placeholder tokenizer builds")
    }

    fn from_hf(with_special: tokenizers::Tokenizer, eos: &[u32], bos: Option<u32>) -> Result<Self, TokenizerError> {
        let mut plain = with_special.clone();
        // Re-encoding through a tokenizer without added tokens treats the
        // special markers as text.
        let model = plain.get_model().clone();
        plain = {
            let mut t = tokenizers::Tokenizer::new(model);
            t.with_normalizer(plain.get_normalizer().cloned());
            t.with_pre_tokenizer(plain.get_pre_tokenizer().cloned());
            t.with_post_processor(plain.get_post_processor().cloned());
            t.with_decoder(plain.get_decoder().cloned());
            t
        };
        let vocab_size = with_special.get_vocab_size(true);
        Ok(Self { with_special, plain, eog: eos.to_vec(), bos, eos: eos.first().copied(), add_bos: false, vocab_size })
    }

    /// Write the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save_hf(&self, path: &Path) -> Result<(), TokenizerError> {
        self.with_special.save(path, false).map_err(lib)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Tokens that end a generation.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, token: u32) -> bool {
        self.eog.contains(&token)
    }

    pub fn bos_token(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_token(&self) -> Option<u32> {
        self.eos
    }

    /// Whether prompts should start with the BOS token (GGUF
    /// `tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The text of a single token id, as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.with_special.id_to_token(id)
    }

    /// The bytes a single token stands for: byte-level BPE pieces mapped back
    /// through GPT-2's byte alphabet, SentencePiece `<0xNN>` byte tokens and
    /// `▁` spaces undone. A token may be part of a multi-byte character, so
    /// these bytes need not be UTF-8 on their own (OpenAI's `bytes` field).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.token_text(id) else {
            return Vec::new();
        };
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>'))
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && hex.len() == 2
        {
            return vec![b];
        }
        let bytes: Option<Vec<u8>> = piece.chars().map(gpt2_byte).collect();
        bytes.unwrap_or_else(|| piece.replace('\u{2581}', " ").into_bytes())
    }

    /// Ids of the special (control) tokens, which text never encodes to
    /// unless special-token parsing is asked for.
    pub fn special_tokens(&self) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.with_special.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// Encode `text`. With `parse_special`, special-token markers in the
    /// text become their ids; without, they are ordinary text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tk = if parse_special { &self.with_special } else { &self.plain };
        Ok(tk.encode_fast(text, false).map_err(lib)?.get_ids().to_vec())
    }

    /// Decode ids to text. Special tokens are skipped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.with_special.decode(ids, skip_special).map_err(lib)
    }

    /// A fresh incremental decoder.
    pub fn stream(&self) -> StreamDecoder {
        StreamDecoder { ids: Vec::new(), prefix: 0, read: 0 }
    }
}

/// The byte that GPT-2's byte-level alphabet writes as `c`: printable
/// Latin-1 bytes stand for themselves, the other 68 bytes are shifted to
/// U+0100 onwards in byte order.
fn gpt2_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if printable(code) {
        return Some(code as u8);
    }
    let shifted = code.checked_sub(256)?;
    (0u32..=255).filter(|&b| !printable(b)).nth(shifted as usize).map(|b| b as u8)
}

fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false).map_err(lib)?.into())
    };
    let byte_level = |use_regex| -> PreTokenizerWrapper { ByteLevel::new(false, false, use_regex).into() };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "starcoder" | "refact" | "olmo" => byte_level(true),
        // SmolLM splits every digit on its own before the GPT-2 regex.
        "smollm" => Sequence::new(vec![split(r"\p{N}")?, byte_level(true)]).into(),
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into()
        }
        "qwen2" | "deepseek-r1-qwen" => Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into(),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer {other:?} (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            )));
        }
    })
}

/// Turns a stream of token ids into text deltas that are always valid UTF-8.
///
/// A token may end in the middle of a multi-byte character; such text is
/// held back until the character completes.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    /// Add a token; returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], true)?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.is_char_boundary(before.len()) {
            let delta = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}
