//! sdq: a Stable Diffusion job service.
//!
//! The crate is split so that dependencies point one way: `inference` is pure computation,
//! `queue` and `storage` know nothing of HTTP or Candle, `api` speaks HTTP on top of `queue`
//! and `storage`, only `worker` binds queue, inference and storage together, and
//! `maintenance` binds queue and storage for the cleaner, the orphan collector and the
//! webhook deliverer. `view` (the JSON of a job, shared by the API and webhook bodies) and
//! `net_guard` (the SSRF policy) are pure helpers both sides use.
//! `observability` names every metric and is the one way to record one (worker and API).

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod inference;
pub mod maintenance;
pub mod models_pull;
pub mod net_guard;
pub mod observability;
pub mod queue;
pub mod storage;
pub mod view;
pub mod worker;

// Model weights on the CPU are the model files' own pages; frees of that memory must
// reach the mapping, not the system allocator (see `inference::mapped`).
#[global_allocator]
static ALLOCATOR: inference::mapped::MapAwareAllocator = inference::mapped::MapAwareAllocator;
