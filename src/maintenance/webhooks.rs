//! The webhook deliverer: posts due deliveries, signed as Standard Webhooks do, and
//! records how each attempt ended.
//!
//! Every process may run it: deliveries are claimed with `SKIP LOCKED` (PostgreSQL) or
//! behind the single writer (SQLite), and a claim hides a row for longer than an attempt
//! can take, so two deliverers never post the same attempt. A process that dies
//! mid-attempt leaves the row to be claimed again after that lease; receivers see the
//! same `webhook-id` and deduplicate, as Standard Webhooks expects.
//!
//! The body is the job as `GET /v1/jobs/{id}` shows it (without its `webhooks` list),
//! fixed at the first attempt so that every retry sends the same bytes. Failed attempts
//! (no answer, or anything but 2xx) are retried with exponential backoff and jitter until
//! `retry_for` has passed since the event, then the delivery is marked failed. Targets the
//! SSRF guard refuses fail at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::Instrument;

use super::signature;
use super::MaintenanceError;
use crate::net_guard::{self, Allowlist, Refused};
use crate::queue::webhooks::{AttemptOutcome, Delivery};
use crate::queue::{JobStore, Scope};

/// Deliveries claimed (and posted concurrently) at a time.
const BATCH: i64 = 16;
/// Bytes of a receiver's answer that are read (for the error message); the rest is
/// dropped unread.
const MAX_RESPONSE_BYTES: usize = 2048;
/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// How the deliverer behaves (`--webhook-*` flags).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How often due deliveries are looked for.
    pub interval: Duration,
    /// The wait after the first failed attempt; it doubles with each further one.
    pub retry_base: Duration,
    /// How long after its event a delivery is retried before it is marked failed.
    pub retry_for: Duration,
    pub connect_timeout: Duration,
    /// The whole attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Addresses the SSRF guard lets through besides public ones.
    pub allow: Arc<Allowlist>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(10),
            retry_for: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            allow: Arc::default(),
        }
    }
}

impl DeliverySettings {
    /// How long a claim hides a delivery: longer than any attempt can take.
    fn lease(&self) -> Duration {
        self.connect_timeout + self.timeout + Duration::from_secs(30)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The wait before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, ±20 % jitter
/// so that many deliveries failing together do not come back together.
pub fn backoff(base: Duration, attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 30) as u32 - 1;
    let delay = base.saturating_mul(1u32 << exp.min(20)).min(MAX_DELAY);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let jitter = 0.8 + 0.4 * (u32::from_le_bytes(r) as f64 / u32::MAX as f64);
    delay.mul_f64(jitter)
}

/// One pass: claims due deliveries and attempts them until none is due.
pub async fn pass(
    store: &Arc<dyn JobStore>,
    settings: &DeliverySettings,
) -> Result<usize, MaintenanceError> {
    let mut attempted = 0;
    loop {
        let claimed = store.claim_deliveries(BATCH, settings.lease()).await?;
        let n = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|d| {
            let span = tracing::info_span!("webhook", job_id = %d.job_id, webhook_id = %d.message_id(), event = d.event.as_str());
            async move {
                let outcome = attempt(store.as_ref(), settings, &d).await;
                record(store.as_ref(), &d, outcome).await;
            }
            .instrument(span)
        }))
        .await;
        attempted += n;
        if (n as i64) < BATCH {
            return Ok(attempted);
        }
    }
}

/// Where every attempt's outcome lands: the store, the log and the
/// `sdq_webhook_deliveries_total{outcome}` counter.
async fn record(store: &dyn JobStore, d: &Delivery, outcome: AttemptOutcome) {
    match &outcome {
        AttemptOutcome::Delivered { status } => {
            crate::observability::webhook_delivery("delivered");
            tracing::info!(attempt = d.attempts, status, "webhook delivered")
        }
        AttemptOutcome::Retry { error, after, .. } => {
            crate::observability::webhook_delivery("retrying");
            tracing::info!(attempt = d.attempts, %error, retry_in_ms = after.as_millis() as u64, "webhook attempt failed; will retry")
        }
        AttemptOutcome::Failed { error, .. } => {
            crate::observability::webhook_delivery("failed");
            tracing::warn!(attempt = d.attempts, %error, "webhook delivery failed for good")
        }
    }
    match store.finish_delivery(d.id, d.attempts, &outcome).await {
        Ok(true) => {}
        // Claimed again after our lease ran out; that attempt's outcome wins.
        Ok(false) => tracing::warn!("webhook attempt outlived its claim; outcome dropped"),
        // The row stays claimed; it is attempted again when the claim runs out.
        Err(e) => tracing::warn!(error = %e, "webhook outcome not recorded"),
    }
}

/// Retry later, or give up if that would be past `retry_for`.
fn retry_or_fail(
    settings: &DeliverySettings,
    d: &Delivery,
    error: String,
    status: Option<u16>,
) -> AttemptOutcome {
    let after = backoff(settings.retry_base, d.attempts);
    let age = Duration::from_millis((now_ms() - d.created_at).max(0) as u64);
    if age + after > settings.retry_for {
        AttemptOutcome::Failed {
            error: format!(
                "gave up after {} attempts over {}s: {error}",
                d.attempts,
                age.as_secs()
            ),
            status,
        }
    } else {
        AttemptOutcome::Retry {
            error,
            status,
            after,
        }
    }
}

/// The body of a delivery: the one fixed at its first attempt, or the job as it is now.
async fn body(store: &dyn JobStore, d: &Delivery) -> Result<Option<String>, MaintenanceError> {
    if let Some(payload) = &d.payload {
        return Ok(Some(payload.clone()));
    }
    let Some(job) = store.get(d.job_id, &Scope::All).await? else {
        return Ok(None);
    };
    let view = crate::view::job_view(store, &job, &Scope::All).await?;
    Ok(Some(
        store.set_delivery_payload(d.id, &view.to_string()).await?,
    ))
}

/// One attempt, start to end.
async fn attempt(
    store: &dyn JobStore,
    settings: &DeliverySettings,
    d: &Delivery,
) -> AttemptOutcome {
    let failed = |error: String| AttemptOutcome::Failed {
        error,
        status: None,
    };
    let body = match body(store, d).await {
        Ok(Some(body)) => body,
        Ok(None) => return failed("the job no longer exists".into()),
        Err(e) => return retry_or_fail(settings, d, format!("cannot build the body: {e}"), None),
    };
    let key = match store.webhook_secret(&d.owner).await {
        Ok(Some(secret)) => match signature::secret_key(&secret) {
            Ok(key) => key,
            Err(e) => return failed(e),
        },
        Ok(None) => {
            return failed("the job's API key no longer exists; nothing to sign with".into())
        }
        Err(e) => return retry_or_fail(settings, d, format!("cannot read the secret: {e}"), None),
    };
    let url = match net_guard::parse_url(&d.url) {
        Ok(url) => url,
        Err(e) => return failed(e.to_string()),
    };
    let target = match net_guard::resolve(&url, &settings.allow).await {
        Ok(target) => target,
        // DNS may come back; a refused address will not become acceptable.
        Err(e @ Refused::Unresolvable { .. }) => {
            return retry_or_fail(settings, d, e.to_string(), None)
        }
        Err(e) => return failed(format!("refused by the SSRF guard: {e}")),
    };
    // A client per attempt, pinned to the addresses just vetted: it never resolves the
    // name again, so a changed DNS answer cannot send the request elsewhere. No proxy
    // (it would resolve the name itself) and no redirects (they could point inward).
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("sdq-webhooks/", env!("CARGO_PKG_VERSION")));
    if matches!(url.host(), Some(url::Host::Domain(_))) {
        client = client.resolve_to_addrs(&target.host, &target.addrs);
    }
    let client = match client.build() {
        Ok(client) => client,
        Err(e) => return retry_or_fail(settings, d, format!("HTTP client: {e}"), None),
    };
    let id = d.message_id();
    let timestamp = now_ms() / 1000;
    let signature = signature::sign(&key, &id, timestamp, body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return retry_or_fail(settings, d, describe(&e), None),
    };
    let status = response.status();
    if status.is_success() {
        return AttemptOutcome::Delivered {
            status: status.as_u16(),
        };
    }
    // A little of the answer makes the error useful; more is not read.
    let mut snippet = Vec::new();
    while snippet.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
            _ => break,
        }
    }
    snippet.truncate(MAX_RESPONSE_BYTES);
    let text = String::from_utf8_lossy(&snippet);
    let text = text.trim();
    let mut error = format!("HTTP {}", status.as_u16());
    if status.is_redirection() {
        error.push_str(" (redirects are not followed)");
    }
    if !text.is_empty() {
        error.push_str(": ");
        error.extend(text.chars().take(200));
    }
    retry_or_fail(settings, d, error, Some(status.as_u16()))
}

/// A transport error with its causes, which say what actually went wrong.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = std::error::Error::source(cause);
    }
    text
}

/// Runs a pass every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn JobStore>,
    settings: DeliverySettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = pass(&store, &settings).await {
            tracing::warn!(error = %e, "webhook pass failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(10);
        for attempts in 1..=12 {
            let nominal = base.saturating_mul(1 << (attempts - 1)).min(MAX_DELAY);
            let got = backoff(base, attempts);
            assert!(got >= nominal.mul_f64(0.79), "{attempts}: {got:?}");
            assert!(got <= nominal.mul_f64(1.21), "{attempts}: {got:?}");
        }
        // About an hour of retries at the defaults: the sum of the nominal waits.
        let total: Duration = (1..=10)
            .map(|a| base.saturating_mul(1 << (a - 1)).min(MAX_DELAY))
            .sum();
        assert!(total > Duration::from_secs(3000), "{total:?}");
    }
}
