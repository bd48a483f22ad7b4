//! Booting with retries: exponential backoff with full jitter, only for transient failures.

use std::time::Duration;

use rand::Rng;

use crate::error::BootError;
use crate::registry::Registry;
use crate::vm::{Vm, VmSpec};

/// How hard to retry a failed boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = one attempt only).
    pub max_retries: u32,
    /// Ceiling of the first delay; doubles each retry.
    pub base_delay: Duration,
    /// Cap on any single delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before retry number `retry` (0-based):
    /// `min(max_delay, base_delay × 2^retry)`, without overflow.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// Full jitter: uniform in `[0, ceiling(retry)]`, so that many callers failing at once
    /// (e.g. a host under memory pressure) do not retry in lockstep.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return ceiling;
        }
        rng.gen_range(Duration::ZERO..=ceiling)
    }
}

/// Boots, retrying [`BootError::is_transient`] failures. Returns the VM and how many
/// retries it took; the last error when every attempt failed or the error is permanent.
pub async fn boot_with_retry(
    spec: &VmSpec,
    registry: &Registry,
    policy: &RetryPolicy,
) -> Result<(Vm, u32), BootError> {
    let mut retry = 0;
    loop {
        match Vm::boot(spec, registry).await {
            Ok(vm) => return Ok((vm, retry)),
            Err(e) if e.is_transient() && retry < policy.max_retries => {
                let delay = policy.delay(retry, &mut rand::thread_rng());
                tracing::warn!(attempt = retry + 1, ?delay, error = %e, "VM boot failed; retrying");
                tokio::time::sleep(delay).await;
                retry += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_then_cap() {
        let p = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let c: Vec<u128> = (0..6).map(|r| p.ceiling(r).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.ceiling(40),
            Duration::from_secs(1),
            "no overflow on large retry counts"
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jittered_delays_stay_within_bounds() {
        let p = RetryPolicy::default();
        let mut rng = rand::thread_rng();
        for r in 0..10 {
            for _ in 0..200 {
                assert!(p.delay(r, &mut rng) <= p.ceiling(r));
            }
        }
        let zero = RetryPolicy {
            max_retries: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        assert_eq!(zero.delay(3, &mut rng), Duration::ZERO);
    }
}
