//! The VAE encoder for img2img, returning the posterior's mean and standard deviation.
//!
//! candle's `AutoEncoderKL::encode` hides both and samples the posterior with its own
//! unseeded RNG, so diffusers' posterior draw (the first random draw of img2img) could
//! not be reproduced. This assembles the same encoder from candle's public blocks, reads
//! the same weights, and clamps the log-variance to [-30, 20] as diffusers does.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};

use super::model_config::VaeConfig;

/// `vae.encoder` + `vae.quant_conv` of a diffusers `AutoencoderKL`.
pub struct VaeEncoder {
    conv_in: candle_nn::Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: candle_nn::GroupNorm,
    conv_out: candle_nn::Conv2d,
    quant_conv: Option<candle_nn::Conv2d>,
}

/// The diagonal Gaussian the encoder predicts for each image.
pub struct Posterior {
    pub mean: Tensor,
    pub std: Tensor,
}

impl VaeEncoder {
    /// Builds the encoder; `vb` points at the root of the VAE's weights.
    pub fn new(vb: VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let padded = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let channels = &c.block_out_channels;
        let last = *channels.last().expect("a VAE has blocks");
        let enc = vb.pp("encoder");
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let config = DownEncoderBlock2DConfig {
                    num_layers: c.layers_per_block,
                    resnet_eps: 1e-6,
                    resnet_groups: c.norm_num_groups,
                    add_downsample: i + 1 < channels.len(),
                    // diffusers' VAE pads the right and bottom by one before each
                    // stride-2 convolution instead of padding all sides.
                    downsample_padding: 0,
                    ..Default::default()
                };
                let input = if i == 0 { channels[0] } else { channels[i - 1] };
                DownEncoderBlock2D::new(enc.pp("down_blocks").pp(i), input, out, config)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid_config = UNetMidBlock2DConfig {
            resnet_eps: 1e-6,
            resnet_groups: Some(c.norm_num_groups),
            attn_num_head_channels: None,
            ..Default::default()
        };
        let latent2 = 2 * c.latent_channels;
        Ok(Self {
            conv_in: candle_nn::conv2d(c.in_channels, channels[0], 3, padded, enc.pp("conv_in"))?,
            down_blocks,
            mid_block: UNetMidBlock2D::new(enc.pp("mid_block"), last, None, mid_config)?,
            conv_norm_out: candle_nn::group_norm(
                c.norm_num_groups,
                last,
                1e-6,
                enc.pp("conv_norm_out"),
            )?,
            conv_out: candle_nn::conv2d(last, latent2, 3, padded, enc.pp("conv_out"))?,
            quant_conv: if c.use_quant_conv {
                Some(candle_nn::conv2d(
                    latent2,
                    latent2,
                    1,
                    Default::default(),
                    vb.pp("quant_conv"),
                )?)
            } else {
                None
            },
        })
    }

    /// Encodes images in [-1, 1], `[batch, 3, height, width]`.
    pub fn encode(&self, images: &Tensor) -> candle_core::Result<Posterior> {
        Posterior::of(&self.moments(images)?)
    }

    /// The encoder's raw output, `[batch, 2 × latent_channels, h, w]`: the means, then the
    /// log-variances (what diffusers' tiled encoder blends).
    pub fn moments(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(images)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        let mut moments = self.conv_out.forward(&xs)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        Ok(moments)
    }
}

impl Posterior {
    /// diffusers' `DiagonalGaussianDistribution` of the encoder's moments.
    pub fn of(moments: &Tensor) -> candle_core::Result<Self> {
        let parts = moments.chunk(2, 1)?;
        let logvar = parts[1].clamp(-30.0, 20.0)?;
        Ok(Posterior {
            mean: parts[0].clone(),
            std: (logvar * 0.5)?.exp()?,
        })
    }
}
