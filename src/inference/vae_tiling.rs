//! VAE tiling for large images: the VAE runs on overlapping tiles whose seams are blended
//! linearly, as diffusers' `AutoencoderKL.enable_tiling()` does, so its memory is bounded
//! by one tile instead of growing with the image.
//!
//! The geometry is diffusers': a tile is `sample_size` pixels (`vae/config.json`) and
//! `sample_size / 2^(levels - 1)` latents on a side; tiles start every 75 % of a tile, and
//! each one's first quarter (of the output) is blended with the tile above and the tile to
//! its left (already blended themselves, in row-major order), then every tile keeps its
//! first 75 %. The result differs from an untiled pass (each tile sees only itself, the
//! mid-block attention included), which is why tiling is a choice of the request.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::model_config::VaeConfig;

type Result<T> = candle_core::Result<T>;

/// When the VAE works in tiles.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum VaeTiling {
    /// Never: the whole image in one pass (diffusers' default).
    Off,
    /// Whenever the image is larger than one tile (diffusers after `enable_tiling()`).
    On,
    /// As `on`, but only for images whose untiled pass needs more memory than
    /// [`AUTO_MAP_BYTES`] for one full-resolution feature map.
    #[default]
    Auto,
}

/// `auto` tiles when one feature map of the VAE at full resolution
/// (`block_out_channels[0] × width × height` in the VAE's dtype) would be larger than this.
/// For SD 1.5 and SDXL in f32 (128 channels) that is above 2 megapixels: 1024² and
/// 1448² decode in one pass, 1536² and 2048² in tiles. An untiled pass holds about six
/// such maps at its peak (measured in README › Benchmarks).
pub const AUTO_MAP_BYTES: usize = 1 << 30;

/// diffusers' `tile_sample_min_size` when a VAE config has no `sample_size` (SD 1.x's).
const DEFAULT_SAMPLE_SIZE: usize = 512;

/// diffusers' `tile_overlap_factor`.
const OVERLAP: f64 = 0.25;

impl VaeTiling {
    /// The names the API and the CLI take.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Self::Off),
            "on" => Some(Self::On),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Auto => "auto",
        }
    }
}

/// How a VAE tiles: its tile size in pixels and in latents, and the memory rule of `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    /// Pixels on a tile's side (diffusers' `tile_sample_min_size`).
    pub sample: usize,
    /// Latents on a tile's side (diffusers' `tile_latent_min_size`).
    pub latent: usize,
    /// Bytes per pixel of one full-resolution feature map (for `auto`).
    map_bytes_per_pixel: usize,
}

impl Tiles {
    /// The tiles of a VAE of this config running in `dtype`.
    pub fn for_vae(config: &VaeConfig, dtype: DType) -> Self {
        let scale = config.scale_factor();
        let sample = config.sample_size.unwrap_or(DEFAULT_SAMPLE_SIZE);
        // A tile must keep a whole number of latents per 75 % step, or the blended pieces
        // would not add up to the image: round down to a multiple of 4 × scale (every
        // published VAE's size already is one).
        let sample = (sample / (4 * scale)).max(1) * 4 * scale;
        Self {
            sample,
            latent: sample / scale,
            map_bytes_per_pixel: config.block_out_channels.first().copied().unwrap_or(128)
                * dtype.size_in_bytes(),
        }
    }

    /// Whether `mode` decodes latents of `lh × lw` in tiles.
    pub fn decode_tiled(&self, mode: VaeTiling, lh: usize, lw: usize) -> bool {
        let larger = lh > self.latent || lw > self.latent;
        let scale = self.sample / self.latent;
        larger && self.wanted(mode, lh * scale, lw * scale)
    }

    /// Whether `mode` encodes an image of `height × width` in tiles.
    pub fn encode_tiled(&self, mode: VaeTiling, height: usize, width: usize) -> bool {
        let larger = height > self.sample || width > self.sample;
        larger && self.wanted(mode, height, width)
    }

    fn wanted(&self, mode: VaeTiling, height: usize, width: usize) -> bool {
        match mode {
            VaeTiling::Off => false,
            VaeTiling::On => true,
            VaeTiling::Auto => height * width * self.map_bytes_per_pixel > AUTO_MAP_BYTES,
        }
    }

    /// Decodes `latents` (`[n, c, h, w]`) tile by tile with `decode` (one tile's latents to
    /// its pixels), as diffusers' `tiled_decode`.
    pub fn decode(
        &self,
        latents: &Tensor,
        decode: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let blend = (self.sample as f64 * OVERLAP) as usize;
        let plan = Plan {
            tile: self.latent,
            stride: (self.latent as f64 * (1.0 - OVERLAP)) as usize,
            blend,
            keep: self.sample - blend,
        };
        plan.run(latents, decode)
    }

    /// Encodes `images` (`[n, 3, h, w]`) tile by tile with `encode` (one tile's pixels to
    /// its latent moments), as diffusers' `_tiled_encode`.
    pub fn encode(
        &self,
        images: &Tensor,
        encode: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let blend = (self.latent as f64 * OVERLAP) as usize;
        let plan = Plan {
            tile: self.sample,
            stride: (self.sample as f64 * (1.0 - OVERLAP)) as usize,
            blend,
            keep: self.latent - blend,
        };
        plan.run(images, encode)
    }
}

/// One tiled pass: input tiles of `tile` every `stride`, outputs blended over `blend`
/// and cropped to `keep` (both in output units).
struct Plan {
    tile: usize,
    stride: usize,
    blend: usize,
    keep: usize,
}

impl Plan {
    fn run(&self, input: &Tensor, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let (_, _, h, w) = input.dims4()?;
        let stride = self.stride.max(1);
        let mut rows: Vec<Vec<Block>> = Vec::new();
        let mut dtype = input.dtype();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                let tile =
                    input
                        .narrow(2, i, self.tile.min(h - i))?
                        .narrow(3, j, self.tile.min(w - j))?;
                let out = f(&tile)?;
                dtype = out.dtype();
                row.push(Block::of(&out)?);
            }
            rows.push(row);
        }
        // In place and in row-major order, as diffusers: the tile above and the tile to
        // the left have been blended with their own neighbours already.
        for i in 0..rows.len() {
            let (done, rest) = rows.split_at_mut(i);
            let row = &mut rest[0];
            for j in 0..row.len() {
                let (left, here) = row.split_at_mut(j);
                let tile = &mut here[0];
                if let Some(above) = done.last() {
                    blend_v(&above[j], tile, self.blend);
                }
                if let Some(left) = left.last() {
                    blend_h(left, tile, self.blend);
                }
            }
        }
        let out = assemble(&rows, self.keep);
        Tensor::from_vec(out.data, (out.n, out.c, out.h, out.w), input.device())?.to_dtype(dtype)
    }
}

/// One tile's output as f32, `[n, c, h, w]`.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

impl Block {
    fn of(t: &Tensor) -> Result<Self> {
        let (n, c, h, w) = t.dims4()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { n, c, h, w, data })
    }

    fn at(&self, plane: usize, y: usize, x: usize) -> usize {
        (plane * self.h + y) * self.w + x
    }
}

/// diffusers' blend weights: `a·(1 − k/e) + b·(k/e)` for row (or column) k of e.
fn mix(a: f32, b: f32, k: usize, extent: usize) -> f32 {
    let t = k as f64 / extent as f64;
    a * (1.0 - t) as f32 + b * t as f32
}

/// Blends the last rows of `a` (the tile above) into the first rows of `b`.
fn blend_v(a: &Block, b: &mut Block, extent: usize) {
    let e = extent.min(a.h).min(b.h);
    let w = a.w.min(b.w);
    for plane in 0..b.n * b.c {
        for y in 0..e {
            for x in 0..w {
                let from = a.data[a.at(plane, a.h - e + y, x)];
                let i = b.at(plane, y, x);
                b.data[i] = mix(from, b.data[i], y, e);
            }
        }
    }
}

/// Blends the last columns of `a` (the tile to the left) into the first columns of `b`.
fn blend_h(a: &Block, b: &mut Block, extent: usize) {
    let e = extent.min(a.w).min(b.w);
    let h = a.h.min(b.h);
    for plane in 0..b.n * b.c {
        for y in 0..h {
            for x in 0..e {
                let from = a.data[a.at(plane, y, a.w - e + x)];
                let i = b.at(plane, y, x);
                b.data[i] = mix(from, b.data[i], x, e);
            }
        }
    }
}

/// Crops every tile to its first `keep` rows and columns and lays them side by side.
fn assemble(rows: &[Vec<Block>], keep: usize) -> Block {
    let first = &rows[0][0];
    let (n, c) = (first.n, first.c);
    let heights: Vec<usize> = rows.iter().map(|r| r[0].h.min(keep)).collect();
    let widths: Vec<usize> = rows[0].iter().map(|b| b.w.min(keep)).collect();
    let (h, w) = (heights.iter().sum(), widths.iter().sum());
    let mut out = Block {
        n,
        c,
        h,
        w,
        data: vec![0.0; n * c * h * w],
    };
    let mut y0 = 0;
    for (row, &th) in rows.iter().zip(&heights) {
        let mut x0 = 0;
        for (tile, &tw) in row.iter().zip(&widths) {
            for plane in 0..n * c {
                for y in 0..th {
                    let src = tile.at(plane, y, 0);
                    let dst = out.at(plane, y0 + y, x0);
                    out.data[dst..dst + tw].copy_from_slice(&tile.data[src..src + tw]);
                }
            }
            x0 += tw;
        }
        y0 += th;
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .unwrap()
    }

    fn config(sample_size: Option<usize>, levels: usize) -> VaeConfig {
        let mut c: VaeConfig =
            serde_json::from_value(serde_json::json!({"block_out_channels": vec![128; levels]}))
                .unwrap();
        c.sample_size = sample_size;
        c
    }

    #[test]
    fn tiles_are_diffusers_tile_sizes() {
        let sd = Tiles::for_vae(&config(Some(512), 4), DType::F32);
        assert_eq!((sd.sample, sd.latent), (512, 64));
        let tiny = Tiles::for_vae(&config(Some(64), 4), DType::F32);
        assert_eq!((tiny.sample, tiny.latent), (64, 8));
        let missing = Tiles::for_vae(&config(None, 4), DType::F32);
        assert_eq!(missing.sample, 512);
        // 100 keeps no whole latent per step; it becomes 96 (12 latents, steps of 9).
        let odd = Tiles::for_vae(&config(Some(100), 4), DType::F32);
        assert_eq!((odd.sample, odd.latent), (96, 12));
    }

    #[test]
    fn the_modes_decide_as_documented() {
        let sd = Tiles::for_vae(&config(Some(512), 4), DType::F32);
        for mode in [VaeTiling::Off, VaeTiling::On, VaeTiling::Auto] {
            // One tile or less never tiles.
            assert!(!sd.decode_tiled(mode, 64, 64));
            assert!(!sd.encode_tiled(mode, 512, 512));
        }
        assert!(sd.decode_tiled(VaeTiling::On, 64, 65));
        assert!(sd.encode_tiled(VaeTiling::On, 520, 512));
        assert!(!sd.decode_tiled(VaeTiling::Off, 256, 256));
        // auto: 1448² is under 2^30 bytes of 128 f32 channels, 1456 × 1448 is over.
        assert!(!sd.decode_tiled(VaeTiling::Auto, 128, 128));
        assert!(!sd.decode_tiled(VaeTiling::Auto, 181, 181));
        assert!(sd.decode_tiled(VaeTiling::Auto, 182, 181));
        assert!(sd.encode_tiled(VaeTiling::Auto, 2048, 2048));
        // f16 halves the bytes: 2048² is then exactly 2^30, not over.
        let half = Tiles::for_vae(&config(Some(512), 4), DType::F16);
        assert!(!half.decode_tiled(VaeTiling::Auto, 256, 256));
        for name in ["off", "on", "auto"] {
            assert_eq!(VaeTiling::parse(name).unwrap().name(), name);
        }
        assert_eq!(VaeTiling::parse("yes"), None);
    }

    /// diffusers' `tiled_decode` written out literally (list of tiles, in-place blends,
    /// concatenation), on candle tensors: the reference the fast path must equal.
    fn reference(
        x: &Tensor,
        tile: usize,
        stride: usize,
        blend: usize,
        keep: usize,
        f: &dyn Fn(&Tensor) -> Tensor,
    ) -> Tensor {
        let (_, _, h, w) = x.dims4().unwrap();
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                let t = x
                    .narrow(2, i, tile.min(h - i))
                    .unwrap()
                    .narrow(3, j, tile.min(w - j))
                    .unwrap();
                row.push(f(&t));
            }
            rows.push(row);
        }
        let blend_along = |a: &Tensor, b: &Tensor, dim: usize| -> Tensor {
            let e = blend.min(a.dim(dim).unwrap()).min(b.dim(dim).unwrap());
            let len_a = a.dim(dim).unwrap();
            let len_b = b.dim(dim).unwrap();
            let mut parts = Vec::new();
            for k in 0..e {
                let t = k as f64 / e as f64;
                let top = a.narrow(dim, len_a - e + k, 1).unwrap();
                let mine = b.narrow(dim, k, 1).unwrap();
                parts.push(((top * (1.0 - t)).unwrap() + (mine * t).unwrap()).unwrap());
            }
            parts.push(b.narrow(dim, e, len_b - e).unwrap());
            Tensor::cat(&parts, dim).unwrap()
        };
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                let mut t = rows[i][j].clone();
                if i > 0 {
                    t = blend_along(&rows[i - 1][j], &t, 2);
                }
                if j > 0 {
                    t = blend_along(&rows[i][j - 1], &t, 3);
                }
                rows[i][j] = t;
            }
        }
        let result_rows: Vec<Tensor> = rows
            .iter()
            .map(|row| {
                let cropped: Vec<Tensor> = row
                    .iter()
                    .map(|t| {
                        let (_, _, th, tw) = t.dims4().unwrap();
                        t.narrow(2, 0, keep.min(th))
                            .unwrap()
                            .narrow(3, 0, keep.min(tw))
                            .unwrap()
                    })
                    .collect();
                Tensor::cat(&cropped, 3).unwrap()
            })
            .collect();
        Tensor::cat(&result_rows, 2).unwrap()
    }

    /// A stand-in decoder: 8× nearest upsampling plus a pattern that depends on the tile's
    /// own mean (so tiles differ and the blends show), 3 channels out.
    fn fake_decode(t: &Tensor) -> Tensor {
        let (n, _, h, w) = t.dims4().unwrap();
        let mean = t.mean_all().unwrap();
        let up = t
            .narrow(1, 0, 3)
            .unwrap()
            .upsample_nearest2d(8 * h, 8 * w)
            .unwrap();
        let ramp = Tensor::arange(0f32, (8 * w) as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 8 * w))
            .unwrap()
            .broadcast_as((n, 3, 8 * h, 8 * w))
            .unwrap()
            .broadcast_mul(&mean)
            .unwrap();
        (up + ramp).unwrap()
    }

    #[test]
    fn decode_blends_exactly_like_diffusers_on_ragged_tiles() {
        let tiles = Tiles::for_vae(&config(Some(64), 4), DType::F32);
        // 16 × 20 latents: rows start at 0, 6, 12 (the last 4 high), columns at 0, 6,
        // 12, 18 (the last 2 wide, narrower than the 16-pixel blend).
        let mut rng = crate::inference::rng::TorchRng::new(3);
        let z = Tensor::from_vec(rng.randn(2 * 4 * 16 * 20), (2, 4, 16, 20), &Device::Cpu).unwrap();
        let mut calls = 0;
        let got = tiles
            .decode(&z, |t| {
                calls += 1;
                Ok(fake_decode(t))
            })
            .unwrap();
        assert_eq!(calls, 12);
        assert_eq!(got.dims(), &[2, 3, 128, 160]);
        let want = reference(&z, 8, 6, 16, 48, &fake_decode);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn encode_tiles_pixels_and_blends_latents() {
        let tiles = Tiles::for_vae(&config(Some(64), 4), DType::F32);
        // A stand-in encoder: 8× average pooling to 8 "moment" channels.
        let fake_encode = |t: &Tensor| {
            let pooled = t.avg_pool2d(8).unwrap();
            Tensor::cat(
                &[
                    pooled.clone(),
                    pooled.clone(),
                    pooled.affine(2.0, 1.0).unwrap(),
                ],
                1,
            )
            .unwrap()
            .narrow(1, 0, 8)
            .unwrap()
        };
        let mut rng = crate::inference::rng::TorchRng::new(4);
        let x = Tensor::from_vec(rng.randn(3 * 136 * 96), (1, 3, 136, 96), &Device::Cpu).unwrap();
        let got = tiles.encode(&x, |t| Ok(fake_encode(t))).unwrap();
        assert_eq!(got.dims(), &[1, 8, 17, 12]);
        let want = reference(&x, 64, 48, 2, 6, &fake_encode);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn a_constant_image_stays_constant_across_the_seams() {
        // Blends are convex: equal tiles blend into themselves.
        let tiles = Tiles::for_vae(&config(Some(64), 4), DType::F32);
        let z = Tensor::ones((1, 4, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let got = tiles
            .decode(&z, |t| {
                let (n, _, h, w) = t.dims4()?;
                Tensor::full(0.25f32, (n, 3, 8 * h, 8 * w), &Device::Cpu)
            })
            .unwrap();
        let values = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
