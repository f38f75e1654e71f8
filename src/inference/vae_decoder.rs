//! The VAE decoder (diffusers' `AutoencoderKL.decode`), built from `vae/config.json`.
//!
//! Our own so that it runs on `inference::ops` like the UNet: on the CPU in f32 its
//! convolutions, GroupNorm + SiLU and its one attention layer are our kernels on NHWC
//! activations (a 512² decode is convolutions over 512 × 512 × 128 maps, where candle's
//! im2col copies cost the most), elsewhere candle's ops. It is a drop-in for
//! candle-transformers' `AutoEncoderKL` decoder: same constructor, same weight names
//! (diffusers' current `to_q` ... `to_out.0` attention names, or the older `query` ...
//! `proj_attn` ones).

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, VarBuilder};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::ops::{self, conv2d, Conv2d, ConvExtras, GroupNorm, Path};

type Result<T> = candle_core::Result<T>;

/// diffusers builds every decoder norm with this epsilon.
const EPS: f64 = 1e-6;

fn conv3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(cin, cout, 3, cfg, vb)
}

/// A resnet without time embedding.
#[derive(Debug)]
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        let shortcut = if cin != cout {
            Some(conv2d(
                cin,
                cout,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, cin, EPS)?,
            conv1: conv3(vb.pp("conv1"), cin, cout)?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, cout, EPS)?,
            conv2: conv3(vb.pp("conv2"), cout, cout)?,
            shortcut,
        })
    }

    fn forward(&self, path: Path, xs: &Tensor) -> Result<Tensor> {
        let none = ConvExtras::default();
        let h = ops::conv(
            path,
            &self.conv1,
            &self.norm1.forward(path, xs, true)?,
            none,
        )?;
        let skip = match &self.shortcut {
            Some(conv) => ops::conv(path, conv, xs, none)?,
            None => xs.clone(),
        };
        ops::conv(
            path,
            &self.conv2,
            &self.norm2.forward(path, &h, true)?,
            ConvExtras {
                residual: Some(&skip),
                ..none
            },
        )
    }
}

/// The mid block's single-head self-attention over all pixels.
#[derive(Debug)]
struct Attention {
    norm: GroupNorm,
    q: ops::Linear,
    k: ops::Linear,
    v: ops::Linear,
    out: ops::Linear,
    channels: usize,
}

impl Attention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let modern = vb.contains_tensor("to_q.weight");
        let name = |new: &'static str, old: &'static str| if modern { new } else { old };
        Ok(Self {
            norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, EPS)?,
            q: ops::linear(channels, channels, vb.pp(name("to_q", "query")))?,
            k: ops::linear(channels, channels, vb.pp(name("to_k", "key")))?,
            v: ops::linear(channels, channels, vb.pp(name("to_v", "value")))?,
            out: ops::linear(
                channels,
                channels,
                if modern {
                    vb.pp("to_out").pp("0")
                } else {
                    vb.pp("proj_attn")
                },
            )?,
            channels,
        })
    }

    fn forward(&self, path: Path, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = ops::dims(path, xs)?;
        let tokens = ops::to_tokens(path, &self.norm.forward(path, xs, false)?)?;
        let (q, k, v) = (
            self.q.forward(path, &tokens)?,
            self.k.forward(path, &tokens)?,
            self.v.forward(path, &tokens)?,
        );
        let scale = (self.channels as f64).powf(-0.5);
        let attended = ops::attention(path, &q, &k, &v, 1, scale)?;
        ops::from_tokens(path, &self.out.forward(path, &attended)?, h, w)? + xs
    }
}

/// One resolution of the decoder: resnets, then an optional 2× upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv2d>,
}

/// The decoder half of an `AutoencoderKL`.
#[derive(Debug)]
pub struct AutoEncoderKL {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnets: [Resnet; 2],
    mid_attention: Attention,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    path: Path,
}

impl AutoEncoderKL {
    /// Builds the decoder of the VAE under `vb` (the `vae/` folder's root).
    pub fn new(
        vb: VarBuilder,
        _in_channels: usize,
        out_channels: usize,
        c: AutoEncoderKLConfig,
    ) -> Result<Self> {
        let Some(&top) = c.block_out_channels.last() else {
            candle_core::bail!("block_out_channels is empty");
        };
        let groups = c.norm_num_groups;
        let latent = c.latent_channels;
        let post_quant_conv = if c.use_post_quant_conv {
            Some(conv2d(
                latent,
                latent,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        let d = vb.pp("decoder");
        let mid = d.pp("mid_block");
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut prev = top;
        let mut up = Vec::with_capacity(reversed.len());
        for (i, &out) in reversed.iter().enumerate() {
            let vb = d.pp("up_blocks").pp(i);
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let cin = if j == 0 { prev } else { out };
                    Resnet::new(vb.pp("resnets").pp(j), cin, out, groups)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = if i + 1 < reversed.len() {
                Some(conv3(vb.pp("upsamplers").pp("0").pp("conv"), out, out)?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsample });
            prev = out;
        }
        let bottom = c.block_out_channels[0];
        Ok(Self {
            post_quant_conv,
            conv_in: conv3(d.pp("conv_in"), latent, top)?,
            mid_resnets: [
                Resnet::new(mid.pp("resnets").pp(0), top, top, groups)?,
                Resnet::new(mid.pp("resnets").pp(1), top, top, groups)?,
            ],
            mid_attention: Attention::new(mid.pp("attentions").pp(0), top, groups)?,
            up,
            norm_out: GroupNorm::new(d.pp("conv_norm_out"), groups, bottom, EPS)?,
            conv_out: conv3(d.pp("conv_out"), bottom, out_channels)?,
            path: Path::for_device(vb.device(), vb.dtype()),
        })
    }

    /// Which implementation of the layers `decode` runs.
    pub fn path(&self) -> Path {
        self.path
    }

    /// Runs candle's layers instead of our kernels (or back), for comparisons.
    pub fn set_path(&mut self, path: Path) {
        self.path = path;
    }

    /// Latents (`[batch, latent_channels, h, w]`, already unscaled) to images in [-1, 1]
    /// (`[batch, out_channels, 8h, 8w]`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let path = self.path;
        let dtype = latents.dtype();
        let none = ConvExtras::default();
        let mut xs = ops::enter(path, latents)?;
        if let Some(conv) = &self.post_quant_conv {
            xs = ops::conv(path, conv, &xs, none)?;
        }
        xs = ops::conv(path, &self.conv_in, &xs, none)?;
        xs = self.mid_resnets[0].forward(path, &xs)?;
        xs = self.mid_attention.forward(path, &xs)?;
        xs = self.mid_resnets[1].forward(path, &xs)?;
        for block in &self.up {
            for resnet in &block.resnets {
                xs = resnet.forward(path, &xs)?;
            }
            if let Some(conv) = &block.upsample {
                let (_, _, h, w) = ops::dims(path, &xs)?;
                xs = ops::conv(
                    path,
                    conv,
                    &ops::upsample_nearest(path, &xs, 2 * h, 2 * w)?,
                    none,
                )?;
            }
        }
        xs = self.norm_out.forward(path, &xs, true)?;
        xs = ops::conv(path, &self.conv_out, &xs, none)?;
        ops::leave(path, &xs)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Ours (both paths) decodes what candle-transformers' decoder does, on the tiny VAE.
    #[test]
    fn matches_candles_decoder_on_the_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 2).unwrap();
        let config: crate::inference::model_config::VaeConfig =
            crate::inference::model_config::read_json(&folder.join("vae/config.json")).unwrap();
        let weights = folder.join("vae/diffusion_pytorch_model.safetensors");
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu).unwrap()
        };
        let blocks = crate::inference::load::vae_blocks(&config);
        let mut ours = AutoEncoderKL::new(vb.clone(), 3, 3, blocks.clone()).unwrap();
        let theirs = candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
            vb, 3, 3, blocks,
        )
        .unwrap();
        let mut rng = crate::inference::rng::TorchRng::new(5);
        let z = Tensor::from_vec(rng.randn(4 * 6 * 10), (1, 4, 6, 10), &Device::Cpu).unwrap();
        let want = theirs.decode(&z).unwrap();
        assert_eq!(ours.path(), Path::Kernels);
        for path in [Path::Kernels, Path::Candle] {
            ours.set_path(path);
            let got = ours.decode(&z).unwrap();
            assert_eq!(got.dims(), &[1, 3, 48, 80]);
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{path:?}: max diff {diff}");
        }
    }
}
