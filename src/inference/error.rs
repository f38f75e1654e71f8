//! The one error type of the inference layer.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or generating an image.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model name is neither a known name, a local folder nor a hub repo id.
    #[error("unknown model '{0}': use a known name (see `GET /v1/models`), a hub repo id like 'owner/name', or a local diffusers folder")]
    UnknownModel(String),
    /// The model could not be fetched (offline, missing from the cache, hub error).
    #[error("model '{model}' is not available: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// The folder exists but is not a model we can run.
    #[error("invalid model folder {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    /// The request cannot be run on this model.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The caller asked to stop between two denoising steps.
    #[error("generation canceled")]
    Canceled,
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InferenceError {
    /// Errors that will not go away on a retry: the job should fail at once.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, InferenceError::Candle(_) | InferenceError::Io { .. })
    }

    pub(crate) fn invalid_model(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        InferenceError::InvalidModel {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
