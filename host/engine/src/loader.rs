//! Opening a model from disk: a GGUF file or a Hugging Face directory
//! (`config.json`, `*.safetensors`, `tokenizer.json` and optionally
//! `tokenizer_config.json` for the chat template).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;
use thiserror::Error;

use crate::chat_template::{ChatTemplate, TemplateError};
use crate::gguf::GgufFile;
use crate::model::llama::Naming;
use crate::model::weights::SafetensorsDir;
use crate::model::{LlamaModel, ModelConfig, ModelError};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// What can go wrong opening a model.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{path}: {reason}")]
    Path { path: PathBuf, reason: String },
}

/// A model ready to serve: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub name: String,
    pub model: Arc<LlamaModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel").field("name", &self.name).finish()
    }
}

impl LoadedModel {
    /// Open a `.gguf` file or a Hugging Face model directory.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        if path.is_dir() {
            Self::open_hf_dir(path)
        } else if path.is_file() {
            Self::open_gguf(path)
        } else {
            Err(LoadError::Path { path: path.into(), reason: "no such file or directory".into() })
        }
    }

    fn open_gguf(path: &Path) -> Result<Self, LoadError> {
        let file = GgufFile::open(path).map_err(ModelError::from)?;
        let config = ModelConfig::from_gguf(&file)?;
        let model = LlamaModel::load(config, &file, Naming::Gguf)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        check_vocab(&model, &tokenizer, path)?;
        let template = match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(template_for(src, &tokenizer)?),
            None => None,
        };
        let name = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| path.file_stem().unwrap_or_default().to_string_lossy().into_owned());
        Ok(Self { name, model: Arc::new(model), tokenizer: Arc::new(tokenizer), template })
    }

    fn open_hf_dir(dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let config = ModelConfig::from_hf_config(&config_path)?;
        let weights = SafetensorsDir::open(dir)?;
        let model = LlamaModel::load(config, &weights, Naming::HuggingFace)?;
        let raw: Json = std::fs::read_to_string(&config_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Json::Null);
        let ids = |k: &str| -> Vec<u32> {
            match raw.get(k) {
                Some(Json::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
                Some(Json::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
                _ => Vec::new(),
            }
        };
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(LoadError::Path { path: tokenizer_path, reason: "a Hugging Face model directory needs tokenizer.json".into() });
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path, &ids("eos_token_id"), ids("bos_token_id").first().copied())?;
        let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Json>(&t).ok())
            .and_then(|j| j.get("chat_template").and_then(Json::as_str).map(str::to_string));
        let template = match template {
            Some(src) => Some(template_for(&src, &tokenizer)?),
            None => None,
        };
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        Ok(Self { name, model: Arc::new(model), tokenizer: Arc::new(tokenizer), template })
    }
}

fn template_for(src: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate, TemplateError> {
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
    ChatTemplate::new(src, &text(tokenizer.bos_token()), &text(tokenizer.eos_token()))
}

fn check_vocab(model: &LlamaModel, tokenizer: &Tokenizer, path: &Path) -> Result<(), LoadError> {
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(LoadError::Path {
            path: path.into(),
            reason: format!(
                "tokenizer has {} tokens but the embedding has only {} rows",
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        });
    }
    Ok(())
}
