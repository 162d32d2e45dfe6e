//! One clock for the whole engine, so tests can control time.
//!
//! `Clock::System` follows the wall clock; `Clock::Manual` only moves when a test calls
//! [`ManualClock::advance`]. Everything that waits for a time (retry timers, expiry,
//! throttles) goes through [`Clock::sleep_until`], never through `tokio::time` directly, so a
//! test can jump hours ahead while real sockets keep their real timeouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<ManualClock>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => write!(f, "Clock::System"),
            Clock::Manual(m) => write!(f, "Clock::Manual({})", m.now_ms()),
        }
    }
}

pub struct ManualClock {
    now: AtomicU64,
    tx: watch::Sender<u64>,
}

impl ManualClock {
    /// A manual clock starting at the current wall-clock time.
    pub fn new() -> Arc<ManualClock> {
        let now = system_ms();
        let (tx, _) = watch::channel(now);
        Arc::new(ManualClock {
            now: AtomicU64::new(now),
            tx,
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Move time forward and wake every sleeper whose time has come.
    pub fn advance(&self, d: Duration) {
        let n = self.now.fetch_add(d.as_millis() as u64, Ordering::SeqCst) + d.as_millis() as u64;
        self.tx.send_replace(n);
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    pub fn manual() -> (Clock, Arc<ManualClock>) {
        let m = ManualClock::new();
        (Clock::Manual(m.clone()), m)
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(m) => m.now_ms(),
        }
    }

    /// Sleep until the clock reads at least `at_ms`.
    pub async fn sleep_until(&self, at_ms: u64) {
        match self {
            Clock::System => {
                let now = system_ms();
                if at_ms > now {
                    tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
                }
            }
            Clock::Manual(m) => {
                let mut rx = m.tx.subscribe();
                loop {
                    if m.now_ms() >= at_ms {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    pub async fn sleep(&self, d: Duration) {
        let at = self.now_ms() + d.as_millis() as u64;
        self.sleep_until(at).await
    }
}

/// RFC 3339 timestamp (UTC, milliseconds) of a clock reading.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// RFC 5322 date for a `Date:` header.
pub fn rfc5322(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    let f = time::macros::format_description!(
        "[weekday repr:short], [day padding:none] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers() {
        let (clock, m) = Clock::manual();
        let start = clock.now_ms();
        let c2 = clock.clone();
        let h = tokio::spawn(async move { c2.sleep(Duration::from_secs(3600)).await });
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        m.advance(Duration::from_secs(3600));
        h.await.unwrap();
        assert_eq!(clock.now_ms(), start + 3_600_000);
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    }
}
