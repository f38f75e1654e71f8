//! sdq: a Stable Diffusion job service.
//!
//! The crate is split so that dependencies point one way: `inference` is pure computation,
//! `queue` and `storage` know nothing of HTTP or Candle, `api` speaks HTTP on top of `queue`
//! and `storage`, only `worker` binds queue, inference and storage together, and
//! `maintenance` binds queue and storage for the cleaner and the orphan collector.
//! `observability` names every metric and is the one way to record one (worker and API).

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod inference;
pub mod maintenance;
pub mod models_pull;
pub mod observability;
pub mod queue;
pub mod storage;
pub mod worker;
