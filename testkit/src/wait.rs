//! Waiting for something another thread or process does, with a deadline instead of a fixed
//! sleep: a test is as fast as the system under it, and says what it waited for when it gives
//! up.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds or `timeout` passes; checks once more at the deadline.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    check()
}

/// Polls the async `check` until it returns `Some` or `limit` passes (tokio's clock, so a
/// test with paused time would advance through it).
pub async fn eventually_async<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_is_seen_and_one_that_never_does_times_out() {
        let start = Instant::now();
        let mut calls = 0;
        assert!(eventually(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert!(start.elapsed() < Duration::from_secs(1));
        let start = Instant::now();
        assert!(!eventually(Duration::from_millis(120), || false));
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn the_async_wait_returns_the_value_or_none_at_the_limit() {
        let mut calls = 0;
        let found = eventually_async(Duration::from_secs(5), || {
            calls += 1;
            let value = (calls == 2).then_some(calls);
            async move { value }
        })
        .await;
        assert_eq!(found, Some(2));
        let never: Option<()> =
            eventually_async(Duration::from_millis(120), || async { None }).await;
        assert_eq!(never, None);
    }
}
