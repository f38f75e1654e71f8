//! The layers the UNet is built from, on one of two paths chosen once at load.
//!
//! - `Path::Candle`: candle's tensor ops on NCHW activations, on any device and dtype
//!   (CUDA, Metal, f16).
//! - `Path::Kernels`: our CPU kernels (`inference::kernels`) on channels-last (NHWC)
//!   activations, in f32. A convolution is then a sum of matrix products with its bias,
//!   time embedding and residual fused, a transformer's tokens are the activations
//!   themselves (no permutes), attention is tiled, and GroupNorm + SiLU is one op.
//!
//! The model code calls these functions and never looks at the layout, so one UNet
//! serves both paths. `SDQ_KERNELS=candle` forces candle's path on the CPU (for A/B
//! benchmarks and for bisecting a numerical difference).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use candle_core::{CpuStorage, DType, Device, Module, Storage, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::kernels;
use super::mapped::kernel_layouts;

type Result<T> = candle_core::Result<T>;

/// Which implementation of the layers a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// candle's ops, NCHW.
    Candle,
    /// Our CPU kernels, NHWC, f32.
    Kernels,
}

impl Path {
    /// Our kernels for f32 on the CPU (unless `SDQ_KERNELS=candle`), candle's otherwise.
    pub fn for_device(device: &Device, dtype: DType) -> Self {
        let forced_off = std::env::var("SDQ_KERNELS").is_ok_and(|v| v == "candle");
        if device.is_cpu() && dtype == DType::F32 && !forced_off {
            Path::Kernels
        } else {
            Path::Candle
        }
    }

    /// The channel dimension of 4-D activations on this path.
    fn channel_dim(self) -> usize {
        match self {
            Path::Candle => 1,
            Path::Kernels => 3,
        }
    }
}

/// A contiguous f32 CPU tensor's data, borrowed for as long as the view lives.
struct F32View<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    end: usize,
}

impl F32View<'_> {
    fn of(t: &Tensor) -> Result<F32View<'_>> {
        let (guard, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("kernel input is not contiguous");
        };
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            candle_core::bail!("kernel input is not an f32 CPU tensor");
        }
        Ok(F32View { guard, start, end })
    }

    fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("checked in F32View::of"),
        }
    }
}

fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// NCHW model input to the path's layout.
pub fn enter(path: Path, x: &Tensor) -> Result<Tensor> {
    match path {
        Path::Candle => Ok(x.clone()),
        Path::Kernels => x.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.contiguous(),
    }
}

/// The path's layout back to NCHW.
pub fn leave(path: Path, x: &Tensor) -> Result<Tensor> {
    match path {
        Path::Candle => Ok(x.clone()),
        Path::Kernels => x.permute((0, 3, 1, 2))?.contiguous(),
    }
}

/// `(batch, channels, height, width)` whatever the layout.
pub fn dims(path: Path, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    Ok(match path {
        Path::Candle => x.dims4()?,
        Path::Kernels => {
            let (b, h, w, c) = x.dims4()?;
            (b, c, h, w)
        }
    })
}

/// Joins two activations along channels (the UNet's skip connections).
pub fn cat_channels(path: Path, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[a, b], path.channel_dim())
}

/// Nearest-neighbour resize to `h × w`.
pub fn upsample_nearest(path: Path, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    match path {
        Path::Candle => x.upsample_nearest2d(h, w),
        Path::Kernels => {
            let (b, c, ih, iw) = dims(path, x)?;
            let x = x.contiguous()?;
            let view = F32View::of(&x)?;
            let out = kernels::upsample::nearest_nhwc(view.slice(), (b, ih, iw, c), (h, w));
            from_vec(out, &[b, h, w, c])
        }
    }
}

/// Activations as `[batch, tokens, channels]` for a transformer.
pub fn to_tokens(path: Path, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = dims(path, x)?;
    match path {
        Path::Candle => x.permute((0, 2, 3, 1))?.reshape((b, h * w, c)),
        Path::Kernels => x.reshape((b, h * w, c)),
    }
}

/// Tokens back to activations of `h × w`.
pub fn from_tokens(path: Path, t: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = t.dims3()?;
    match path {
        Path::Candle => t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous(),
        Path::Kernels => t.reshape((b, h, w, c)),
    }
}

/// A GroupNorm layer (`weight`, `bias`) usable on both paths.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    candle: candle_nn::GroupNorm,
}

impl GroupNorm {
    /// Loads `weight` and `bias` of `channels` values.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let candle =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
            candle,
        })
    }

    /// Normalises `x`, then applies SiLU if `silu`.
    pub fn forward(&self, path: Path, x: &Tensor, silu: bool) -> Result<Tensor> {
        match path {
            Path::Candle => {
                let y = self.candle.forward(x)?;
                if silu {
                    candle_nn::ops::silu(&y)
                } else {
                    Ok(y)
                }
            }
            Path::Kernels => {
                let (b, c, h, w) = dims(path, x)?;
                let x = x.contiguous()?;
                let (xv, gv, bv) = (
                    F32View::of(&x)?,
                    F32View::of(&self.weight)?,
                    F32View::of(&self.bias)?,
                );
                let mut out = vec![0f32; b * h * w * c];
                kernels::group_norm::group_norm_nhwc(
                    xv.slice(),
                    kernels::group_norm::GroupNormShape {
                        batch: b,
                        pixels: h * w,
                        channels: c,
                        groups: self.groups,
                    },
                    gv.slice(),
                    bv.slice(),
                    self.eps,
                    silu,
                    &mut out,
                );
                from_vec(out, &[b, h, w, c])
            }
        }
    }
}

/// When our kernels use Winograd F(4×4, 3×3) for a same-size 3×3 convolution: maps of at
/// least `min_pixels`, layers whose transformed weights fit `max_bytes` (they are 4× the
/// layer's weights and stay in memory). 180 MiB takes in SD 1.5's 640-channel convolutions
/// fed 960–1920 channels at 32×32 (512²: 1–6 % less CPU per step, 0.28 GiB more peak
/// RSS) but not the 1280×1280 ones, of which SDXL has about twenty at 32×32 (256 MiB
/// would add 2 GiB there). `SDQ_WINOGRAD=off` disables it;
/// `SDQ_WINOGRAD_MIN_PIXELS` and `SDQ_WINOGRAD_MAX_MB` tune it (tests force it on small maps).
#[derive(Debug, Clone, Copy)]
struct WinogradPolicy {
    enabled: bool,
    min_pixels: usize,
    max_bytes: usize,
}

fn winograd_policy() -> WinogradPolicy {
    static POLICY: OnceLock<WinogradPolicy> = OnceLock::new();
    *POLICY.get_or_init(|| {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        WinogradPolicy {
            enabled: std::env::var("SDQ_WINOGRAD").map_or(true, |v| v != "off"),
            min_pixels: number("SDQ_WINOGRAD_MIN_PIXELS", 32 * 32),
            max_bytes: number("SDQ_WINOGRAD_MAX_MB", 180) << 20,
        }
    })
}

/// A weight matrix transposed for the kernels (see [`transposed`]); `None` where the
/// original is not a file's pages.
type Transposed = OnceLock<Option<Arc<Vec<f32>>>>;

/// Transposed weights made so far, by the original's (address, length, rows).
type SharedTransposes = HashMap<(usize, usize, usize), Weak<Vec<f32>>>;

/// The transpose of a row-major `rows × cols` weight, made once and shared by every
/// layer built on the same mapped tensor (a LoRA variant's unpatched layers and its base
/// model's), after which the original's pages are dropped (they come back from the page
/// cache if the candle path or a LoRA reads them), so the copy costs no memory. Weights
/// that are not a file's pages (LoRA-patched, split from a single-file checkpoint,
/// converted from f16 with the weight cache off) get no copy, which would double their
/// memory: the kernels read them through strides instead, about 7 % more slowly.
fn transposed(
    cell: &Transposed,
    weight: &[f32],
    rows: usize,
    cols: usize,
) -> Option<Arc<Vec<f32>>> {
    static SHARED: Mutex<Option<SharedTransposes>> = Mutex::new(None);
    cell.get_or_init(|| {
        if !super::mapped::holds(weight) {
            return None;
        }
        let key = (weight.as_ptr() as usize, weight.len(), rows);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let shared = shared.get_or_insert_with(HashMap::new);
        if let Some(made) = shared.get(&key).and_then(Weak::upgrade) {
            return Some(made);
        }
        shared.retain(|_, w| w.strong_count() > 0);
        let layout = kernel_layouts::Layout::Transposed { rows, cols };
        let made = match kernel_layouts::load(weight, layout) {
            Some(kept) => Arc::new(kept),
            None => {
                let made = Arc::new(kernels::gemm::transpose(weight, rows, cols));
                kernel_layouts::offer(weight, layout, &made);
                made
            }
        };
        super::mapped::evict(weight);
        shared.insert(key, Arc::downgrade(&made));
        Some(made)
    })
    .clone()
}

/// A 2-D convolution layer (`weight`, optional `bias`) usable on both paths.
#[derive(Debug)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// Weights in the Winograd domain, made on first use on a large map.
    winograd: OnceLock<Option<kernels::winograd::WinogradWeights>>,
    /// The weight as a `(cin·k·k) × cout` matrix, made on first direct use.
    kn: Transposed,
}

/// Loads a convolution, as `candle_nn::conv2d` does.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Ok(Conv2d {
        inner: candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?,
        winograd: OnceLock::new(),
        kn: OnceLock::new(),
    })
}

impl Conv2d {
    /// The Winograd weights, if this layer should use them on a map of `pixels`.
    fn winograd(&self, pixels: usize) -> Result<Option<&kernels::winograd::WinogradWeights>> {
        let policy = winograd_policy();
        let cfg = self.inner.config();
        let (cout, cin, kh, kw) = self.inner.weight().dims4()?;
        let eligible = policy.enabled
            && (kh, kw, cfg.stride, cfg.padding, cfg.dilation, cfg.groups) == (3, 3, 1, 1, 1, 1)
            && pixels >= policy.min_pixels
            && 36 * cin * cout * 4 <= policy.max_bytes;
        if !eligible {
            return Ok(None);
        }
        if let Some(w) = self.winograd.get() {
            return Ok(w.as_ref());
        }
        let weight = self.inner.weight().contiguous()?;
        let view = F32View::of(&weight)?;
        let layout = kernel_layouts::Layout::Winograd { cout, cin };
        let kept = kernel_layouts::load(view.slice(), layout).and_then(|values| {
            kernels::winograd::WinogradWeights::from_values(Arc::new(values), cout, cin)
        });
        let made = kept.unwrap_or_else(|| {
            let made = kernels::winograd::WinogradWeights::new(view.slice(), cout, cin);
            kernel_layouts::offer(view.slice(), layout, made.values());
            made
        });
        super::mapped::evict(view.slice());
        Ok(self.winograd.get_or_init(|| Some(made)).as_ref())
    }
}

/// What a convolution adds to its output: `(conv(x) + time[b, c] + residual) · scale`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConvExtras<'a> {
    /// `[batch, cout]`, broadcast over pixels (a resnet's time embedding).
    pub time: Option<&'a Tensor>,
    /// Same shape as the output.
    pub residual: Option<&'a Tensor>,
    /// Multiplies the sum (1 when `None`).
    pub scale: Option<f64>,
}

/// Runs `conv` on `x` with the extras fused where the path allows.
pub fn conv(path: Path, layer: &Conv2d, x: &Tensor, extras: ConvExtras) -> Result<Tensor> {
    let conv = &layer.inner;
    match path {
        Path::Candle => {
            let mut y = conv.forward(x)?;
            if let Some(t) = extras.time {
                y = y.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
            }
            if let Some(r) = extras.residual {
                y = (r + y)?;
            }
            match extras.scale {
                Some(s) => y / s,
                None => Ok(y),
            }
        }
        Path::Kernels => {
            let cfg = conv.config();
            let (cout, cin, kh, kw) = conv.weight().dims4()?;
            if kh != kw || cfg.dilation != 1 || cfg.groups != 1 {
                candle_core::bail!("unsupported convolution {kh}x{kw} {cfg:?}");
            }
            let (b, c, h, w) = dims(path, x)?;
            if c != cin {
                candle_core::bail!("convolution expects {cin} channels, got {c}");
            }
            let shape = kernels::conv2d::Conv2dShape {
                batch: b,
                height: h,
                width: w,
                in_channels: cin,
                out_channels: cout,
                kernel: kh,
                stride: cfg.stride,
                padding: cfg.padding,
            };
            let x = x.contiguous()?;
            let weight = conv.weight().contiguous()?;
            let time = extras.time.map(|t| t.contiguous()).transpose()?;
            let residual = extras.residual.map(|t| t.contiguous()).transpose()?;
            let xv = F32View::of(&x)?;
            let wv = F32View::of(&weight)?;
            let bias = conv.bias().map(F32View::of).transpose()?;
            let time = time.as_ref().map(F32View::of).transpose()?;
            let residual = residual.as_ref().map(F32View::of).transpose()?;
            let mut out = vec![0f32; shape.output_len()];
            let epilogue = kernels::conv2d::Epilogue {
                bias: bias.as_ref().map(|v| v.slice()),
                batch_bias: time.as_ref().map(|v| v.slice()),
                residual: residual.as_ref().map(|v| v.slice()),
                scale: extras.scale.map(|s| (1.0 / s) as f32),
            };
            match layer.winograd(h * w)? {
                Some(weights) => kernels::winograd::conv3x3_winograd(
                    xv.slice(),
                    shape,
                    weights,
                    epilogue,
                    &mut out,
                ),
                None => {
                    let kn = transposed(&layer.kn, wv.slice(), cout, cin * kh * kw);
                    let weights = match &kn {
                        Some(kn) => kernels::conv2d::ConvWeights::Kn(kn),
                        None => kernels::conv2d::ConvWeights::Oihw(wv.slice()),
                    };
                    kernels::conv2d::conv2d_nhwc(
                        xv.slice(),
                        shape,
                        weights,
                        epilogue,
                        &mut out,
                        kernels::threads(),
                    )
                }
            }
            let (oh, ow) = shape.output_hw();
            from_vec(out, &[b, oh, ow, cout])
        }
    }
}

/// A linear layer (`weight` `[out, in]`, optional `bias`) usable on both paths.
#[derive(Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// The weight as an `in × out` matrix, made on first use on the kernel path.
    kn: Transposed,
}

/// Loads a linear layer with a bias, as `candle_nn::linear` does.
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(in_features, out_features, vb)?,
        kn: OnceLock::new(),
    })
}

/// Loads a linear layer without a bias.
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear_no_bias(in_features, out_features, vb)?,
        kn: OnceLock::new(),
    })
}

impl Linear {
    /// `x · Wᵀ + b` over the last dimension of `x`.
    pub fn forward(&self, path: Path, x: &Tensor) -> Result<Tensor> {
        self.forward_add(path, x, None)
    }

    /// `x · Wᵀ + b + residual`, the residual (of the output's shape) added in the same
    /// pass on the kernel path.
    pub fn forward_add(&self, path: Path, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        if path == Path::Candle {
            let y = self.inner.forward(x)?;
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        let weight = self.inner.weight().contiguous()?;
        let (outs, ins) = weight.dims2()?;
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&ins) {
            candle_core::bail!("linear layer expects {ins} features, got {dims:?}");
        }
        let rows = x.elem_count() / ins.max(1);
        *dims.last_mut().expect("checked") = outs;
        let x = x.contiguous()?;
        let residual = residual.map(|t| t.contiguous()).transpose()?;
        let xv = F32View::of(&x)?;
        let wv = F32View::of(&weight)?;
        let bias = self.inner.bias().map(F32View::of).transpose()?;
        let residual = residual.as_ref().map(F32View::of).transpose()?;
        if let Some(r) = &residual {
            if r.slice().len() != rows * outs {
                candle_core::bail!("residual does not match the linear layer's output");
            }
        }
        let kn = transposed(&self.kn, wv.slice(), outs, ins);
        let rhs = match &kn {
            Some(kn) => kernels::gemm::MatRef::row_major(kn, ins, outs),
            None => kernels::gemm::MatRef {
                data: wv.slice(),
                offset: 0,
                rows: ins,
                cols: outs,
                row_stride: 1,
                col_stride: ins,
            },
        };
        let mut out = vec![0f32; rows * outs];
        kernels::gemm::matmul(
            &mut out,
            outs,
            kernels::gemm::MatRef::row_major(xv.slice(), rows, ins),
            rhs,
            kernels::gemm::Accumulate::Overwrite,
            kernels::threads(),
        );
        let epilogue = kernels::conv2d::Epilogue {
            bias: bias.as_ref().map(|v| v.slice()),
            residual: residual.as_ref().map(|v| v.slice()),
            ..Default::default()
        };
        if !epilogue.is_identity() {
            use rayon::prelude::*;
            const ROWS: usize = 64;
            out.par_chunks_mut(ROWS * outs)
                .enumerate()
                .for_each(|(i, dst)| {
                    kernels::conv2d::finish(dst, i * ROWS, (rows, outs), &epilogue)
                });
        }
        from_vec(out, &dims)
    }
}

/// Multi-head attention of `q` (`[batch, n, heads · d]`) over `k`, `v` (`[batch, m, heads · d]`).
pub fn attention(
    path: Path,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, n, dim) = q.dims3()?;
    let m = k.dim(1)?;
    match path {
        #[cfg(feature = "flash-attn")]
        Path::Candle if flash_attention_applies(q) => {
            // FlashAttention-2 reads [batch, tokens, heads, head_dim]: our layout, reshaped.
            let split = |t: &Tensor| -> Result<Tensor> {
                let (b, n, _) = t.dims3()?;
                t.reshape((b, n, heads, dim / heads))
            };
            candle_flash_attn::flash_attn(&split(q)?, &split(k)?, &split(v)?, scale as f32, false)?
                .reshape((b, n, dim))
        }
        Path::Candle => {
            let split = |t: &Tensor| -> Result<Tensor> {
                let (b, n, _) = t.dims3()?;
                t.reshape((b, n, heads, dim / heads))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split(q)?, split(k)?, split(v)?);
            // Scores in f32 even for half-precision weights: softmax over long sequences
            // overflows in f16 (diffusers' upcast_attention). The queries are scaled, not
            // the scores: the score matrix is tokens² per head, the largest tensor of the
            // step, and another pass over it costs more than the matmul saves.
            let in_dtype = q.dtype();
            let q = (q.to_dtype(DType::F32)? * scale)?;
            let scores = q.matmul(&k.to_dtype(DType::F32)?.t()?)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(in_dtype)?;
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, n, dim))
        }
        Path::Kernels => {
            let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
            let (qv, kv, vv) = (F32View::of(&q)?, F32View::of(&k)?, F32View::of(&v)?);
            let mut out = vec![0f32; b * n * dim];
            kernels::attention::attention(
                qv.slice(),
                kv.slice(),
                vv.slice(),
                kernels::attention::AttentionShape {
                    batch: b,
                    queries: n,
                    keys: m,
                    heads,
                    head_dim: dim / heads,
                },
                scale as f32,
                &mut out,
            );
            from_vec(out, &[b, n, dim])
        }
    }
}

/// FlashAttention for CUDA tensors in f16/bf16, unless `SDQ_FLASH_ATTN=off` (for
/// measuring it against candle's attention).
#[cfg(feature = "flash-attn")]
fn flash_attention_applies(q: &Tensor) -> bool {
    let off = std::env::var("SDQ_FLASH_ATTN").is_ok_and(|v| v == "off");
    !off && q.device().is_cuda() && matches!(q.dtype(), DType::F16 | DType::BF16)
}

/// GEGLU on a projection whose last dimension holds `[value | gate]`.
pub fn geglu(path: Path, proj: &Tensor, exact: bool) -> Result<Tensor> {
    match path {
        Path::Kernels if exact => {
            let dims = proj.dims().to_vec();
            let inner = dims[dims.len() - 1] / 2;
            let proj = proj.contiguous()?;
            let view = F32View::of(&proj)?;
            let out = kernels::geglu::geglu(view.slice(), inner);
            let mut shape = dims;
            *shape.last_mut().expect("projection has dims") = inner;
            from_vec(out, &shape)
        }
        _ => {
            let parts = proj.chunk(2, D::Minus1)?;
            let gate = if exact {
                parts[1].gelu_erf()?
            } else {
                parts[1].gelu()?
            };
            &parts[0] * gate
        }
    }
}
