//! Micro-benchmarks: each of our CPU kernels against candle's ops for the same layer,
//! at the shapes of one SD 1.5 UNet level (`latent` × `latent` tokens, 320 channels,
//! CFG batch 2; `latent` = 64 is a 512² image).

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};

use super::{interleaved, Row};
use crate::inference::ops::{self, ConvExtras, GroupNorm, Path};
use crate::inference::rng::TorchRng;
use crate::inference::InferenceError;

type Op<'a> = Box<dyn FnMut(Path) -> candle_core::Result<Tensor> + 'a>;

fn randn(rng: &mut TorchRng, dims: &[usize]) -> candle_core::Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(rng.randn(n), dims, &Device::Cpu)
}

/// Times every kernel at `latent × latent` against candle's ops, interleaved.
pub fn kernels(
    latent: usize,
    iterations: usize,
    only: Option<&str>,
) -> Result<Vec<Row>, InferenceError> {
    let (b, c, hw) = (2, 320, latent * latent);
    let mut rng = TorchRng::new(1);
    let nchw = randn(&mut rng, &[b, c, latent, latent])?;
    let nhwc = nchw.permute((0, 2, 3, 1))?.contiguous()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let conv = ops::conv2d(c, c, 3, cfg, vb.pp("conv"))?;
    let norm = GroupNorm::new(vb.pp("norm"), 32, c, 1e-5)?;
    let q = randn(&mut rng, &[b, hw, c])?;
    let k = randn(&mut rng, &[b, hw, c])?;
    let v = randn(&mut rng, &[b, hw, c])?;
    let proj = randn(&mut rng, &[b, hw, 8 * c])?;
    let input = |p: Path| if p == Path::Kernels { &nhwc } else { &nchw };

    let mut cases: Vec<(String, Op)> = vec![
        (
            format!("conv3x3 {latent}x{latent}x{c} batch {b}"),
            Box::new(|p| ops::conv(p, &conv, input(p), ConvExtras::default())),
        ),
        (
            format!("groupnorm+silu {latent}x{latent}x{c} batch {b}"),
            Box::new(|p| norm.forward(p, input(p), true)),
        ),
        (
            format!("self-attention {hw} tokens, 8 heads of 40, batch {b}"),
            Box::new(|p| ops::attention(p, &q, &k, &v, 8, 40f64.powf(-0.5))),
        ),
        (
            format!("geglu {hw} tokens x {} batch {b}", 4 * c),
            Box::new(|p| ops::geglu(p, &proj, true)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, op) in cases.iter_mut() {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let op = std::cell::RefCell::new(op);
        let mut candle =
            |_: usize| -> candle_core::Result<()> { (op.borrow_mut())(Path::Candle).map(drop) };
        let (ours, theirs) = interleaved(
            iterations,
            |_| (op.borrow_mut())(Path::Kernels).map(drop),
            Some(&mut candle),
        )?;
        rows.push(Row::new(
            "kernels",
            name.clone(),
            &ours,
            Some(("candle ops", &theirs)),
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kernel_runs_once_at_a_tiny_size() {
        let rows = super::kernels(8, 1, None).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(super::kernels(8, 1, Some("geglu")).unwrap().len(), 1);
        assert!(rows.iter().all(|r| r.ours_ms > 0.0 && r.speedup.is_some()));
    }
}
