//! Pure computation: a model folder and a request in, images and step callbacks out.
//!
//! Nothing here knows about jobs, HTTP or storage, so it can be benchmarked and
//! parity-tested on its own.

pub mod batch;
pub mod catalogue;
pub mod clip;
pub mod conditioning;
pub mod decode;
pub mod denoise;
pub mod draws;
pub mod embeddings;
pub mod error;
pub mod extra_networks;
pub mod full_size;
pub mod hub;
pub mod img2img;
pub mod init_image;
pub mod kernels;
pub mod ldm_keys;
pub mod load;
pub mod lora;
pub mod mapped;
pub mod model_config;
pub mod ops;
pub mod pipeline;
pub mod preview;
pub mod prompt_plan;
pub mod prompt_weights;
pub mod request;
pub mod rng;
pub mod schedulers;
pub mod single_file;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae_decoder;
pub mod vae_encoder;
pub mod vae_tiling;
pub mod variants;
pub mod weights;

pub use batch::BatchObserver;
pub use conditioning::add_time_ids;
pub use decode::{FloatImage, GeneratedImage};
pub use draws::NoiseArray;
pub use error::InferenceError;
pub use pipeline::StableDiffusion;
pub use preview::{Preview, PreviewFamily};
pub use request::{GenerateRequest, InitImage, StepProgress};
pub use schedulers::SchedulerKind;
pub use vae_tiling::VaeTiling;
