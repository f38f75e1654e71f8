use super::*;
use crate::inference::tiny::{write_kind, TinyKind};

fn same(a: &Weights, b: &Weights, what: &str) {
    let mut names: Vec<&str> = a.names().filter(|n| !n.ends_with("position_ids")).collect();
    names.sort();
    let mut other: Vec<&str> = b.names().filter(|n| !n.ends_with("position_ids")).collect();
    other.sort();
    assert_eq!(names, other, "{what}: tensor names");
    for name in names {
        let (x, y) = (a.get(name).unwrap(), b.get(name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{what} {name}");
        let gap = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(gap.to_scalar::<f32>().unwrap(), 0.0, "{what} {name}");
    }
}

#[test]
fn exports_of_every_tiny_family_read_back_to_the_folders_weights() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [
        TinyKind::Sd15,
        TinyKind::Sd2,
        TinyKind::Inpaint,
        TinyKind::Sdxl,
        TinyKind::SdxlInpaint,
    ] {
        let folder = dir.path().join(format!("{kind:?}"));
        write_kind(&folder, 0, kind).unwrap();
        let file = dir.path().join(format!("{kind:?}.safetensors"));
        export(
            &folder,
            &file,
            ExportOptions {
                ema: true,
                ..Default::default()
            },
        )
        .unwrap();
        let from_folder =
            crate::inference::load::folder_parts(&folder, &Device::Cpu, DType::F32).unwrap();
        let from_file = parts(&file, &Device::Cpu, DType::F32).unwrap();
        let what = format!("{kind:?}");
        assert_eq!(
            serde_json::to_value(&from_file.unet_config).unwrap(),
            serde_json::to_value(&from_folder.unet_config).unwrap(),
            "{what}: UNet config read from the tensors"
        );
        same(&from_file.unet, &from_folder.unet, &format!("{what} unet"));
        same(&from_file.vae, &from_folder.vae, &format!("{what} vae"));
        same(
            &from_file.text_encoder,
            &from_folder.text_encoder,
            &format!("{what} te"),
        );
        assert_eq!(from_file.xl.is_some(), from_folder.xl.is_some());
        if let (Some(a), Some(b)) = (&from_file.xl, &from_folder.xl) {
            same(&a.text_encoder_2, &b.text_encoder_2, &format!("{what} te2"));
        }
    }
}

#[test]
fn pickles_corrupt_files_and_other_safetensors_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 pickle").unwrap();
    let err = crate::inference::StableDiffusion::load(&ckpt, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pickle"), "{err}");

    let folder = dir.path().join("tiny");
    write_kind(&folder, 0, TinyKind::Sd15).unwrap();
    let file = dir.path().join("tiny.safetensors");
    export(&folder, &file, ExportOptions::default()).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = crate::inference::StableDiffusion::load(&cut, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cut.safetensors"), "{err}");

    let lora_like = dir.path().join("not-a-model.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &lora_like).unwrap();
    let err = crate::inference::StableDiffusion::load(&lora_like, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a Stable Diffusion checkpoint"), "{err}");
}
