//! The auth check: who is calling, from the `Authorization` header.
//!
//! Handlers that act for a client take a [`Caller`]; extracting it checks the key (and its
//! request rate) before the handler runs, so a route cannot act without one. Ownership is
//! then enforced by the store: every lookup takes `caller.scope()`.
//!
//! Keys are read from the job database through a cache of a couple of seconds: a revoked
//! key stops working on every API process within that time, without a database round trip
//! per request for keys that are used often.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::{ApiError, AppState};
use crate::queue::keys::{self, LOCAL_OWNER};
use crate::queue::{ApiKey, JobStore, Scope};

/// How long a key lookup is trusted before the database is asked again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(2);
/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Priorities above this need an admin key.
pub const USER_MAX_PRIORITY: i32 = 10;

/// Whether requests without a key are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No key needed (loopback binds only); a key that is sent is still checked.
    Off,
    /// Every request that touches jobs or images needs a valid key.
    Required,
}

/// The party a request acts for.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off and no key was sent: the machine's own user, who sees everything.
    Local,
    /// A valid, unrevoked key.
    Key(Arc<ApiKey>),
}

impl Caller {
    /// The owner recorded on what this caller creates.
    pub fn owner(&self) -> String {
        match self {
            Caller::Local => LOCAL_OWNER.to_string(),
            Caller::Key(key) => key.owner(),
        }
    }

    /// The rows this caller may see.
    pub fn scope(&self) -> Scope {
        match self {
            Caller::Local => Scope::All,
            Caller::Key(key) if key.admin => Scope::All,
            Caller::Key(key) => Scope::Owner(key.owner()),
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Local => true,
            Caller::Key(key) => key.admin,
        }
    }

    pub fn key(&self) -> Option<&ApiKey> {
        match self {
            Caller::Local => None,
            Caller::Key(key) => Some(key),
        }
    }

    /// Refuses callers that are not admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs an admin key".into()))
        }
    }
}

/// When a lookup was made, and the key it found (`None`: no such key).
type CachedKey = (Instant, Option<Arc<ApiKey>>);

/// Key checking shared by every handler: the mode and a short-lived cache of lookups.
pub struct Auth {
    pub mode: AuthMode,
    store: Arc<dyn JobStore>,
    cache: Mutex<HashMap<String, CachedKey>>,
    touched: Mutex<HashMap<uuid::Uuid, Instant>>,
}

impl Auth {
    pub fn new(mode: AuthMode, store: Arc<dyn JobStore>) -> Self {
        Self {
            mode,
            store,
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// The key a token names, if it is valid and not revoked.
    async fn key_for(&self, token: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let Some(lookup) = keys::lookup_of(token) else {
            return Ok(None);
        };
        let cached = {
            let cache = self.cache.lock().expect("key cache lock");
            cache
                .get(lookup)
                .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
                .map(|(_, key)| key.clone())
        };
        let key = match cached {
            Some(key) => key,
            None => {
                let key = self.store.key_by_lookup(lookup).await?.map(Arc::new);
                let mut cache = self.cache.lock().expect("key cache lock");
                if cache.len() > 10_000 {
                    // Guessed tokens must not grow the cache without bound.
                    cache.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
                }
                cache.insert(lookup.to_string(), (Instant::now(), key.clone()));
                key
            }
        };
        Ok(key.filter(|k| !k.is_revoked() && keys::verify(token, k)))
    }

    /// Records use of a key now and then (a write per request would be wasteful).
    async fn touch(&self, key: &ApiKey) {
        let due = {
            let mut touched = self.touched.lock().expect("touch lock");
            let due = touched
                .get(&key.id)
                .is_none_or(|at| at.elapsed() >= TOUCH_EVERY);
            if due {
                touched.insert(key.id, Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.store.touch_key(key.id).await {
                tracing::debug!(error = %e, "last_used_at not recorded");
            }
        }
    }

    /// Checks the request's credentials and the key's request rate. `allow_basic` also
    /// accepts HTTP Basic with the key as the password (for clients that only send that).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        allow_basic: bool,
    ) -> Result<Caller, ApiError> {
        let Some(token) = credentials(headers, allow_basic)? else {
            return match self.mode {
                AuthMode::Off => Ok(Caller::Local),
                AuthMode::Required => Err(ApiError::Unauthorized(
                    "an API key is required: send `Authorization: Bearer sdq_…` \
                     (create one with `sdq keys create NAME`)"
                        .into(),
                )),
            };
        };
        let key = self.key_for(&token).await?.ok_or_else(|| {
            ApiError::Unauthorized("the API key is not valid or has been revoked".into())
        })?;
        if let Some(per_min) = key.rate_per_min {
            if let Some(wait) = self.store.take_rate_token(&key.owner(), per_min).await? {
                return Err(ApiError::TooManyRequests {
                    code: "rate_limited",
                    message: format!("this key may make {per_min} requests per minute"),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        self.touch(&key).await;
        Ok(Caller::Key(key))
    }
}

/// The token a request carries, if any; a malformed `Authorization` header is a 401.
fn credentials(headers: &HeaderMap, allow_basic: bool) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::Unauthorized(if allow_basic {
            "Authorization must be `Bearer KEY` or HTTP Basic with the key as password".into()
        } else {
            "Authorization must be `Bearer KEY`".into()
        })
    };
    let value = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.trim().to_string()));
    }
    if allow_basic && scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (_, password) = decoded.split_once(':').ok_or_else(malformed)?;
        return Ok(Some(password.to_string()));
    }
    Err(malformed())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.authenticate(&parts.headers, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn credentials_come_from_bearer_or_basic_where_allowed() {
        assert_eq!(credentials(&HeaderMap::new(), false).unwrap(), None);
        assert_eq!(
            credentials(&with("Bearer sdq_x"), false)
                .unwrap()
                .as_deref(),
            Some("sdq_x")
        );
        // "user:sdq_x"
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "user:sdq_x")
        );
        assert_eq!(
            credentials(&with(&basic), true).unwrap().as_deref(),
            Some("sdq_x")
        );
        assert!(credentials(&with(&basic), false).is_err());
        assert!(credentials(&with("Token abc"), false).is_err());
        assert!(credentials(&with("Bearer"), false).is_err());
    }
}
