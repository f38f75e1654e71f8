//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the base64-decoded part of the
//! owner's `whsec_…` secret. Any Standard Webhooks library verifies them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key inside a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .map_err(|e| format!("the webhook secret is not valid base64: {e}"))
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_id_timestamp_and_body() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(key.len(), 24);
        let a = sign(&key, "msg_1", 1_700_000_000, b"{}");
        assert!(a.starts_with("v1,"));
        assert_eq!(a, sign(&key, "msg_1", 1_700_000_000, b"{}"));
        assert_ne!(a, sign(&key, "msg_2", 1_700_000_000, b"{}"));
        assert_ne!(a, sign(&key, "msg_1", 1_700_000_001, b"{}"));
        assert_ne!(a, sign(&key, "msg_1", 1_700_000_000, b"{ }"));
        // An independent computation of the same HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"msg_1.1700000000.{}");
        assert_eq!(a[3..], STANDARD.encode(mac.finalize().into_bytes()));
        assert!(secret_key("whsec_%%%").is_err());
    }
}
