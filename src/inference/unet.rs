//! The conditional UNet of SD 1.x, 2.x and XL, built from `unet/config.json`.
//!
//! Our own because candle-transformers' UNet has no SDXL micro-conditioning (the
//! `text_time` additional embedding of pooled text embeds and size/crop ids), and its
//! configuration cannot express per-block transformer depths. Module and weight names
//! follow diffusers' `UNet2DConditionModel`, so diffusers checkpoints load as they are.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{layer_norm, linear, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use super::model_config::UNetConfig;
use super::ops::{self, conv2d, Conv2d, ConvExtras, GroupNorm, Path};

type Result<T> = candle_core::Result<T>;

/// Sinusoidal embedding of scalar timesteps, as diffusers' `get_timestep_embedding`.
fn timestep_embedding(t: &Tensor, dim: usize, flip_sin_to_cos: bool, shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    // Step by step in f32, exactly as diffusers does it in torch: at t≈1000 a rounding
    // difference in a frequency is visible in the embedding.
    let log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((i as f32 * log_period) / (half as f64 - shift) as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)
    }
}

/// Two linears with SiLU between (`linear_1`, `linear_2`).
#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, input: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(input, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(xs)?)?)
    }
}

#[derive(Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale: f64,
}

fn conv3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    conv2d(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb,
    )
}

impl ResnetBlock {
    fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb: usize,
        c: &UNetConfig,
        output_scale: f64,
    ) -> Result<Self> {
        let groups = c.norm_num_groups;
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, cin, c.norm_eps)?,
            conv1: conv3(vb.pp("conv1"), cin, cout)?,
            time_emb_proj: linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, cout, c.norm_eps)?,
            conv2: conv3(vb.pp("conv2"), cout, cout)?,
            conv_shortcut: if cin != cout {
                Some(conv2d(
                    cin,
                    cout,
                    1,
                    Default::default(),
                    vb.pp("conv_shortcut"),
                )?)
            } else {
                None
            },
            output_scale,
        })
    }

    fn forward(&self, path: Path, xs: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let t = self.time_emb_proj.forward(&candle_nn::ops::silu(temb)?)?;
        let h = ops::conv(
            path,
            &self.conv1,
            &self.norm1.forward(path, xs, true)?,
            ConvExtras {
                time: Some(&t),
                ..Default::default()
            },
        )?;
        let skip = match &self.conv_shortcut {
            Some(conv) => ops::conv(path, conv, xs, ConvExtras::default())?,
            None => xs.clone(),
        };
        // (skip + conv2(h)) / output_scale, as diffusers computes it.
        ops::conv(
            path,
            &self.conv2,
            &self.norm2.forward(path, &h, true)?,
            ConvExtras {
                residual: Some(&skip),
                scale: (self.output_scale != 1.0).then_some(self.output_scale),
                ..Default::default()
            },
        )
    }
}

#[derive(Debug)]
struct Attention {
    to_q: ops::Linear,
    to_k: ops::Linear,
    to_v: ops::Linear,
    to_out: ops::Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            to_q: ops::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: ops::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: ops::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: ops::linear(dim, dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// Attention of `xs` over `context`, plus `residual`.
    fn forward(
        &self,
        path: Path,
        xs: &Tensor,
        context: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let q = self.to_q.forward(path, xs)?;
        let k = self.to_k.forward(path, context)?;
        let v = self.to_v.forward(path, context)?;
        let out = ops::attention(path, &q, &k, &v, self.heads, self.scale)?;
        self.to_out.forward_add(path, &out, Some(residual))
    }
}

/// GEGLU's GELU: diffusers uses the exact (erf) form; candle-transformers' UNet uses the
/// tanh approximation, which only our equivalence test against it asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Gelu {
    Exact,
    #[cfg(test)]
    Tanh,
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: ops::Linear,
    ff_out: ops::Linear,
    gelu: Gelu,
}

impl TransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        context_dim: usize,
        gelu: Gelu,
    ) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: ops::linear(dim, inner * 2, vb.pp("ff").pp("net").pp("0").pp("proj"))?,
            ff_out: ops::linear(inner, dim, vb.pp("ff").pp("net").pp("2"))?,
            gelu,
        })
    }

    fn forward(&self, path: Path, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let xs = self.attn1.forward(path, &normed, &normed, xs)?;
        let xs = self
            .attn2
            .forward(path, &self.norm2.forward(&xs)?, context, &xs)?;
        // GEGLU: half of the projection gates the other half.
        let proj = self.ff_in.forward(path, &self.norm3.forward(&xs)?)?;
        let gated = ops::geglu(path, &proj, self.gelu == Gelu::Exact)?;
        self.ff_out.forward_add(path, &gated, Some(&xs))
    }
}

#[derive(Debug)]
enum Projection {
    Linear(ops::Linear),
    Conv(Conv2d),
}

#[derive(Debug)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        c: &UNetConfig,
        gelu: Gelu,
    ) -> Result<Self> {
        let (proj_in, proj_out) = if c.use_linear_projection {
            (
                Projection::Linear(ops::linear(channels, channels, vb.pp("proj_in"))?),
                Projection::Linear(ops::linear(channels, channels, vb.pp("proj_out"))?),
            )
        } else {
            (
                Projection::Conv(conv2d(
                    channels,
                    channels,
                    1,
                    Default::default(),
                    vb.pp("proj_in"),
                )?),
                Projection::Conv(conv2d(
                    channels,
                    channels,
                    1,
                    Default::default(),
                    vb.pp("proj_out"),
                )?),
            )
        };
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    channels,
                    heads,
                    c.cross_attention_dim,
                    gelu,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), c.norm_num_groups, channels, 1e-6)?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    fn forward(&self, path: Path, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = ops::dims(path, xs)?;
        let normed = self.norm.forward(path, xs, false)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => ops::to_tokens(
                path,
                &ops::conv(path, conv, &normed, ConvExtras::default())?,
            )?,
            Projection::Linear(lin) => lin.forward(path, &ops::to_tokens(path, &normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(path, &tokens, context)?;
        }
        match &self.proj_out {
            Projection::Conv(conv) => ops::conv(
                path,
                conv,
                &ops::from_tokens(path, &tokens, h, w)?,
                ConvExtras {
                    residual: Some(xs),
                    ..Default::default()
                },
            ),
            Projection::Linear(lin) => {
                ops::from_tokens(path, &lin.forward(path, &tokens)?, h, w)? + xs
            }
        }
    }
}

/// One level of the UNet: resnets, optional attentions, optional resampler.
#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    resample: Option<Conv2d>,
}

/// The UNet. `forward` takes latents, a timestep, the text conditioning and, for SDXL,
/// the pooled text embeds and time ids.
#[derive(Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, usize)>,
    down: Vec<Level>,
    mid_resnets: Vec<ResnetBlock>,
    mid_attentions: Vec<Transformer2D>,
    up: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
    path: Path,
}

/// What SDXL's UNet needs besides the per-token conditioning.
pub struct AddedConditions<'a> {
    /// `[batch, 1280]` pooled output of text_encoder_2.
    pub text_embeds: &'a Tensor,
    /// `[batch, 6]`: original size, crop top-left, target size.
    pub time_ids: &'a Tensor,
}

impl UNet {
    /// Builds the UNet; fails with a message naming the first unsupported config value.
    pub fn new(vb: VarBuilder, c: &UNetConfig) -> Result<Self> {
        Self::with_gelu(vb, c, Gelu::Exact)
    }

    pub(crate) fn with_gelu(vb: VarBuilder, c: &UNetConfig, gelu: Gelu) -> Result<Self> {
        let n = c.block_out_channels.len();
        if c.down_block_types.len() != n || c.up_block_types.len() != n {
            candle_core::bail!("block type lists and block_out_channels differ in length");
        }
        let per_block =
            |v: &super::model_config::PerBlock<usize>, what: &str| -> Result<Vec<usize>> {
                (0..n)
                    .map(|i| {
                        v.get(i, n).ok_or_else(|| {
                            candle_core::Error::Msg(format!("{what} has the wrong length"))
                        })
                    })
                    .collect()
            };
        let heads = per_block(
            c.num_attention_heads
                .as_ref()
                .unwrap_or(&c.attention_head_dim),
            "attention heads",
        )?;
        let depth = per_block(
            &c.transformer_layers_per_block,
            "transformer_layers_per_block",
        )?;
        let ch = &c.block_out_channels;
        let temb = ch[0] * 4;

        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let add_embedding = match c.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let time_dim = c.addition_time_embed_dim.unwrap_or(256);
                let input = c.projection_class_embeddings_input_dim.ok_or_else(|| {
                    candle_core::Error::Msg(
                        "text_time needs projection_class_embeddings_input_dim".into(),
                    )
                })?;
                Some((
                    TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?,
                    time_dim,
                ))
            }
            Some(other) => candle_core::bail!("unsupported addition_embed_type '{other}'"),
        };

        let mut down = Vec::with_capacity(n);
        let mut out_ch = ch[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = ch[i];
            let vb = vb.pp("down_blocks").pp(i);
            let cross = match c.down_block_types[i].as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => candle_core::bail!("unsupported down block '{other}'"),
            };
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(
                        vb.pp("resnets").pp(j),
                        if j == 0 { in_ch } else { out_ch },
                        out_ch,
                        temb,
                        c,
                        1.0,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let attentions = if cross {
                (0..c.layers_per_block)
                    .map(|j| {
                        Transformer2D::new(
                            vb.pp("attentions").pp(j),
                            out_ch,
                            heads[i],
                            depth[i],
                            c,
                            gelu,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let resample = if i + 1 < n {
                let cfg = Conv2dConfig {
                    padding: c.downsample_padding,
                    stride: 2,
                    ..Default::default()
                };
                Some(conv2d(
                    out_ch,
                    out_ch,
                    3,
                    cfg,
                    vb.pp("downsamplers").pp("0").pp("conv"),
                )?)
            } else {
                None
            };
            down.push(Level {
                resnets,
                attentions,
                resample,
            });
        }

        let last = ch[n - 1];
        let mid = vb.pp("mid_block");
        let mid_resnets = (0..2)
            .map(|j| {
                ResnetBlock::new(
                    mid.pp("resnets").pp(j),
                    last,
                    last,
                    temb,
                    c,
                    c.mid_block_scale_factor,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_attentions = vec![Transformer2D::new(
            mid.pp("attentions").pp(0),
            last,
            heads[n - 1],
            depth[n - 1],
            c,
            gelu,
        )?];

        let mut up = Vec::with_capacity(n);
        let mut prev_out = last;
        for i in 0..n {
            let level = n - 1 - i;
            let out_ch = ch[level];
            let skip_in = ch[level.saturating_sub(1)];
            let vb = vb.pp("up_blocks").pp(i);
            let cross = match c.up_block_types[i].as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => candle_core::bail!("unsupported up block '{other}'"),
            };
            let layers = c.layers_per_block + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { skip_in } else { out_ch };
                    let input = if j == 0 { prev_out } else { out_ch };
                    ResnetBlock::new(vb.pp("resnets").pp(j), input + skip, out_ch, temb, c, 1.0)
                })
                .collect::<Result<Vec<_>>>()?;
            let attentions = if cross {
                (0..layers)
                    .map(|j| {
                        Transformer2D::new(
                            vb.pp("attentions").pp(j),
                            out_ch,
                            heads[level],
                            depth[level],
                            c,
                            gelu,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let resample = if i + 1 < n {
                Some(conv3(
                    vb.pp("upsamplers").pp("0").pp("conv"),
                    out_ch,
                    out_ch,
                )?)
            } else {
                None
            };
            up.push(Level {
                resnets,
                attentions,
                resample,
            });
            prev_out = out_ch;
        }

        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), c.in_channels, ch[0])?,
            time_embedding,
            add_embedding,
            down,
            mid_resnets,
            mid_attentions,
            up,
            conv_norm_out: GroupNorm::new(
                vb.pp("conv_norm_out"),
                c.norm_num_groups,
                ch[0],
                c.norm_eps,
            )?,
            conv_out: conv3(vb.pp("conv_out"), ch[0], c.out_channels)?,
            config: c.clone(),
            path: Path::for_device(vb.device(), vb.dtype()),
        })
    }

    /// Which implementation of the layers `forward` runs.
    pub fn path(&self) -> Path {
        self.path
    }

    /// Runs candle's layers instead of our kernels (or back): for benchmarks and tests
    /// that compare the two on the same weights.
    pub fn set_path(&mut self, path: Path) {
        self.path = path;
    }

    /// Whether this UNet needs [`AddedConditions`] (SDXL).
    pub fn needs_added_conditions(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Predicts noise (or v) for `latents` at `timestep`.
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, _, _, _) = latents.dims4()?;
        let dtype = latents.dtype();
        let device = latents.device();

        let t = Tensor::full(timestep as f32, batch, device)?;
        let t_emb =
            timestep_embedding(&t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)?
                .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let Some((add_embedding, time_dim)) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                candle_core::Error::Msg("this UNet needs text_embeds and time_ids".into())
            })?;
            let ids = added.time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&ids, *time_dim, c.flip_sin_to_cos, c.freq_shift)?
                .reshape((batch, ()))?
                .to_dtype(dtype)?;
            let input = Tensor::cat(
                &[added.text_embeds.to_dtype(dtype)?, time_embeds],
                D::Minus1,
            )?;
            emb = (emb + add_embedding.forward(&input)?)?;
        }

        let xs = if c.center_input_sample {
            ((latents * 2.0)? - 1.0)?
        } else {
            latents.clone()
        };
        let path = self.path;
        let none = ConvExtras::default();
        let mut xs = ops::conv(path, &self.conv_in, &ops::enter(path, &xs)?, none)?;
        let mut skips = vec![xs.clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                xs = resnet.forward(path, &xs, &emb)?;
                if let Some(attn) = level.attentions.get(j) {
                    xs = attn.forward(path, &xs, context)?;
                }
                skips.push(xs.clone());
            }
            if let Some(conv) = &level.resample {
                xs = ops::conv(path, conv, &xs, none)?;
                skips.push(xs.clone());
            }
        }

        xs = self.mid_resnets[0].forward(path, &xs, &emb)?;
        for (attn, resnet) in self.mid_attentions.iter().zip(&self.mid_resnets[1..]) {
            xs = attn.forward(path, &xs, context)?;
            xs = resnet.forward(path, &xs, &emb)?;
        }

        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                xs = resnet.forward(path, &ops::cat_channels(path, &xs, &skip)?, &emb)?;
                if let Some(attn) = level.attentions.get(j) {
                    xs = attn.forward(path, &xs, context)?;
                }
            }
            if let Some(conv) = &level.resample {
                // Upsample to the size of the next skip, so odd latent sizes round-trip.
                let (_, _, h, w) = ops::dims(path, skips.last().expect("skips remain"))?;
                xs = ops::conv(path, conv, &ops::upsample_nearest(path, &xs, h, w)?, none)?;
            }
        }
        let xs = self.conv_norm_out.forward(path, &xs, true)?;
        let out = ops::conv(path, &self.conv_out, &xs, none)?;
        ops::leave(path, &out)?.to_dtype(dtype)
    }
}

/// candle-transformers' description of the same UNet (SD 1.x/2.x layouts only), for
/// the equivalence test and `sdq bench unet`.
pub fn candle_config(
    c: &UNetConfig,
) -> candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig {
    use candle_transformers::models::stable_diffusion::unet_2d::BlockConfig;
    let n = c.block_out_channels.len();
    let heads = c
        .num_attention_heads
        .as_ref()
        .unwrap_or(&c.attention_head_dim);
    let blocks = (0..n)
        .map(|i| BlockConfig {
            out_channels: c.block_out_channels[i],
            use_cross_attn: (c.down_block_types[i] == "CrossAttnDownBlock2D")
                .then(|| c.transformer_layers_per_block.get(i, n).unwrap_or(1)),
            attention_head_dim: heads.get(i, n).unwrap_or(8),
        })
        .collect();
    candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig {
        center_input_sample: c.center_input_sample,
        flip_sin_to_cos: c.flip_sin_to_cos,
        freq_shift: c.freq_shift,
        blocks,
        layers_per_block: c.layers_per_block,
        downsample_padding: c.downsample_padding,
        mid_block_scale_factor: c.mid_block_scale_factor,
        norm_num_groups: c.norm_num_groups,
        norm_eps: c.norm_eps,
        cross_attention_dim: c.cross_attention_dim,
        sliced_attention_size: None,
        use_linear_projection: c.use_linear_projection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// On an SD-1.5-shaped model our UNet must compute what candle's does (which matches
    /// diffusers there); SDXL-only parts are covered by the parity fixtures.
    #[test]
    fn matches_candles_unet_on_the_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 1).unwrap();
        let config: UNetConfig =
            crate::inference::model_config::read_json(&folder.join("unet/config.json")).unwrap();
        let weights = folder.join("unet/diffusion_pytorch_model.safetensors");
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu).unwrap()
        };
        let ours = UNet::with_gelu(vb.clone(), &config, Gelu::Tanh).unwrap();
        let exact = UNet::new(vb.clone(), &config).unwrap();
        let blocks = candle_config(&config);
        let theirs =
            candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
                vb, 4, 4, false, blocks,
            )
            .unwrap();
        let mut rng = crate::inference::rng::TorchRng::new(3);
        let latents =
            Tensor::from_vec(rng.randn(2 * 4 * 8 * 12), (2, 4, 8, 12), &Device::Cpu).unwrap();
        let context = Tensor::from_vec(rng.randn(2 * 77 * 32), (2, 77, 32), &Device::Cpu).unwrap();
        for t in [999.0, 421.0, 1.0] {
            let a = ours.forward(&latents, t, &context, None).unwrap();
            let b = theirs.forward(&latents, t, &context).unwrap();
            let diff = (a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "t={t}: max diff {diff} (output scale {scale})"
            );
            // The exact GELU differs, but only slightly.
            let e = exact.forward(&latents, t, &context, None).unwrap();
            let gap = (e - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                gap > 0.0 && gap < 1e-2 * scale.max(1.0),
                "t={t}: exact-GELU gap {gap}"
            );
        }
    }
}
