//! Pure computation: a model folder and a request in, images and step callbacks out.
//!
//! Nothing here knows about jobs, HTTP or storage, so it can be benchmarked and
//! parity-tested on its own.

pub mod clip;
pub mod conditioning;
pub mod decode;
pub mod denoise;
pub mod draws;
pub mod error;
pub mod full_size;
pub mod hub;
pub mod img2img;
pub mod init_image;
pub mod kernels;
pub mod load;
pub mod model_config;
pub mod ops;
pub mod pipeline;
pub mod request;
pub mod rng;
pub mod schedulers;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae_decoder;
pub mod vae_encoder;

pub use conditioning::add_time_ids;
pub use decode::{FloatImage, GeneratedImage};
pub use draws::NoiseArray;
pub use error::InferenceError;
pub use pipeline::StableDiffusion;
pub use request::{GenerateRequest, InitImage, StepProgress};
pub use schedulers::SchedulerKind;
