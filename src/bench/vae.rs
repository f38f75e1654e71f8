//! One VAE decode (a single image) by our decoder and by candle-transformers'.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{interleaved, Row};
use crate::inference::model_config::{read_json, VaeConfig};
use crate::inference::rng::TorchRng;
use crate::inference::vae_decoder::AutoEncoderKL;
use crate::inference::vae_tiling::{Tiles, VaeTiling};
use crate::inference::InferenceError;

/// Times `iterations` decodes of a `width × height` image on each side; `baseline`
/// false times ours alone (for runs beside another process). `tiling` applies to ours
/// (the baseline always decodes in one pass); peak RSS is the process's, so compare
/// tiled and untiled runs in separate processes.
pub fn vae_decode(
    folder: &Path,
    (width, height): (usize, usize),
    iterations: usize,
    device: &Device,
    baseline: bool,
    tiling: VaeTiling,
) -> Result<Row, InferenceError> {
    let config: VaeConfig = read_json(&folder.join("vae/config.json"))?;
    let weights = folder.join("vae/diffusion_pytorch_model.safetensors");
    // Loaded as a worker loads it (on the CPU, the file's own pages), shared by both sides.
    let vb = crate::inference::weights::Weights::read(&weights, DType::F32, device)?
        .var_builder(DType::F32, device);
    let blocks = crate::inference::load::vae_blocks(&config);
    let ours = AutoEncoderKL::new(
        vb.clone(),
        config.in_channels,
        config.out_channels,
        blocks.clone(),
    )?;
    let theirs = if baseline {
        Some(
            candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
                vb,
                config.in_channels,
                config.out_channels,
                blocks,
            )?,
        )
    } else {
        None
    };
    let mut rng = TorchRng::new(0);
    let (lh, lw, ch) = (height / 8, width / 8, config.latent_channels);
    let z = Tensor::from_vec(rng.randn(ch * lh * lw), (1, ch, lh, lw), device)?;
    let sync = |t: Tensor| -> Result<(), InferenceError> {
        t.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        Ok(())
    };
    let mut run_theirs = |_: usize| -> Result<(), InferenceError> {
        sync(theirs.as_ref().expect("baseline built").decode(&z)?)
    };
    let tiles = Tiles::for_vae(&config, DType::F32);
    let tiled = tiles.decode_tiled(tiling, lh, lw);
    let decode = |z: &Tensor| -> Result<Tensor, InferenceError> {
        Ok(if tiled {
            tiles.decode(z, |tile| ours.decode(tile))?
        } else {
            ours.decode(z)?
        })
    };
    let (a, b) = interleaved(
        iterations,
        |_| sync(decode(&z)?),
        theirs
            .is_some()
            .then_some(&mut run_theirs as &mut dyn FnMut(usize) -> _),
    )?;
    let case = if tiled {
        format!("decode {width}x{height} tiled ({} px tiles)", tiles.sample)
    } else {
        format!("decode {width}x{height}")
    };
    Ok(Row::new(
        "vae",
        case,
        &a,
        (!b.is_empty()).then_some(("candle-transformers", &b[..])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_at_a_tiny_size() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let row = vae_decode(&folder, (64, 64), 1, &Device::Cpu, true, VaeTiling::Off).unwrap();
        assert_eq!(row.baseline.as_deref(), Some("candle-transformers"));
        let alone = vae_decode(&folder, (64, 64), 1, &Device::Cpu, false, VaeTiling::Off).unwrap();
        assert!(alone.speedup.is_none());
        // The tiny VAE's tiles are 64 pixels: 128² is 3 × 3 of them.
        let tiled = vae_decode(&folder, (128, 128), 1, &Device::Cpu, false, VaeTiling::On).unwrap();
        assert_eq!(tiled.case, "decode 128x128 tiled (64 px tiles)");
    }
}
