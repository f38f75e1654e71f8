//! API keys: the token format, how a token is checked, and the key rows the store keeps.
//!
//! A token is `sdq_` followed by 48 URL-safe base64 characters (36 random bytes). Its
//! first 12 characters after the prefix are the *lookup*, stored in clear so a request
//! finds its row by index; the whole token is stored only as a SHA-256 hash, compared in
//! constant time. The secret is random enough that a slow password hash buys nothing.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What every token starts with, so leaked keys are recognisable (and scannable).
pub const TOKEN_PREFIX: &str = "sdq_";
/// Characters of the token (after the prefix) that find its row.
const LOOKUP_LEN: usize = 12;
/// Random bytes in a token: 288 bits.
const TOKEN_BYTES: usize = 36;

/// The owner of work submitted while auth is off.
pub const LOCAL_OWNER: &str = "local";

/// A key row. `secret_hash` never leaves the server; `webhook_secret` is shown to its
/// owner by `sdq keys`.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The token's public part, shown in listings as `sdq_<lookup>…`.
    pub lookup: String,
    #[serde(skip)]
    pub secret_hash: String,
    #[serde(skip)]
    pub webhook_secret: String,
    pub admin: bool,
    /// Most queued + running jobs at once; `None` is unlimited.
    pub max_queued: Option<i64>,
    /// Requests per minute (a token bucket of that size); `None` is unlimited.
    pub rate_per_min: Option<i64>,
    /// Days finished jobs of this key are kept; `None` follows the server's `--retain-days`.
    pub retain_days: Option<f64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl ApiKey {
    /// The owner string of everything this key creates.
    pub fn owner(&self) -> String {
        self.id.to_string()
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// What `sdq keys create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub name: String,
    pub admin: bool,
    pub max_queued: Option<i64>,
    pub rate_per_min: Option<i64>,
    pub retain_days: Option<f64>,
}

/// A freshly issued key: the row to store and the token, which is shown once.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub token: String,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

fn hash_hex(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a new key: a random token, its hash, and a webhook signing secret.
pub fn issue(new: NewApiKey, now_ms: i64) -> IssuedKey {
    let token = format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>())
    );
    let lookup = token[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + LOOKUP_LEN].to_string();
    let key = ApiKey {
        id: Uuid::now_v7(),
        name: new.name,
        lookup,
        secret_hash: hash_hex(&token),
        // Standard Webhooks secrets are `whsec_` + base64 of the HMAC key.
        webhook_secret: format!("whsec_{}", STANDARD.encode(random_bytes::<24>())),
        admin: new.admin,
        max_queued: new.max_queued,
        rate_per_min: new.rate_per_min,
        retain_days: new.retain_days,
        created_at: now_ms,
        revoked_at: None,
        last_used_at: None,
    };
    IssuedKey { key, token }
}

/// The lookup part of a well-formed token, or `None` for anything that cannot be one.
pub fn lookup_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let well_formed = rest.len() == URL_SAFE_NO_PAD.encode([0u8; TOKEN_BYTES]).len()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| &rest[..LOOKUP_LEN])
}

/// Whether `token` is the one `key` was issued with (constant time in the hash).
pub fn verify(token: &str, key: &ApiKey) -> bool {
    let got = hash_hex(token);
    got.as_bytes().ct_eq(key.secret_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let issued = issue(
            NewApiKey {
                name: "ci".into(),
                ..Default::default()
            },
            0,
        );
        let token = &issued.token;
        assert!(token.starts_with("sdq_"));
        assert_eq!(token.len(), 4 + 48);
        assert_eq!(lookup_of(token), Some(issued.key.lookup.as_str()));
        assert!(verify(token, &issued.key));
        assert!(!issued.key.secret_hash.contains(&token[4..]));
        let mut other = token.clone();
        other.replace_range(40..41, if &token[40..41] == "A" { "B" } else { "A" });
        assert!(!verify(&other, &issued.key));
        assert!(issued.key.webhook_secret.starts_with("whsec_"));
        let second = issue(NewApiKey::default(), 0);
        assert_ne!(second.token, issued.token);
    }

    #[test]
    fn malformed_tokens_have_no_lookup() {
        for bad in [
            "",
            "sdq_",
            "sdq_short",
            "Bearer x",
            "sk-abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdef",
            "sdq_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(lookup_of(bad), None, "{bad}");
        }
    }
}
