//! Names of the original Stable Diffusion (LDM / SGM) layout for diffusers' names.
//!
//! Single-file checkpoints (A1111, ComfyUI, the Stability releases) and kohya's SDXL
//! LoRAs name layers the way the original code built them (`input_blocks.4.1.…`,
//! `encoder.down.0.block.1.…`); diffusers renames them (`down_blocks.1.attentions.0.…`).
//! This file maps one diffusers name to its original one, for a given architecture, so
//! that loading (file → diffusers names) and exporting (diffusers names → file) share
//! one table.

use super::model_config::UNetConfig;

/// How a tensor changes between the two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Same values, same shape.
    Same,
    /// The original is a 1×1 convolution `[o, i, 1, 1]`, diffusers a linear `[o, i]`.
    Conv1x1,
    /// Row block `part` of 3 of a fused `[3h, …]` query/key/value tensor.
    QkvPart(usize),
    /// The original is the transpose (OpenCLIP's `text_projection` is `[h, proj]`).
    Transpose,
}

/// Splits `a.b.c` after its first `n` segments: (`a.b`, `c`) for n = 2.
fn split_after(name: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut parts = name.splitn(n + 1, '.');
    let head: Vec<&str> = (0..n).map(|_| parts.next()).collect::<Option<_>>()?;
    Some((head, parts.next().unwrap_or("")))
}

/// A resnet's diffusers sub-name in the UNet's original naming.
fn unet_resnet(rest: &str) -> Option<String> {
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match layer {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{mapped}.{tail}"))
}

fn has_attention(kind: &str) -> bool {
    kind.starts_with("CrossAttn")
}

/// The original name (under `model.diffusion_model.`) of a diffusers UNet tensor.
pub fn unet(name: &str, c: &UNetConfig) -> Option<String> {
    let lpb = c.layers_per_block;
    let (head, rest) = split_after(name, 1)?;
    Some(match head[0] {
        "conv_in" => format!("input_blocks.0.0.{rest}"),
        "conv_norm_out" => format!("out.0.{rest}"),
        "conv_out" => format!("out.2.{rest}"),
        "time_embedding" => {
            let (layer, tail) = rest.split_once('.')?;
            let i = match layer {
                "linear_1" => 0,
                "linear_2" => 2,
                _ => return None,
            };
            format!("time_embed.{i}.{tail}")
        }
        "add_embedding" => {
            let (layer, tail) = rest.split_once('.')?;
            let i = match layer {
                "linear_1" => 0,
                "linear_2" => 2,
                _ => return None,
            };
            format!("label_emb.0.{i}.{tail}")
        }
        "down_blocks" => {
            let (block, rest) = rest.split_once('.')?;
            let i: usize = block.parse().ok()?;
            let (kind, rest) = rest.split_once('.')?;
            let (index, rest) = rest.split_once('.')?;
            let j: usize = index.parse().ok()?;
            match kind {
                "resnets" => format!(
                    "input_blocks.{}.0.{}",
                    1 + i * (lpb + 1) + j,
                    unet_resnet(rest)?
                ),
                "attentions" => format!("input_blocks.{}.1.{rest}", 1 + i * (lpb + 1) + j),
                "downsamplers" => {
                    let tail = rest.strip_prefix("conv.")?;
                    format!("input_blocks.{}.0.op.{tail}", (i + 1) * (lpb + 1))
                }
                _ => return None,
            }
        }
        "mid_block" => {
            let (kind, rest) = rest.split_once('.')?;
            let (index, rest) = rest.split_once('.')?;
            match (kind, index) {
                ("resnets", "0") => format!("middle_block.0.{}", unet_resnet(rest)?),
                ("attentions", "0") => format!("middle_block.1.{rest}"),
                ("resnets", "1") => format!("middle_block.2.{}", unet_resnet(rest)?),
                _ => return None,
            }
        }
        "up_blocks" => {
            let (block, rest) = rest.split_once('.')?;
            let i: usize = block.parse().ok()?;
            let (kind, rest) = rest.split_once('.')?;
            let (index, rest) = rest.split_once('.')?;
            let j: usize = index.parse().ok()?;
            let base = i * (lpb + 1);
            match kind {
                "resnets" => format!("output_blocks.{}.0.{}", base + j, unet_resnet(rest)?),
                "attentions" => format!("output_blocks.{}.1.{rest}", base + j),
                "upsamplers" => {
                    let tail = rest.strip_prefix("conv.")?;
                    let slot = if has_attention(c.up_block_types.get(i)?) {
                        2
                    } else {
                        1
                    };
                    format!("output_blocks.{}.{slot}.conv.{tail}", base + lpb)
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// A VAE resnet's diffusers sub-name in the original naming.
fn vae_resnet(rest: &str) -> String {
    match rest.strip_prefix("conv_shortcut.") {
        Some(tail) => format!("nin_shortcut.{tail}"),
        None => rest.to_string(),
    }
}

/// The original name (under `first_stage_model.`) of a diffusers VAE tensor, and how
/// its values change. `levels` is the number of resolution levels.
pub fn vae(name: &str, levels: usize) -> Option<(String, Transform)> {
    let same = |s: String| Some((s, Transform::Same));
    if matches!(
        name.split('.').next(),
        Some("quant_conv" | "post_quant_conv")
    ) {
        return same(name.to_string());
    }
    let (side, rest) = name.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (part, rest) = rest.split_once('.')?;
    match part {
        "conv_in" | "conv_out" => same(format!("{side}.{part}.{rest}")),
        "conv_norm_out" => same(format!("{side}.norm_out.{rest}")),
        "down_blocks" | "up_blocks" => {
            let (block, rest) = rest.split_once('.')?;
            let i: usize = block.parse().ok()?;
            // The decoder's levels are stored lowest resolution last in the original.
            let (level, word) = if part == "down_blocks" {
                (i, "down")
            } else {
                (levels.checked_sub(1 + i)?, "up")
            };
            let (kind, rest) = rest.split_once('.')?;
            let (index, rest) = rest.split_once('.')?;
            match kind {
                "resnets" => same(format!(
                    "{side}.{word}.{level}.block.{index}.{}",
                    vae_resnet(rest)
                )),
                "downsamplers" => same(format!(
                    "{side}.down.{level}.downsample.{}",
                    rest.strip_prefix("")?
                )),
                "upsamplers" => same(format!("{side}.up.{level}.upsample.{rest}")),
                _ => None,
            }
            .filter(|_| index == "0" || kind == "resnets")
        }
        "mid_block" => {
            let (kind, rest) = rest.split_once('.')?;
            let (index, rest) = rest.split_once('.')?;
            match (kind, index) {
                ("resnets", "0") => same(format!("{side}.mid.block_1.{}", vae_resnet(rest))),
                ("resnets", "1") => same(format!("{side}.mid.block_2.{}", vae_resnet(rest))),
                ("attentions", "0") => {
                    let (layer, tail) = rest.rsplit_once('.')?;
                    let (mapped, transform) = match layer {
                        "group_norm" => ("norm", Transform::Same),
                        "to_q" | "query" => ("q", Transform::Conv1x1),
                        "to_k" | "key" => ("k", Transform::Conv1x1),
                        "to_v" | "value" => ("v", Transform::Conv1x1),
                        "to_out.0" | "proj_attn" => ("proj_out", Transform::Conv1x1),
                        _ => return None,
                    };
                    let transform = if tail == "weight" {
                        transform
                    } else {
                        Transform::Same
                    };
                    Some((format!("{side}.mid.attn_1.{mapped}.{tail}"), transform))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The OpenCLIP name (under the encoder's prefix) of a transformers CLIP text tensor,
/// for SD 2.x's encoder and SDXL's second one.
pub fn open_clip(name: &str) -> Option<(String, Transform)> {
    let same = |s: &str| Some((s.to_string(), Transform::Same));
    match name {
        "text_model.embeddings.token_embedding.weight" => return same("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight" => return same("positional_embedding"),
        "text_model.final_layer_norm.weight" => return same("ln_final.weight"),
        "text_model.final_layer_norm.bias" => return same("ln_final.bias"),
        "text_projection.weight" => {
            return Some(("text_projection".to_string(), Transform::Transpose))
        }
        _ => {}
    }
    let rest = name.strip_prefix("text_model.encoder.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let block = format!("transformer.resblocks.{layer}");
    let (module, tail) = rest.rsplit_once('.')?;
    let fused = |part: usize| {
        let what = if tail == "weight" {
            "in_proj_weight"
        } else {
            "in_proj_bias"
        };
        Some((format!("{block}.attn.{what}"), Transform::QkvPart(part)))
    };
    match module {
        "self_attn.q_proj" => fused(0),
        "self_attn.k_proj" => fused(1),
        "self_attn.v_proj" => fused(2),
        "self_attn.out_proj" => Some((format!("{block}.attn.out_proj.{tail}"), Transform::Same)),
        "layer_norm1" => Some((format!("{block}.ln_1.{tail}"), Transform::Same)),
        "layer_norm2" => Some((format!("{block}.ln_2.{tail}"), Transform::Same)),
        "mlp.fc1" => Some((format!("{block}.mlp.c_fc.{tail}"), Transform::Same)),
        "mlp.fc2" => Some((format!("{block}.mlp.c_proj.{tail}"), Transform::Same)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> UNetConfig {
        serde_json::from_value(serde_json::json!({
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 2,
        }))
        .unwrap()
    }

    #[test]
    fn unet_names_follow_the_original_block_numbering() {
        let c = sd15();
        let cases = [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            (
                "down_blocks.0.resnets.1.conv1.weight",
                "input_blocks.2.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.weight",
                "input_blocks.9.0.op.weight",
            ),
            (
                "down_blocks.3.resnets.0.conv_shortcut.bias",
                "input_blocks.10.0.skip_connection.bias",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            (
                "mid_block.attentions.0.proj_in.weight",
                "middle_block.1.proj_in.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.weight",
                "output_blocks.5.2.conv.weight",
            ),
            (
                "up_blocks.3.attentions.2.norm.weight",
                "output_blocks.11.1.norm.weight",
            ),
            (
                "up_blocks.2.resnets.0.norm2.weight",
                "output_blocks.6.0.out_layers.0.weight",
            ),
            ("conv_out.bias", "out.2.bias"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(
                unet(diffusers, &c).as_deref(),
                Some(original),
                "{diffusers}"
            );
        }
    }

    #[test]
    fn vae_names_reverse_the_decoder_levels() {
        let cases = [
            (
                "encoder.down_blocks.0.resnets.1.norm2.weight",
                "encoder.down.0.block.1.norm2.weight",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                "encoder.down.2.downsample.conv.bias",
            ),
            (
                "decoder.up_blocks.0.resnets.2.conv_shortcut.weight",
                "decoder.up.3.block.2.nin_shortcut.weight",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.conv.weight",
                "decoder.up.2.upsample.conv.weight",
            ),
            (
                "encoder.mid_block.resnets.1.conv2.weight",
                "encoder.mid.block_2.conv2.weight",
            ),
            ("decoder.conv_norm_out.bias", "decoder.norm_out.bias"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(
                vae(diffusers, 4),
                Some((original.to_string(), Transform::Same)),
                "{diffusers}"
            );
        }
        assert_eq!(
            vae("decoder.mid_block.attentions.0.to_out.0.weight", 4),
            Some((
                "decoder.mid.attn_1.proj_out.weight".into(),
                Transform::Conv1x1
            ))
        );
        assert_eq!(
            vae("encoder.mid_block.attentions.0.to_q.bias", 4),
            Some(("encoder.mid.attn_1.q.bias".into(), Transform::Same))
        );
    }

    #[test]
    fn open_clip_fuses_query_key_value() {
        assert_eq!(
            open_clip("text_model.encoder.layers.3.self_attn.k_proj.bias"),
            Some((
                "transformer.resblocks.3.attn.in_proj_bias".into(),
                Transform::QkvPart(1)
            ))
        );
        assert_eq!(
            open_clip("text_model.encoder.layers.0.mlp.fc2.weight"),
            Some((
                "transformer.resblocks.0.mlp.c_proj.weight".into(),
                Transform::Same
            ))
        );
        assert_eq!(
            open_clip("text_projection.weight"),
            Some(("text_projection".into(), Transform::Transpose))
        );
    }
}
