//! sdq: a Stable Diffusion job service.
//!
//! The crate is split so that dependencies point one way: `inference` is pure computation,
//! `queue` and `storage` know nothing of HTTP or Candle, `api` speaks HTTP on top of `queue`
//! and `storage`, and only `worker` binds queue, inference and storage together.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod inference;
pub mod queue;
pub mod storage;
pub mod worker;
