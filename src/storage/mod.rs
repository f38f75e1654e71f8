//! Image storage: PNG encoding with metadata, and the `ImageStore` over `object_store`
//! (a local directory in the embedded form, any S3-compatible store in the distributed one).

mod images;
pub mod png;
pub mod thumbnail;

pub use images::{ImageStore, S3Options, StorageError};
