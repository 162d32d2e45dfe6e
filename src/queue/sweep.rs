//! Taking deliveries out of the queues by predicate (cancel, purge) and the sweep that
//! expires deliveries waiting in throttled or suspended queues or parked.

use super::{Delivery, Inner, Scheduler};
use std::collections::VecDeque;

impl Scheduler {
    /// Take every held delivery matching `pred` (timer, DNS wait, queues, parked) — used
    /// to cancel a campaign. They are counted in flight until settled.
    pub fn take_matching(&self, pred: impl Fn(&Delivery) -> bool) -> Vec<(Delivery, Option<u64>)> {
        let mut g = self.lock();
        let mut out = Vec::new();
        let keys: Vec<(u64, u64)> = g
            .timer
            .iter()
            .filter(|(_, d)| pred(d))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(d) = g.timer.remove(&k) {
                out.push((d, None));
            }
        }
        let mut n_pending = 0;
        for list in g.pending.values_mut() {
            let (take, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|d| pred(d));
            *list = keep;
            n_pending += take.len() as u64;
            out.extend(take.into_iter().map(|d| (d, None)));
        }
        g.pending_count -= n_pending;
        let mut n_parked = 0;
        for list in g.parked.values_mut() {
            let (take, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|d| pred(d));
            *list = keep;
            n_parked += take.len() as u64;
            out.extend(take.into_iter().map(|d| (d, None)));
        }
        g.parked_count -= n_parked;
        let mut n_ready = 0u64;
        for (qid, q) in g.queues.iter_mut() {
            for lane in [&mut q.transactional, &mut q.bulk] {
                let (take, keep): (VecDeque<_>, VecDeque<_>) =
                    lane.drain(..).partition(|d| pred(d));
                *lane = keep;
                q.in_flight += take.len() as u32;
                n_ready += take.len() as u64;
                out.extend(take.into_iter().map(|d| (d, Some(qid))));
            }
        }
        g.ready -= n_ready;
        g.in_flight += out.len() as u64;
        out
    }

    /// Expire deliveries waiting in ready queues (throttled or suspended paths) or parked
    /// (paused campaigns), and forget stale routes and unreachable marks.
    pub(super) fn sweep(&self, g: &mut Inner, now: u64) {
        let mut expired_parked = Vec::new();
        for list in g.parked.values_mut() {
            let (exp, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|d| d.expires_ms <= now);
            *list = keep;
            expired_parked.extend(exp);
        }
        g.parked.retain(|_, l| !l.is_empty());
        g.parked_count -= expired_parked.len() as u64;
        g.in_flight += expired_parked.len() as u64;
        for d in expired_parked {
            let _ = self.expired_tx.send((d, None));
        }
        let qids: Vec<u64> = g.queues.keys().collect();
        for qid in qids {
            let Some(q) = g.queues.get_mut(&qid) else {
                continue;
            };
            let mut expired = Vec::new();
            for lane in [&mut q.transactional, &mut q.bulk] {
                if !lane.iter().any(|d| d.expires_ms <= now) {
                    continue;
                }
                let mut keep = VecDeque::with_capacity(lane.len());
                for d in lane.drain(..) {
                    if d.expires_ms <= now {
                        expired.push(d);
                    } else {
                        keep.push_back(d);
                    }
                }
                *lane = keep;
            }
            q.in_flight += expired.len() as u32;
            g.ready -= expired.len() as u64;
            g.in_flight += expired.len() as u64;
            for d in expired {
                let _ = self.expired_tx.send((d, Some(qid)));
            }
        }
        g.routes.retain(|_, r| r.until_ms > now);
        g.unreachable.retain(|_, until| *until > now);
    }
}
