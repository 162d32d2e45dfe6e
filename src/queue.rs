//! The scheduler: a timer ordered by due time plus one ready queue per destination.
//!
//! Nothing here scans messages. A delivery waiting for a time (first attempt, retry) sits in
//! a B-tree keyed by `(due_ms, id)`; when due it moves to its destination's ready queue
//! (transactional ahead of bulk). Connection tasks pull from ready queues. Every queue keeps
//! its own counters (ready, waiting, in flight, connections, oldest, last reply) as they
//! change, so status is O(destinations) and a scheduling decision is O(log n).
//!
//! `max_age`/`expires_in` is enforced wherever a delivery waits: a retry is never scheduled
//! past its expiry (it wakes at the expiry instead), and both the timer and the ready queues
//! hand expired deliveries to the expiry channel instead of to a connection.

use crate::clock::Clock;
use crate::spool::{Delivery, Priority};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch, Notify};

#[derive(Default)]
struct DestQueue {
    transactional: VecDeque<Delivery>,
    bulk: VecDeque<Delivery>,
    /// Connections open or requested.
    connections: u32,
    /// Deliveries handed out and not yet settled.
    in_flight: u32,
    /// Deliveries of this destination in the timer.
    waiting: u32,
    last_reply: Option<String>,
}

impl DestQueue {
    fn ready(&self) -> usize {
        self.transactional.len() + self.bulk.len()
    }
    fn idle(&self) -> bool {
        self.ready() == 0 && self.connections == 0 && self.in_flight == 0 && self.waiting == 0
    }
}

struct Inner {
    timer: BTreeMap<(u64, u64), Delivery>,
    dests: HashMap<String, DestQueue>,
    ready: u64,
    in_flight: u64,
    paused: bool,
}

/// Counters of the whole queue.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct Totals {
    /// All deliveries held: waiting + ready + in flight.
    pub queued: u64,
    /// Waiting for a time (first attempt or retry).
    pub waiting: u64,
    pub ready: u64,
    pub in_flight: u64,
    pub destinations: u64,
    pub paused: bool,
}

/// Counters of one destination.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestStatus {
    pub destination: String,
    pub ready: u64,
    pub waiting: u64,
    pub in_flight: u64,
    pub connections: u32,
    pub oldest_ms: Option<u64>,
    pub last_reply: Option<String>,
}

pub struct Scheduler {
    inner: Mutex<Inner>,
    wake: Notify,
    clock: Clock,
    max_connections: u32,
    conn_tx: mpsc::UnboundedSender<String>,
    expired_tx: mpsc::UnboundedSender<Delivery>,
}

/// Deliveries moved per lock hold when many fall due at once.
const TIMER_BATCH: usize = 4096;

impl Scheduler {
    /// A scheduler, the receiver of connection requests (destination names) and the receiver
    /// of expired deliveries.
    pub fn new(
        clock: Clock,
        max_connections: u32,
    ) -> (
        Arc<Scheduler>,
        mpsc::UnboundedReceiver<String>,
        mpsc::UnboundedReceiver<Delivery>,
    ) {
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        let (expired_tx, expired_rx) = mpsc::unbounded_channel();
        let s = Scheduler {
            inner: Mutex::new(Inner {
                timer: BTreeMap::new(),
                dests: HashMap::new(),
                ready: 0,
                in_flight: 0,
                paused: false,
            }),
            wake: Notify::new(),
            clock,
            max_connections: max_connections.max(1),
            conn_tx,
            expired_tx,
        };
        (Arc::new(s), conn_rx, expired_rx)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (no multi-step invariants
        // are broken mid-way), so recover from poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Queue a delivery: ready now, or in the timer until `next_ms` (never past expiry).
    pub fn add(&self, d: Delivery) {
        let mut g = self.lock();
        self.add_locked(&mut g, d, self.clock.now_ms());
    }

    /// Queue many deliveries under one lock.
    pub fn add_many(&self, ds: Vec<Delivery>) {
        let mut g = self.lock();
        let now = self.clock.now_ms();
        for d in ds {
            self.add_locked(&mut g, d, now);
        }
    }

    fn add_locked(&self, g: &mut Inner, d: Delivery, now: u64) {
        if d.next_ms <= now {
            self.to_ready(g, d, false);
        } else {
            let due = d.next_ms.min(d.expires_ms);
            let earliest = g.timer.keys().next().map(|k| k.0);
            g.dests.entry(d.domain().to_string()).or_default().waiting += 1;
            g.timer.insert((due, d.id), d);
            if earliest.is_none_or(|e| due < e) {
                self.wake.notify_one();
            }
        }
    }

    fn to_ready(&self, g: &mut Inner, d: Delivery, front: bool) {
        let dest = d.domain().to_string();
        let q = g.dests.entry(dest.clone()).or_default();
        let lane = match d.priority {
            Priority::Transactional => &mut q.transactional,
            Priority::Bulk => &mut q.bulk,
        };
        if front {
            lane.push_front(d);
        } else {
            lane.push_back(d);
        }
        g.ready += 1;
        self.maybe_connect(g, &dest);
    }

    /// Ask for another connection when the queue has more work than its connections.
    fn maybe_connect(&self, g: &mut Inner, dest: &str) {
        if g.paused {
            return;
        }
        if let Some(q) = g.dests.get_mut(dest) {
            if q.ready() > q.connections as usize && q.connections < self.max_connections {
                q.connections += 1;
                let _ = self.conn_tx.send(dest.to_string());
            }
        }
    }

    /// Put a delivery back at the head of its queue (it was not attempted).
    pub fn requeue_front(&self, d: Delivery) {
        let mut g = self.lock();
        let dest = d.domain().to_string();
        if let Some(q) = g.dests.get_mut(&dest) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        g.in_flight = g.in_flight.saturating_sub(1);
        self.to_ready(&mut g, d, true);
    }

    /// Next delivery for a connection to `dest` (transactional first). Expired ones are
    /// diverted to the expiry channel on the way.
    pub fn next_for(&self, dest: &str) -> Option<Delivery> {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        if g.paused {
            return None;
        }
        loop {
            let q = g.dests.get_mut(dest)?;
            let d = q.transactional.pop_front().or_else(|| q.bulk.pop_front())?;
            q.in_flight += 1;
            g.ready -= 1;
            g.in_flight += 1;
            if d.expires_ms <= now {
                let _ = self.expired_tx.send(d);
                continue;
            }
            return Some(d);
        }
    }

    /// Take every ready delivery of `dest` (its hosts are unreachable).
    pub fn drain(&self, dest: &str) -> Vec<Delivery> {
        let mut g = self.lock();
        let Some(q) = g.dests.get_mut(dest) else {
            return Vec::new();
        };
        let mut out: Vec<Delivery> = q.transactional.drain(..).collect();
        out.extend(q.bulk.drain(..));
        q.in_flight += out.len() as u32;
        g.ready -= out.len() as u64;
        g.in_flight += out.len() as u64;
        out
    }

    /// A delivery handed out by `next_for`/`drain`/expiry has reached an outcome (after a
    /// deferral it has already been re-added).
    pub fn settle(&self, dest: &str, last_reply: Option<String>) {
        let mut g = self.lock();
        g.in_flight = g.in_flight.saturating_sub(1);
        if let Some(q) = g.dests.get_mut(dest) {
            q.in_flight = q.in_flight.saturating_sub(1);
            if last_reply.is_some() {
                q.last_reply = last_reply;
            }
            if q.idle() {
                g.dests.remove(dest);
            }
        }
    }

    /// A connection task for `dest` has ended.
    pub fn connection_closed(&self, dest: &str) {
        let mut g = self.lock();
        if let Some(q) = g.dests.get_mut(dest) {
            q.connections = q.connections.saturating_sub(1);
            if q.idle() {
                g.dests.remove(dest);
                return;
            }
        }
        self.maybe_connect(&mut g, dest);
    }

    /// Hold every delivery (global pause) or let them go again.
    pub fn set_paused(&self, paused: bool) {
        let mut g = self.lock();
        g.paused = paused;
        if !paused {
            let dests: Vec<String> = g.dests.keys().cloned().collect();
            for d in dests {
                self.maybe_connect(&mut g, &d);
            }
        }
        drop(g);
        self.wake.notify_one();
    }

    pub fn totals(&self) -> Totals {
        let g = self.lock();
        let waiting = g.timer.len() as u64;
        Totals {
            queued: waiting + g.ready + g.in_flight,
            waiting,
            ready: g.ready,
            in_flight: g.in_flight,
            destinations: g.dests.len() as u64,
            paused: g.paused,
        }
    }

    /// Per-destination counters, busiest first, at most `limit` of them.
    pub fn destinations(&self, limit: usize) -> Vec<DestStatus> {
        let g = self.lock();
        let mut v: Vec<DestStatus> = g
            .dests
            .iter()
            .map(|(name, q)| DestStatus {
                destination: name.clone(),
                ready: q.ready() as u64,
                waiting: q.waiting as u64,
                in_flight: q.in_flight as u64,
                connections: q.connections,
                oldest_ms: [q.transactional.front(), q.bulk.front()]
                    .into_iter()
                    .flatten()
                    .map(|d| d.created_ms)
                    .min(),
                last_reply: q.last_reply.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            (b.ready + b.waiting + b.in_flight)
                .cmp(&(a.ready + a.waiting + a.in_flight))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        v.truncate(limit);
        v
    }

    /// Move due deliveries from the timer to their queues; returns the next due time.
    fn release_due(&self) -> Option<u64> {
        loop {
            let now = self.clock.now_ms();
            let mut g = self.lock();
            let mut moved = 0;
            while moved < TIMER_BATCH {
                let Some(entry) = g.timer.first_entry() else {
                    break;
                };
                if entry.key().0 > now {
                    break;
                }
                let d = entry.remove();
                if let Some(q) = g.dests.get_mut(d.domain()) {
                    q.waiting = q.waiting.saturating_sub(1);
                }
                if d.expires_ms <= now {
                    self.expire_from_timer(&mut g, d);
                } else {
                    self.to_ready(&mut g, d, false);
                }
                moved += 1;
            }
            if moved < TIMER_BATCH {
                return g.timer.keys().next().map(|k| k.0);
            }
        }
    }

    fn expire_from_timer(&self, g: &mut Inner, d: Delivery) {
        g.in_flight += 1;
        if let Some(q) = g.dests.get_mut(d.domain()) {
            q.in_flight += 1;
        }
        let _ = self.expired_tx.send(d);
    }

    /// The timer task: sleeps until the next due time or until woken by an earlier one.
    pub async fn run_timer(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.release_due();
            let sleep = async {
                match next {
                    Some(t) => self.clock.sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
