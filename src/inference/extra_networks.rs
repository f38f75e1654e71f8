//! A1111's extra-network tags in prompts: `<lora:name>` and `<lora:name:0.8>` ask for
//! a LoRA at a weight; the tags are taken out of the text before it is encoded.

/// A LoRA asked for by name at a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub weight: f64,
}

/// A malformed tag, with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad LoRA tag '{tag}': {reason}")]
pub struct TagError {
    pub tag: String,
    pub reason: String,
}

/// The prompt without its `<lora:…>` (and `<lyco:…>`) tags, and the LoRAs they name.
pub fn split_lora_tags(prompt: &str) -> Result<(String, Vec<LoraTag>), TagError> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let kind = ["lora:", "lyco:"]
            .iter()
            .find(|k| after.len() >= k.len() && after[..k.len()].eq_ignore_ascii_case(k));
        let (Some(kind), Some(end)) = (kind, after.find('>')) else {
            text.push_str(&rest[..start + 1]);
            rest = after;
            continue;
        };
        let tag = &rest[start..start + 1 + end + 1];
        let body = &after[kind.len()..end];
        let err = |reason: &str| TagError {
            tag: tag.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = body.split(':');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            return Err(err("no LoRA name"));
        }
        let weight = match parts.next() {
            None => 1.0,
            Some(w) => w
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite())
                .ok_or_else(|| err("the weight is not a number"))?,
        };
        if parts.next().is_some() {
            return Err(err(
                "separate text-encoder and UNet weights are not supported; give one weight",
            ));
        }
        text.push_str(&rest[..start]);
        tags.push(LoraTag {
            name: name.to_string(),
            weight,
        });
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_taken_out_with_their_weights() {
        let (text, tags) =
            split_lora_tags("a cat <lora:film grain:0.8>, <LORA:pixel>sharp <lyco:x: -0.5 >")
                .unwrap();
        assert_eq!(text, "a cat , sharp ");
        assert_eq!(
            tags,
            vec![
                LoraTag {
                    name: "film grain".into(),
                    weight: 0.8
                },
                LoraTag {
                    name: "pixel".into(),
                    weight: 1.0
                },
                LoraTag {
                    name: "x".into(),
                    weight: -0.5
                },
            ]
        );
    }

    #[test]
    fn other_angle_brackets_stay_text() {
        let (text, tags) = split_lora_tags("a <b> c < d <hypernet:x:1>").unwrap();
        assert_eq!(text, "a <b> c < d <hypernet:x:1>");
        assert!(tags.is_empty());
    }

    #[test]
    fn malformed_tags_are_errors() {
        assert!(split_lora_tags("<lora::1>").is_err());
        assert!(split_lora_tags("<lora:x:heavy>").is_err());
        assert!(split_lora_tags("<lora:x:1:0.5>").is_err());
        assert!(split_lora_tags("<lora:x:inf>").is_err());
    }
}
