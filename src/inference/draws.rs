//! Random draws: arrays the caller supplies in place of a draw (to replay a run exactly
//! across implementations), then torch-compatible generators, one per image.

use std::collections::VecDeque;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::rng::TorchRng;
use super::schedulers::NoiseSource;
use super::InferenceError;

/// A float32 array given by the caller in place of a random draw, so that a run can be
/// replayed exactly across implementations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NoiseArray {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl NoiseArray {
    /// Reads a float32 (or float64, converted) `.npy` file, as numpy's `np.save` writes.
    pub fn read_npy(path: &Path) -> Result<Self, InferenceError> {
        let tensor = Tensor::read_npy(path).map_err(|e| {
            InferenceError::InvalidRequest(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_tensor(&tensor)
    }

    /// Copies a tensor's values out, in row-major order.
    pub fn from_tensor(tensor: &Tensor) -> Result<Self, InferenceError> {
        Ok(Self {
            shape: tensor.dims().to_vec(),
            values: tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        })
    }

    pub(super) fn to_tensor(
        &self,
        what: &str,
        shape: &[usize],
        like: &Tensor,
    ) -> Result<Tensor, InferenceError> {
        if self.shape != shape {
            return Err(InferenceError::InvalidRequest(format!(
                "{what} has shape {:?} but this request needs {shape:?}",
                self.shape
            )));
        }
        Ok(Tensor::from_slice(&self.values, shape, like.device())?.to_dtype(like.dtype())?)
    }
}

/// Where random draws come from: the caller's arrays first, in order, then one
/// torch-compatible generator per image, seeded `seed + i` (diffusers' list of
/// generators draws image by image in the same way).
pub(super) struct Draws {
    pub(super) supplied: VecDeque<Tensor>,
    pub(super) per_image: Vec<TorchRng>,
}

impl NoiseSource for Draws {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(next) = self.supplied.pop_front() {
            if next.dims() != like.dims() {
                candle_core::bail!(
                    "a supplied noise array has shape {:?}, the step needs {:?}",
                    next.dims(),
                    like.dims()
                );
            }
            return next.to_dtype(like.dtype());
        }
        let (batch, c, h, w) = like.dims4()?;
        debug_assert_eq!(batch, self.per_image.len());
        let per_image = c * h * w;
        let values: Vec<f32> = self
            .per_image
            .iter_mut()
            .flat_map(|g| g.randn(per_image))
            .collect();
        Tensor::from_vec(values, (batch, c, h, w), like.device())?.to_dtype(like.dtype())
    }
}
