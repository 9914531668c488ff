//! Waiting on the platform: the retry loop every request goes through (429, 5xx, connection
//! faults, with `Retry-After` honoured and a budget), and the poll of a long job (segment,
//! export and flow runs) until it ends or a deadline passes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::AepClient;
use crate::config::RetryPolicy;
use crate::error::IngestError;

impl AepClient {
    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent.
    pub(crate) async fn with_retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, IngestError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, IngestError>>,
    {
        self.with_retry_progress(what, || 0, op).await
    }

    /// Like [`Self::with_retry`], for work that can move forward between failures (a part
    /// resumed with `Range`): an attempt after which `progress()` has grown, and that did not
    /// end for being too slow, starts the budget again. So `max_attempts` and `max_elapsed`
    /// bound the attempts and the time spent *without progress*, and a large part on a link
    /// that is cut every minute still finishes.
    pub(crate) async fn with_retry_progress<T, F, Fut>(
        &self,
        what: &str,
        progress: impl Fn() -> u64,
        op: F,
    ) -> Result<T, IngestError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, IngestError>>,
    {
        self.retry_if(
            what,
            self.options.retry,
            IngestError::is_retryable,
            progress,
            op,
        )
        .await
    }

    /// The retry loop: `op` is repeated while its error is one `retryable` takes (honouring
    /// a `Retry-After`, else backing off), within `policy`'s budget, which `progress` restarts.
    pub(crate) async fn retry_if<T, F, Fut>(
        &self,
        what: &str,
        policy: RetryPolicy,
        retryable: impl Fn(&IngestError) -> bool,
        progress: impl Fn() -> u64,
        mut op: F,
    ) -> Result<T, IngestError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, IngestError>>,
    {
        let mut started = Instant::now();
        let mut attempt = 0u32;
        let mut total_attempts = 0u32;
        let mut done = progress();
        loop {
            attempt = attempt.saturating_add(1);
            total_attempts = total_attempts.saturating_add(1);
            let err = match op(total_attempts).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !retryable(&err) {
                return Err(err);
            }
            let now_done = progress();
            if now_done > done && !matches!(err, IngestError::TooSlow { .. }) {
                tracing::debug!(
                    what,
                    bytes = now_done - done,
                    "the attempt made progress; the retry budget starts again"
                );
                attempt = 1;
                started = Instant::now();
            }
            done = now_done;
            let elapsed = started.elapsed();
            let remaining = policy.max_elapsed.saturating_sub(elapsed);
            if let Some(asked) = err.retry_after()
                && asked > remaining
            {
                return Err(IngestError::RetryAfterTooLong {
                    url: what.to_string(),
                    asked,
                    remaining,
                    source: Box::new(err),
                });
            }
            let delay = err
                .retry_after()
                .unwrap_or_else(|| self.backoff(&policy, attempt));
            if attempt >= policy.max_attempts || elapsed.saturating_add(delay) > policy.max_elapsed
            {
                return Err(IngestError::GaveUp {
                    url: what.to_string(),
                    attempts: total_attempts,
                    elapsed,
                    source: Box::new(err),
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "scoreland::retry", what, attempt = total_attempts, delay_ms = delay.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Exponential backoff with full jitter.
    fn backoff(&self, policy: &RetryPolicy, attempt: u32) -> Duration {
        let exp = policy
            .initial_backoff
            .saturating_mul(1u32 << (attempt - 1).min(20))
            .min(policy.max_backoff);
        // splitmix64 step: jitter needs spread, not secrecy.
        let mut z = self
            .jitter
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        exp.mul_f64(0.5 + fraction / 2.0)
    }
}

/// How a job poll ended.
#[derive(Debug)]
pub enum Polled<T> {
    /// The job is done (by the poll's own test).
    Done(T),
    /// The wait ran out first; the job as last seen.
    TimedOut(T),
}

/// How often a job is looked at: `first` apart, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollEvery {
    pub first: Duration,
    pub max: Duration,
}

impl PollEvery {
    /// For segment and export jobs, which take minutes: from a second to `max`.
    pub fn jobs(max: Duration) -> Self {
        PollEvery {
            first: Duration::from_secs(1),
            max,
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1 << attempt.min(16))
            .min(self.max)
    }
}

/// Polls a job, `every` apart, until `done` says it ended or `timeout` passes, calling
/// `progress` with each look and the time waited.
pub async fn poll_job<T, Fut>(
    timeout: Duration,
    every: PollEvery,
    mut fetch: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
    mut progress: impl FnMut(&T, Duration),
) -> Result<Polled<T>, IngestError>
where
    Fut: std::future::Future<Output = Result<T, IngestError>>,
{
    let started = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        let job = fetch().await?;
        if done(&job) {
            return Ok(Polled::Done(job));
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Ok(Polled::TimedOut(job));
        }
        progress(&job, waited);
        tokio::time::sleep(every.delay(attempt).min(timeout - waited)).await;
        attempt += 1;
    }
}
