//! How long a job waits before its next attempt after a transient failure.

use std::time::Duration;

/// Exponential backoff (`base`, 2×, 4×, … capped at 5 min) with up to 25 % random jitter,
/// so that jobs that failed together do not all come back at the same instant.
pub fn backoff(attempt: i32, base: Duration) -> Duration {
    let factor = 1u32 << attempt.clamp(1, 20).saturating_sub(1);
    let capped = base.saturating_mul(factor).min(Duration::from_secs(300));
    let jitter_permille = (uuid::Uuid::new_v4().as_u128() % 250) as u32;
    capped + capped * jitter_permille / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let first = backoff(1, base);
        assert!(first >= Duration::from_secs(1) && first <= Duration::from_millis(1250));
        let third = backoff(3, base);
        assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(5));
        assert!(backoff(50, base) <= Duration::from_secs(375));
    }
}
