//! Returning freed heap to the operating system after bulk intake.
//!
//! A 100,000-recipient request allocates its JSON, the parsed recipients, the spool
//! records, the response and the `accepted` events for a moment, among the deliveries that
//! stay queued. glibc keeps what those transients freed mapped (in each thread's arena), so
//! after a big campaign the process could hold twice the memory its queues need. Intake
//! counts the recipients it accepted; a task looks every few seconds and, after enough
//! intake, asks glibc (`malloc_trim`) to give free pages back — when at least [`MIN_FREE`]
//! is free: a smaller trim would cost page faults for little. [`configure`] also caps
//! glibc's arenas and fixes its mmap threshold, so less is stranded to begin with.
//! With another allocator, all of this does nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the task looks.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Recipients accepted since the last trim that make the next one worth it.
pub const THRESHOLD: u64 = 20_000;
/// Free heap below this is left alone: giving back a little costs page faults when the
/// delivery that follows allocates again.
pub const MIN_FREE: u64 = 64 << 20;

/// Intake's count of recipients accepted since the last trim.
#[derive(Debug, Default)]
pub struct Reclaim {
    accepted: AtomicU64,
    trims: AtomicU64,
    /// A trim after bulk intake was done: one more once intake is quiet, for what the
    /// last requests freed after it (responses, the log writer's batches).
    after_bulk: AtomicBool,
    /// `accepted` at the previous look (unchanged = quiet).
    seen: AtomicU64,
}

impl Reclaim {
    pub fn new() -> Arc<Reclaim> {
        Arc::new(Reclaim::default())
    }

    pub fn accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// Trims asked for so far (each gives memory back only when [`MIN_FREE`] is free).
    pub fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }

    /// Trim now if enough was accepted since the last time, or once more when intake has
    /// gone quiet after such a trim; true when it asked for one. (A count racing the
    /// reset may be lost: this is a heuristic, not an account.)
    pub fn tick(&self) -> bool {
        let n = self.accepted.load(Ordering::Relaxed);
        let before = self.seen.swap(n, Ordering::Relaxed);
        if n >= THRESHOLD {
            self.accepted.store(0, Ordering::Relaxed);
            self.seen.store(0, Ordering::Relaxed);
            self.after_bulk.store(true, Ordering::Relaxed);
        } else if !(n == before && self.after_bulk.swap(false, Ordering::Relaxed)) {
            return false;
        }
        trim();
        self.trims.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The task: a look every [`INTERVAL`] until shutdown (the trim runs on a blocking
    /// thread: it walks every arena).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.tick()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Allocations from this size up get their own mapping (glibc's default starts at 128 KiB
/// and rises with every large free, up to 32 MiB).
pub const MMAP_THRESHOLD: i32 = 256 << 10;

/// Cap glibc's malloc arenas (it makes up to eight per core, one per thread that meets
/// contention), so memory freed by one worker thread serves the others instead of staying
/// parked in that thread's arena. Once per process, before the engine allocates much.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes the allocator's tuning.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
                // a big request's buffers (its JSON, parsed recipients, response) are mapped
                // and unmapped on their own instead of raising the threshold and landing
                // among the queues' long-lived allocations
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let free = unsafe { libc::mallinfo2() }.fordblks as u64;
    if free < MIN_FREE {
        return;
    }
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_enough_intake_and_once_more_when_quiet() {
        let r = Reclaim::default();
        assert!(!r.tick());
        r.accepted(THRESHOLD - 1);
        assert!(!r.tick());
        r.accepted(1);
        assert!(r.tick());
        assert_eq!(r.trims(), 1);
        // intake stopped: one final trim, then nothing until the next bulk
        assert!(r.tick());
        assert!(!r.tick());
        assert_eq!(r.trims(), 2);
        // a trickle after a bulk trim postpones the final one until quiet
        r.accepted(THRESHOLD);
        assert!(r.tick());
        r.accepted(5);
        assert!(!r.tick());
        assert_eq!(r.trims(), 3);
        assert!(r.tick());
        assert!(!r.tick());
        assert_eq!(r.trims(), 4);
    }
}
