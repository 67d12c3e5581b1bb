//! # chatrun-models
//!
//! The `LanguageModel` adapters.
//!
//! # Layout
//! - [`openai`]: `OpenAiModel`, streaming chat completions from any OpenAI-compatible server
//!   (OpenAI, Ollama, vLLM, llama.cpp's server, OpenRouter) and from Anthropic through its
//!   OpenAI-compatible endpoint, on `async-openai`.
//! - [`offline`]: `OfflineModel`, a deterministic built-in model so the app runs with no key and
//!   no network.

pub mod offline;
pub mod openai;

use std::sync::Arc;

use chatrun_core::config::{
    ANTHROPIC_OPENAI_BASE_URL, ModelCatalog, ModelSettings, offline_reply_tokens_from_env,
};
use chatrun_core::ports::LanguageModel;

pub use offline::OfflineModel;
pub use openai::OpenAiModel;

/// The model the settings select, offering the catalog's models (built from the same settings).
pub fn model_from_settings(
    settings: &ModelSettings,
    catalog: &ModelCatalog,
) -> Arc<dyn LanguageModel> {
    let catalog = catalog.clone();
    match settings {
        ModelSettings::OpenAi {
            api_key,
            base_url,
            model,
        } => Arc::new(
            OpenAiModel::new(api_key, base_url.as_deref(), model, "OpenAI-compatible")
                .with_models(catalog),
        ),
        ModelSettings::Anthropic { api_key, model } => Arc::new(
            OpenAiModel::new(api_key, Some(ANTHROPIC_OPENAI_BASE_URL), model, "Anthropic")
                .with_models(catalog),
        ),
        // Validated by `ModelSettings::from_env` at start-up.
        ModelSettings::Offline { tokens_per_sec } => Arc::new(
            OfflineModel::new(*tokens_per_sec)
                .with_reply_tokens(offline_reply_tokens_from_env().ok().flatten())
                .with_models(catalog),
        ),
    }
}
