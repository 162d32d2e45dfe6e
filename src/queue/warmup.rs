//! IP warm-up schedules: a new source follows a day-by-day schedule (level and daily cap).
//! Mail over a warming source's cap overflows to the pool's other sources; the day advances
//! only after a day that sent mail cleanly (bounce and deferral ratios below the limits).

use super::{Inner, Scheduler};
use crate::rules::Level;
use serde::{Deserialize, Serialize};

/// One day of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub level: Level,
    pub daily_cap: u64,
}

/// Where a source is in its schedule (kept in the spool across restarts).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WarmState {
    /// Index of the current step (0 = day 1).
    pub step: usize,
    /// Clock day (ms / 86,400,000) the counters belong to.
    pub day: u64,
    /// Deliveries assigned to the source today.
    pub sent: u64,
    pub bounced: u64,
    pub deferred: u64,
    /// The schedule is finished: the source runs at its configured level.
    pub done: bool,
}

/// Ratios above which a day does not count as clean.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bounce_ratio: f64,
    pub max_deferral_ratio: f64,
}

impl WarmState {
    /// Roll over to `today` if the day changed (advancing after a clean day).
    pub fn roll(&mut self, today: u64, steps: usize, limits: Limits) {
        if today == self.day {
            return;
        }
        if self.day != 0 && self.sent > 0 {
            let b = self.bounced as f64 / self.sent as f64;
            let d = self.deferred as f64 / self.sent as f64;
            if b <= limits.max_bounce_ratio && d <= limits.max_deferral_ratio {
                self.step += 1;
                if self.step >= steps {
                    self.done = true;
                }
            }
        }
        self.day = today;
        self.sent = 0;
        self.bounced = 0;
        self.deferred = 0;
    }
}

/// The level and whether the cap is reached, for a source with a schedule.
pub fn current(steps: &[Step], st: &WarmState) -> Option<(Level, bool)> {
    if st.done || steps.is_empty() {
        return None;
    }
    let s = &steps[st.step.min(steps.len() - 1)];
    Some((s.level, st.sent >= s.daily_cap))
}

const DAY_MS: u64 = 86_400_000;

/// How often warm-up progress is written to the spool (and once more at shutdown).
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn meta_key(source: &str) -> String {
    format!("warmup:{source}")
}

/// Put back the warm-up progress saved in the spool (a source's day, today's counters).
pub fn load(
    sched: &Scheduler,
    spool: &crate::spool::Spool,
) -> Result<(), crate::spool::SpoolError> {
    let mut saved = Vec::new();
    for (name, _) in sched.warm_snapshot() {
        if let Some(json) = spool.meta_get(&meta_key(&name))? {
            match serde_json::from_str::<WarmState>(&json) {
                Ok(st) => saved.push((name, st)),
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "saved warm-up state unreadable; the source starts at day 1")
                }
            }
        }
    }
    sched.restore_warm(saved);
    Ok(())
}

/// Keep the warm-up progress in the spool: what changed, every [`SAVE_EVERY`] and at
/// shutdown, so a restart does not send a warming IP back to day 1.
pub async fn keep(
    sched: std::sync::Arc<Scheduler>,
    spool: crate::spool::Spool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut written: std::collections::HashMap<String, WarmState> = Default::default();
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = shutdown.changed() => true,
        };
        let changed: Vec<(String, WarmState)> = sched
            .warm_snapshot()
            .into_iter()
            .filter(|(n, st)| written.get(n) != Some(st))
            .collect();
        if !changed.is_empty() {
            let sp = spool.clone();
            let todo = changed.clone();
            let res = tokio::task::spawn_blocking(move || {
                for (name, st) in &todo {
                    let json = serde_json::to_string(st).unwrap_or_default();
                    sp.meta_set(&meta_key(name), &json)?;
                }
                Ok::<(), crate::spool::SpoolError>(())
            })
            .await;
            match res {
                Ok(Ok(())) => written.extend(changed),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot save warm-up progress"),
                Err(e) => tracing::error!(error = %e, "warm-up saver failed"),
            }
        }
        if stop {
            return;
        }
    }
}

impl Scheduler {
    /// The warm-up level of source `i` today, if it follows a schedule.
    pub(super) fn warm_level(g: &Inner, i: usize) -> Option<Level> {
        let src = g.sources.get(i)?;
        current(&src.warmup, g.warm.get(i)?).map(|(l, _)| l)
    }

    /// Roll every warm-up state to today; true for sources whose daily cap is reached.
    pub(super) fn warm_capped(&self, g: &mut Inner) -> Vec<bool> {
        let today = self.clock.now_ms() / DAY_MS;
        let limits = g.warm_limits;
        let mut out = Vec::with_capacity(g.sources.len());
        for (i, src) in g.sources.iter().enumerate() {
            let Some(st) = g.warm.get_mut(i) else {
                out.push(false);
                continue;
            };
            if src.warmup.is_empty() {
                out.push(false);
                continue;
            }
            st.roll(today, src.warmup.len(), limits);
            out.push(current(&src.warmup, st).is_some_and(|(_, capped)| capped));
        }
        out
    }

    /// Count a bounce or deferral against the warm-up day of the queue's source.
    pub fn note_result(&self, qid: Option<u64>, result: &str) {
        let Some(qid) = qid else { return };
        let mut g = self.lock();
        let Some(src) = g.queues.get(&qid).map(|q| q.source) else {
            return;
        };
        if let Some(w) = g.warm.get_mut(src) {
            match result {
                "bounced" => w.bounced += 1,
                "deferred" => w.deferred += 1,
                _ => {}
            }
        }
    }

    /// The warm-up state of every source that has a schedule, by source name (what the
    /// engine keeps in the spool so a restart does not send an IP back to day 1).
    pub fn warm_snapshot(&self) -> Vec<(String, WarmState)> {
        let g = self.lock();
        g.sources
            .iter()
            .zip(g.warm.iter())
            .filter(|(s, _)| !s.warmup.is_empty())
            .map(|(s, w)| (s.name.clone(), w.clone()))
            .collect()
    }

    /// Take back saved warm-up states; sources no longer configured (or without a schedule)
    /// are ignored.
    pub fn restore_warm(&self, saved: Vec<(String, WarmState)>) {
        let mut g = self.lock();
        for (name, st) in saved {
            let Some(i) = g
                .sources
                .iter()
                .position(|s| s.name == name && !s.warmup.is_empty())
            else {
                continue;
            };
            if let Some(w) = g.warm.get_mut(i) {
                *w = st;
            }
        }
    }

    /// Warm-up progress of every source that has a schedule.
    pub fn warmup_status(&self) -> Vec<serde_json::Value> {
        let g = self.lock();
        g.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.warmup.is_empty())
            .map(|(i, s)| {
                let st = g.warm.get(i).cloned().unwrap_or_default();
                let step = s.warmup.get(st.step.min(s.warmup.len() - 1));
                serde_json::json!({
                    "source": s.name, "day": st.step + 1, "days": s.warmup.len(), "done": st.done,
                    "level": step.map(|x| x.level.as_str()), "daily_cap": step.map(|x| x.daily_cap),
                    "sent_today": st.sent, "bounced_today": st.bounced, "deferred_today": st.deferred,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_after_clean_days() {
        let steps = vec![
            Step {
                level: Level::Slow,
                daily_cap: 10,
            },
            Step {
                level: Level::Normal,
                daily_cap: 100,
            },
        ];
        let lim = Limits {
            max_bounce_ratio: 0.05,
            max_deferral_ratio: 0.2,
        };
        let mut st = WarmState::default();
        st.roll(1, 2, lim);
        assert_eq!(current(&steps, &st), Some((Level::Slow, false)));
        st.sent = 10;
        assert_eq!(
            current(&steps, &st),
            Some((Level::Slow, true)),
            "cap reached"
        );
        st.bounced = 3; // a dirty day: stays on day 1
        st.roll(2, 2, lim);
        assert_eq!(st.step, 0);
        st.sent = 10;
        st.roll(3, 2, lim); // clean day: day 2
        assert_eq!(current(&steps, &st), Some((Level::Normal, false)));
        st.sent = 50;
        st.roll(4, 2, lim); // clean: schedule done
        assert_eq!(current(&steps, &st), None);
        st.roll(5, 2, lim);
        assert_eq!(current(&steps, &st), None);
    }
}
