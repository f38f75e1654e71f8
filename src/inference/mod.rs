//! Pure computation: a model folder and a request in, images and step callbacks out.
//!
//! Nothing here knows about jobs, HTTP or storage, so it can be benchmarked and
//! parity-tested on its own.

pub mod clip;
pub mod error;
pub mod full_size;
pub mod hub;
pub mod init_image;
pub mod kernels;
pub mod model_config;
pub mod ops;
pub mod pipeline;
pub mod rng;
pub mod schedulers;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae_decoder;
pub mod vae_encoder;

pub use error::InferenceError;
pub use pipeline::{
    FloatImage, GenerateRequest, GeneratedImage, InitImage, NoiseArray, StableDiffusion,
    StepProgress,
};
pub use schedulers::SchedulerKind;
