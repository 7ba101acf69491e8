//! Per-key limits (keys are identified by their label, see [`super::auth`]): the most requests
//! in flight (`--key-max-concurrent`) and a token budget per minute (`--key-tokens-per-minute`,
//! a token bucket charged prompt tokens + max_tokens at admission). Refusals are HTTP 429 with
//! `Retry-After`, naming the limit, the key's label and the flag that raises it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::ApiError;

/// One key's counters.
#[derive(Debug)]
struct KeyState {
    in_flight: u32,
    /// Tokens left in the bucket (negative: debt from a request larger than the bucket).
    tokens: f64,
    last_refill: Instant,
}

/// The per-key limits and their state.
#[derive(Debug)]
pub struct KeyLimits {
    max_concurrent: u32,
    tokens_per_minute: u64,
    state: Mutex<HashMap<Arc<str>, KeyState>>,
}

/// Holds one of a key's concurrent-request slots until dropped.
#[derive(Debug)]
pub struct ConcurrencyGuard {
    limits: Arc<KeyLimits>,
    label: Arc<str>,
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        if let Some(s) = self.limits.lock().get_mut(&self.label) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

fn count_rejection(limit: &'static str, label: &str) {
    metrics::counter!("genarm_limit_rejections_total", "limit" => limit, "key" => label.to_string())
        .increment(1);
}

impl KeyLimits {
    /// Limits of `max_concurrent` requests in flight and `tokens_per_minute` tokens per key
    /// (0: no limit).
    pub fn new(max_concurrent: u32, tokens_per_minute: u64) -> Self {
        KeyLimits { max_concurrent, tokens_per_minute, state: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, KeyState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<Arc<str>, KeyState>,
        label: &Arc<str>,
        now: Instant,
    ) -> &'a mut KeyState {
        let full = self.tokens_per_minute as f64;
        map.entry(Arc::clone(label)).or_insert(KeyState { in_flight: 0, tokens: full, last_refill: now })
    }

    /// Takes one of `label`'s concurrent-request slots (`None` when there is no limit), or a 429.
    pub fn acquire(self: &Arc<Self>, label: &Arc<str>) -> Result<Option<ConcurrencyGuard>, ApiError> {
        if self.max_concurrent == 0 {
            return Ok(None);
        }
        let mut map = self.lock();
        let s = self.entry(&mut map, label, Instant::now());
        if s.in_flight >= self.max_concurrent {
            count_rejection("concurrency", label);
            return Err(ApiError::RateLimited {
                code: "concurrency_limit_exceeded",
                message: format!(
                    "too many concurrent requests for API key `{label}`: it already has {} in flight, the \
                     limit per key (--key-max-concurrent); retry when one finishes, or ask the operator to \
                     raise --key-max-concurrent",
                    self.max_concurrent
                ),
                retry_after_secs: 1,
            });
        }
        s.in_flight += 1;
        Ok(Some(ConcurrencyGuard { limits: Arc::clone(self), label: Arc::clone(label) }))
    }

    /// Charges `cost` tokens to `label`'s bucket at `now`, or answers a 429 saying when the
    /// bucket will hold enough. The bucket holds at most one minute's budget and refills
    /// continuously; a request costing more than a full bucket is admitted when the bucket is
    /// full (leaving a debt), so that every request can eventually pass.
    pub fn charge_tokens(&self, label: &Arc<str>, cost: u64, now: Instant) -> Result<(), ApiError> {
        if self.tokens_per_minute == 0 {
            return Ok(());
        }
        let capacity = self.tokens_per_minute as f64;
        let rate = capacity / 60.0; // tokens per second
        let mut map = self.lock();
        let s = self.entry(&mut map, label, now);
        let elapsed = now.saturating_duration_since(s.last_refill).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(capacity);
        s.last_refill = now;
        let cost_f = cost as f64;
        if s.tokens >= cost_f || s.tokens >= capacity {
            s.tokens -= cost_f;
            return Ok(());
        }
        let need = cost_f.min(capacity) - s.tokens;
        let retry_after_secs = ((need / rate).ceil() as u64).max(1);
        count_rejection("tokens_per_minute", label);
        Err(ApiError::RateLimited {
            code: "token_rate_limit_exceeded",
            message: format!(
                "token rate limit reached for API key `{label}`: this request needs {cost} tokens (prompt + \
                 max_tokens) and the key's budget of {} tokens per minute (--key-tokens-per-minute) has {} \
                 left; retry in {retry_after_secs} s, send a smaller max_tokens, or ask the operator to \
                 raise --key-tokens-per-minute",
                self.tokens_per_minute,
                s.tokens.max(0.0).floor() as u64
            ),
            retry_after_secs,
        })
    }
    /// Gives back `cost` tokens that [`KeyLimits::charge_tokens`] took for a request that was
    /// then refused before any work (queue full), so a refusal does not spend the key's budget.
    pub fn refund_tokens(&self, label: &Arc<str>, cost: u64) {
        if self.tokens_per_minute == 0 {
            return;
        }
        let capacity = self.tokens_per_minute as f64;
        if let Some(s) = self.lock().get_mut(label) {
            s.tokens = (s.tokens + cost as f64).min(capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn concurrency_is_limited_per_label_and_freed_on_drop() {
        let l = Arc::new(KeyLimits::new(2, 0));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let g1 = l.acquire(&a).unwrap();
        let _g2 = l.acquire(&a).unwrap();
        let e = l.acquire(&a).unwrap_err();
        match &e {
            ApiError::RateLimited { message, retry_after_secs, .. } => {
                assert!(message.contains("`a`") && message.contains("--key-max-concurrent"), "{message}");
                assert_eq!(*retry_after_secs, 1);
            }
            other => panic!("{other:?}"),
        }
        let _gb = l.acquire(&b).unwrap();
        drop(g1);
        l.acquire(&a).unwrap();
        assert!(Arc::new(KeyLimits::new(0, 0)).acquire(&a).unwrap().is_none());
    }

    #[test]
    fn the_token_bucket_refills_at_the_budget_rate() {
        // 600 tokens per minute = 10 per second.
        let l = KeyLimits::new(0, 600);
        let k: Arc<str> = Arc::from("k");
        let t0 = Instant::now();
        l.charge_tokens(&k, 500, t0).unwrap();
        l.charge_tokens(&k, 100, t0).unwrap();
        let e = l.charge_tokens(&k, 50, t0).unwrap_err();
        let ApiError::RateLimited { retry_after_secs, message, .. } = e else { panic!() };
        assert_eq!(retry_after_secs, 5, "50 tokens at 10/s");
        assert!(message.contains("--key-tokens-per-minute") && message.contains("50 tokens"), "{message}");
        assert!(l.charge_tokens(&k, 50, t0 + Duration::from_secs(4)).is_err());
        l.charge_tokens(&k, 50, t0 + Duration::from_secs(5) + Duration::from_millis(10)).unwrap();
        // Larger than the bucket: admitted once the bucket is full, leaving a debt.
        let t1 = t0 + Duration::from_secs(3600);
        l.charge_tokens(&k, 1000, t1).unwrap();
        let ApiError::RateLimited { retry_after_secs, .. } = l.charge_tokens(&k, 10, t1).unwrap_err() else {
            panic!()
        };
        assert_eq!(retry_after_secs, 41, "400 tokens of debt + 10 at 10/s");
        KeyLimits::new(0, 0).charge_tokens(&k, u64::MAX, t0).unwrap();
    }

    #[test]
    fn a_refund_restores_the_budget_up_to_the_bucket_size() {
        let l = KeyLimits::new(0, 600);
        let k: Arc<str> = "k".into();
        let t0 = Instant::now();
        l.charge_tokens(&k, 600, t0).unwrap();
        assert!(l.charge_tokens(&k, 100, t0).is_err());
        l.refund_tokens(&k, 100);
        l.charge_tokens(&k, 100, t0).unwrap();
        assert!(l.charge_tokens(&k, 1, t0).is_err());
        // A refund never overfills the bucket.
        l.refund_tokens(&k, 10_000);
        l.charge_tokens(&k, 600, t0).unwrap();
        assert!(l.charge_tokens(&k, 1, t0).is_err());
    }
}
