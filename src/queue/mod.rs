//! The scheduler: a timer ordered by due time, per-domain routes, and ready queues per
//! (path, source, MX site) with their limits.
//!
//! Nothing here scans messages to make a decision. A delivery waiting for a time sits in a
//! B-tree keyed by `(due_ms, id)`. When due it is *routed*: its domain's route (MX site and
//! rule, resolved once and cached) and its pool's next source (smooth weighted round robin)
//! give its path — (rule, source or `*` when shared, destination group) — and its queue —
//! (path, source, MX site). Queues keep their own counters; paths own the limits
//! (connections, GCRA buckets, backoff). Connections are opened one at a time as a queue
//! proves deep, never above the path's limit; a throttled or suspended path waits for a
//! wake-up in the same timer, never holding a connection.
//!
//! Expiry is enforced wherever a delivery waits: the timer never holds a delivery past its
//! expiry, a queue hands out no expired delivery, and a sweep expires deliveries that wait
//! in a throttled or suspended queue.

mod paths;
mod route;
mod slab;
pub mod status;
mod sweep;
pub mod warmup;

use crate::clock::Clock;
use crate::dns::MxHost;
use crate::rules::{Level, Rule, RuleSet};
use crate::spool::{Delivery, Priority};
use crate::throttle::PathState;
use route::{Pool, Route};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

pub use status::{PathStatus, Totals};

/// A sending IP.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub ip: Option<IpAddr>,
    pub helo: String,
    pub weight: u32,
    pub ipv4_only: bool,
    /// Warm-up schedule (empty = none).
    pub warmup: Vec<warmup::Step>,
}

/// A ready queue. What a scheduling decision reads comes first (`repr(C)`), so it shares
/// cache lines.
#[repr(C)]
struct Queue {
    transactional: VecDeque<Delivery>,
    bulk: VecDeque<Delivery>,
    /// The path's position in `Inner::paths`.
    pidx: usize,
    throttled_until: Option<u64>,
    connections: u32,
    in_flight: u32,
    /// Connections told "nothing queued" (an upper bound: one that timed out is not
    /// taken off); a push wakes one of them, and touches `notify` only then.
    idle: u32,
    /// In its path's `waiting` list.
    waiting: bool,
    /// Connections waiting for the path's rate (`Next::Wait`): while one does, another
    /// connection would only wait too, so none is opened.
    pacing: u32,
    notify: Arc<Notify>,
    path: Arc<str>,
    source: usize,
    site: Arc<str>,
    targets: Arc<Vec<MxHost>>,
}

impl Queue {
    fn ready(&self) -> usize {
        self.transactional.len() + self.bulk.len()
    }
    /// More deliveries ready than connections to carry them.
    fn wants_more(&self) -> bool {
        self.ready() > self.connections as usize
    }
    fn idle(&self) -> bool {
        self.ready() == 0 && self.connections == 0 && self.in_flight == 0
    }
    fn pop(&mut self) -> Option<Delivery> {
        self.transactional
            .pop_front()
            .or_else(|| self.bulk.pop_front())
    }
    fn push(&mut self, d: Delivery, front: bool) {
        let lane = match d.priority() {
            Priority::Transactional => &mut self.transactional,
            Priority::Bulk => &mut self.bulk,
        };
        // most destinations of a campaign get one or two recipients: start with room for
        // one (a growing lane doubles as usual) instead of the default four
        if lane.capacity() == 0 {
            lane.reserve_exact(1);
        }
        if front {
            lane.push_front(d)
        } else {
            lane.push_back(d)
        }
    }
}

enum Wake {
    Queue(u64),
    Path(Arc<str>),
    /// A campaign's rate cap allows its parked deliveries again.
    Unpark(String),
}

struct Inner {
    timer: BTreeMap<(u64, u64), Delivery>,
    wakeups: BTreeMap<(u64, u64), Wake>,
    wake_seq: u64,
    queues: slab::Slab<Queue>,
    queue_index: HashMap<(Arc<str>, usize, Arc<str>), u64>,
    paths: paths::Paths,
    /// Keys inline (most domains fit): a lookup reads the table only.
    routes: HashMap<crate::inline_str::InlineStr, Route>,
    pending: HashMap<String, Vec<Delivery>>,
    pending_count: u64,
    /// Deliveries of paused (or rate-capped) campaigns, by campaign.
    parked: HashMap<String, Vec<Delivery>>,
    parked_count: u64,
    unreachable: HashMap<(usize, Arc<str>), u64>,
    pools: HashMap<String, Pool>,
    sources: Vec<Source>,
    rules: Arc<RuleSet>,
    level: Level,
    source_levels: HashMap<String, Level>,
    ready: u64,
    in_flight: u64,
    paused: bool,
    warm: Vec<warmup::WarmState>,
    warm_limits: warmup::Limits,
    next_sweep: u64,
}

/// Sources, pools, rules and levels a scheduler starts with.
pub struct Setup {
    pub sources: Vec<Source>,
    /// Named pools: (name, source names). Empty = one `default` pool of every source.
    pub pools: Vec<(String, Vec<String>)>,
    pub rules: Arc<RuleSet>,
    pub level: Level,
    pub source_levels: HashMap<String, Level>,
    pub warmup_limits: warmup::Limits,
}

/// What a connection request came to.
#[derive(Debug, PartialEq, Eq)]
enum Connect {
    Opened,
    /// The path's connection limits (or gradual start) refuse: wait for a freed connection.
    AtLimit,
    /// Not needed, paused, or throttled (a wake-up is scheduled).
    NotNow,
}

/// What a connection does next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once per transaction; boxing would only add an allocation
pub enum Next {
    Deliver(Delivery),
    /// Nothing queued right now (wait up to the idle timeout, then quit).
    Empty,
    /// The path's hourly rate allows the next message in this many ms, within the rule's
    /// idle timeout: keep the connection, wait (on the engine's clock), call
    /// [`Scheduler::paced`], then ask again. Longer waits get `Stop`.
    Wait(u64),
    /// Quit now: limits, suspension, pause or messages_per_connection say so.
    Stop,
}

/// What a connection task needs to know about its queue.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub path: String,
    pub rule: Rule,
    pub source: String,
    pub source_ip: Option<IpAddr>,
    pub helo: String,
    pub targets: Arc<Vec<MxHost>>,
    pub notify: Arc<Notify>,
    /// Source or rule says: IPv4 MX addresses only.
    pub ipv4_only: bool,
}

/// Channels the scheduler feeds: connection requests (queue ids), DNS resolutions wanted
/// (domains) and deliveries found expired (with their queue, if any).
pub struct Feeds {
    pub connect: mpsc::UnboundedReceiver<u64>,
    pub resolve: mpsc::UnboundedReceiver<String>,
    pub expired: mpsc::UnboundedReceiver<(Delivery, Option<u64>)>,
}

pub struct Scheduler {
    inner: Mutex<Inner>,
    metrics: Arc<crate::metrics::Metrics>,
    campaigns: Arc<crate::campaign::Campaigns>,
    wake: Notify,
    clock: Clock,
    conn_tx: mpsc::UnboundedSender<u64>,
    resolve_tx: mpsc::UnboundedSender<String>,
    expired_tx: mpsc::UnboundedSender<(Delivery, Option<u64>)>,
}

const TIMER_BATCH: usize = 4096;
const ROUTE_TTL_MS: u64 = 300_000;
const UNREACHABLE_MS: u64 = 600_000;
const SWEEP_MS: u64 = 60_000;

impl Scheduler {
    pub fn new(
        clock: Clock,
        setup: Setup,
        metrics: Arc<crate::metrics::Metrics>,
        campaigns: Arc<crate::campaign::Campaigns>,
    ) -> (Arc<Scheduler>, Feeds) {
        let Setup {
            sources,
            pools,
            rules,
            level,
            source_levels,
            warmup_limits,
        } = setup;
        let warm = vec![warmup::WarmState::default(); sources.len()];
        for r in &rules.rules {
            metrics.init_rule(&r.name);
        }
        metrics.init_rule(crate::metrics::UNROUTED);
        for s in &sources {
            metrics.init_source(&s.name);
        }
        let (conn_tx, connect) = mpsc::unbounded_channel();
        let (resolve_tx, resolve) = mpsc::unbounded_channel();
        let (expired_tx, expired) = mpsc::unbounded_channel();
        let pools = route::build_pools(&sources, pools);
        let now = clock.now_ms();
        let s = Scheduler {
            inner: Mutex::new(Inner {
                timer: BTreeMap::new(),
                wakeups: BTreeMap::new(),
                wake_seq: 0,
                queues: Default::default(),
                queue_index: HashMap::new(),
                paths: Default::default(),
                routes: HashMap::new(),
                pending: HashMap::new(),
                pending_count: 0,
                parked: HashMap::new(),
                parked_count: 0,
                unreachable: HashMap::new(),
                pools,
                sources,
                rules,
                level,
                source_levels,
                ready: 0,
                in_flight: 0,
                paused: false,
                warm,
                warm_limits: warmup_limits,
                next_sweep: now + SWEEP_MS,
            }),
            wake: Notify::new(),
            metrics,
            campaigns,
            clock,
            conn_tx,
            resolve_tx,
            expired_tx,
        };
        (
            Arc::new(s),
            Feeds {
                connect,
                resolve,
                expired,
            },
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Does this pool exist?
    pub fn has_pool(&self, name: &str) -> bool {
        self.lock().pools.contains_key(name)
    }

    /// Queue a delivery: routed now if due, else into the timer (never past its expiry).
    pub fn add(&self, d: Delivery) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        self.add_locked(&mut g, d, now);
    }

    pub fn add_many(&self, ds: Vec<Delivery>) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        for d in ds {
            self.add_locked(&mut g, d, now);
        }
    }

    fn add_locked(&self, g: &mut Inner, d: Delivery, now: u64) {
        if d.next_ms <= now {
            self.route(g, d, now);
        } else {
            let due = d.next_ms.min(d.expires_ms);
            let earliest = g.timer.keys().next().map(|k| k.0);
            g.timer.insert((due, d.id), d);
            if earliest.is_none_or(|e| due < e) {
                self.wake.notify_one();
            }
        }
    }

    fn schedule(&self, g: &mut Inner, at: u64, w: Wake) {
        g.wake_seq += 1;
        let earliest = g.wakeups.keys().next().map(|k| k.0);
        g.wakeups.insert((at, g.wake_seq), w);
        if earliest.is_none_or(|e| at < e) {
            self.wake.notify_one();
        }
    }

    fn level_of(g: &Inner, path: &PathState) -> Level {
        let Some(i) = path.source_idx.map(|i| i as usize) else {
            return g.level;
        };
        if let Some(l) = Self::warm_level(g, i) {
            return l;
        }
        g.sources
            .get(i)
            .and_then(|s| g.source_levels.get(&s.name))
            .copied()
            .unwrap_or(g.level)
    }

    fn rule_of(g: &Inner, name: &str) -> Rule {
        Self::rule_in(&g.rules, name).clone()
    }

    /// A path's rule, by its cached position (by name when that is unknown).
    fn path_rule<'a>(rules: &'a RuleSet, p: &PathState) -> &'a Rule {
        match rules.rules.get(p.rule_idx as usize) {
            Some(r) => r,
            None => Self::rule_in(rules, &p.rule),
        }
    }

    /// A rule by name (the catch-all, last, when it is gone), borrowed from a rule set the
    /// caller holds (an `Arc` clone: no copy of the rule on the hot path).
    fn rule_in<'a>(rules: &'a RuleSet, name: &str) -> &'a Rule {
        match rules.rule(name) {
            Some(r) => r,
            None => &rules.rules[rules.rules.len() - 1],
        }
    }

    /// Ask for a connection if the queue has more work than connections and the path allows.
    /// A queue the path's limits refuse waits in the path's `waiting` list.
    fn maybe_connect(&self, g: &mut Inner, qid: u64, now: u64) {
        match self.try_connect(g, qid, now) {
            Connect::AtLimit => Self::wait_for_connection(g, qid),
            Connect::Opened if g.queues.get(&qid).is_some_and(Queue::wants_more) => {
                Self::wait_for_connection(g, qid)
            }
            _ => {}
        }
    }

    /// Put a queue at the end of its path's `waiting` list (once).
    fn wait_for_connection(g: &mut Inner, qid: u64) {
        if let Some(q) = g.queues.get_mut(&qid) {
            if !q.waiting {
                q.waiting = true;
                if let Some(p) = g.paths.at_mut(q.pidx) {
                    p.waiting.push_back(qid);
                }
            }
        }
    }

    fn try_connect(&self, g: &mut Inner, qid: u64, now: u64) -> Connect {
        if g.paused {
            return Connect::NotNow;
        }
        let Some(q) = g.queues.get(&qid) else {
            return Connect::NotNow;
        };
        if !q.wants_more() || q.pacing > 0 || q.throttled_until.is_some_and(|t| t > now) {
            return Connect::NotNow;
        }
        let pidx = q.pidx;
        let Some(path) = g.paths.at(pidx) else {
            return Connect::NotNow;
        };
        let rules = g.rules.clone();
        let rule = Self::path_rule(&rules, path);
        let level = Self::level_of(g, path);
        let Some(path) = g.paths.at_mut(pidx) else {
            return Connect::NotNow;
        };
        match path.may_open(rule, level, now) {
            Ok(true) => {
                path.connections += 1;
                path.opening += 1;
                if let Some(q) = g.queues.get_mut(&qid) {
                    q.connections += 1;
                }
                let _ = self.conn_tx.send(qid);
                Connect::Opened
            }
            Ok(false) => Connect::AtLimit,
            Err(wait) => {
                self.metrics
                    .throttled
                    .with_label_values(&[&rule.name])
                    .inc();
                if let Some(q) = g.queues.get_mut(&qid) {
                    q.throttled_until = Some(now + wait);
                }
                self.schedule(g, now + wait, Wake::Queue(qid));
                Connect::NotNow
            }
        }
    }

    /// The path may allow another connection: offer it to the queues waiting for one, in
    /// order, until the path refuses again.
    fn poke_path(&self, g: &mut Inner, path_id: &str, now: u64) {
        loop {
            let Some(qid) = g.paths.get_mut(path_id).and_then(|p| p.waiting.pop_front()) else {
                return;
            };
            match g.queues.get_mut(&qid) {
                Some(q) => q.waiting = false,
                None => continue,
            }
            match self.try_connect(g, qid, now) {
                Connect::AtLimit => {
                    if let (Some(q), Some(p)) = (g.queues.get_mut(&qid), g.paths.get_mut(path_id)) {
                        q.waiting = true;
                        p.waiting.push_front(qid);
                    }
                    return;
                }
                // still deeper than its connections: back in line behind the others
                Connect::Opened if g.queues.get(&qid).is_some_and(Queue::wants_more) => {
                    Self::wait_for_connection(g, qid)
                }
                _ => {}
            }
        }
    }

    pub fn conn_info(&self, qid: u64) -> Option<ConnInfo> {
        let g = self.lock();
        let q = g.queues.get(&qid)?;
        let path = g.paths.get(&q.path)?;
        let src = g.sources.get(q.source)?;
        let rule = Self::rule_of(&g, &path.rule);
        Some(ConnInfo {
            path: q.path.to_string(),
            rule: rule.clone(),
            source: src.name.clone(),
            source_ip: src.ip,
            helo: src.helo.clone(),
            targets: q.targets.clone(),
            notify: q.notify.clone(),
            ipv4_only: src.ipv4_only || rule.ipv4_only,
        })
    }

    /// The next delivery for a connection of queue `qid` that has carried `sent` messages.
    pub fn next_for(&self, qid: u64, sent: u32) -> Next {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        if g.paused {
            return Next::Stop;
        }
        let Some(q) = g.queues.get(&qid) else {
            return Next::Stop;
        };
        let pidx = q.pidx;
        let Some(path) = g.paths.at(pidx) else {
            return Next::Stop;
        };
        let rules = g.rules.clone();
        let rule = Self::path_rule(&rules, path);
        let level = Self::level_of(&g, path);
        if path.suspended()
            || sent >= rule.messages_per_connection
            || path.connections > path.max_connections(rule, level)
        {
            return Next::Stop;
        }
        loop {
            let Some(q) = g.queues.get_mut(&qid) else {
                return Next::Stop;
            };
            let Some(d) = q.pop() else {
                q.idle += 1;
                return Next::Empty;
            };
            if d.expires_ms <= now {
                q.in_flight += 1;
                g.ready -= 1;
                g.in_flight += 1;
                let _ = self.expired_tx.send((d, Some(qid)));
                continue;
            }
            let campaign = d.campaign();
            let wait = if self.campaigns.held(campaign, d.tenant()) {
                Some(None)
            } else {
                self.campaigns.take_token(campaign, now).err().map(Some)
            };
            if let Some(wait) = wait {
                // paused or over its rate cap: the delivery waits aside, the queue goes on
                g.ready -= 1;
                g.parked_count += 1;
                let k = crate::campaign::key(campaign);
                g.parked.entry(k.clone()).or_default().push(d);
                if let Some(ms) = wait {
                    self.schedule(&mut g, now + ms, Wake::Unpark(k));
                }
                continue;
            }
            let Some(path) = g.paths.at_mut(pidx) else {
                return Next::Stop;
            };
            match path.take_message(rule, level, now) {
                Ok(()) => {
                    if let Some(q) = g.queues.get_mut(&qid) {
                        q.in_flight += 1;
                    }
                    g.ready -= 1;
                    g.in_flight += 1;
                    return Next::Deliver(d);
                }
                Err(wait) => {
                    self.metrics
                        .throttled
                        .with_label_values(&[&rule.name])
                        .inc();
                    let pace = Duration::from_millis(wait) <= rule.idle_timeout;
                    if let Some(q) = g.queues.get_mut(&qid) {
                        q.push(d, true);
                        q.throttled_until = Some(now + wait);
                        if pace {
                            q.pacing += 1;
                        }
                    }
                    self.schedule(&mut g, now + wait, Wake::Queue(qid));
                    return if pace { Next::Wait(wait) } else { Next::Stop };
                }
            }
        }
    }

    /// A connection told `Next::Wait` has waited.
    pub fn paced(&self, qid: u64) {
        let mut g = self.lock();
        if let Some(q) = g.queues.get_mut(&qid) {
            q.pacing = q.pacing.saturating_sub(1);
        }
    }

    /// Put a delivery back at the head of its queue (it was not attempted).
    pub fn requeue_front(&self, qid: u64, d: Delivery) {
        let mut g = self.lock();
        g.in_flight = g.in_flight.saturating_sub(1);
        g.ready += 1;
        if let Some(q) = g.queues.get_mut(&qid) {
            q.in_flight = q.in_flight.saturating_sub(1);
            q.push(d, true);
        }
    }

    /// Take every ready delivery of a queue (its hosts are unreachable).
    pub fn drain(&self, qid: u64) -> Vec<Delivery> {
        let mut g = self.lock();
        let Some(q) = g.queues.get_mut(&qid) else {
            return Vec::new();
        };
        let mut out: Vec<Delivery> = q.transactional.drain(..).collect();
        out.extend(q.bulk.drain(..));
        q.in_flight += out.len() as u32;
        g.ready -= out.len() as u64;
        g.in_flight += out.len() as u64;
        out
    }

    /// A delivery handed out (by `next_for`, `drain`, expiry or a failed resolution) has an
    /// outcome. A deferred one has already been re-added.
    pub fn settle(&self, qid: Option<u64>, last_reply: Option<String>) {
        let mut g = self.lock();
        g.in_flight = g.in_flight.saturating_sub(1);
        let Some(qid) = qid else { return };
        let Some(q) = g.queues.get_mut(&qid) else {
            return;
        };
        q.in_flight = q.in_flight.saturating_sub(1);
        let pidx = q.pidx;
        if let (Some(r), Some(p)) = (last_reply, g.paths.at_mut(pidx)) {
            p.last_error = Some(r);
        }
        self.cleanup(&mut g, qid);
    }

    /// Rule and source name of a queue (for metrics and events).
    pub fn labels_of(&self, qid: Option<u64>) -> (String, Option<String>) {
        let g = self.lock();
        let Some(q) = qid.and_then(|q| g.queues.get(&q)) else {
            return (crate::metrics::UNROUTED.to_string(), None);
        };
        let rule = g
            .paths
            .get(&q.path)
            .map(|p| p.rule.clone())
            .unwrap_or_else(|| crate::metrics::UNROUTED.to_string());
        (rule, g.sources.get(q.source).map(|s| s.name.clone()))
    }

    /// Record a successful delivery on the path (clears the last error).
    pub fn path_success(&self, qid: u64) {
        let mut g = self.lock();
        let path = g.queues.get(&qid).map(|q| q.path.clone());
        if let Some(p) = path.and_then(|p| g.paths.get_mut(&p)) {
            p.last_error = None;
        }
    }

    fn cleanup(&self, g: &mut Inner, qid: u64) {
        if g.queues.get(&qid).is_some_and(Queue::idle) {
            if let Some(q) = g.queues.remove(&qid) {
                g.queue_index
                    .remove(&(q.path.clone(), q.source, q.site.clone()));
                if let Some(p) = g.paths.get_mut(&q.path) {
                    p.queues.remove(&qid);
                }
            }
        }
    }

    /// The connection of queue `qid` is established (the next one may open).
    pub fn connection_ready(&self, qid: u64) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let path = g.queues.get(&qid).map(|q| q.path.clone());
        if let Some(path) = path {
            if let Some(p) = g.paths.get_mut(&path) {
                p.opening = p.opening.saturating_sub(1);
            }
            self.poke_path(&mut g, &path, now);
        }
    }

    /// A connection task of queue `qid` has ended.
    pub fn connection_closed(&self, qid: u64, established: bool) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let Some(q) = g.queues.get_mut(&qid) else {
            return;
        };
        q.connections = q.connections.saturating_sub(1);
        q.pacing = q.pacing.min(q.connections);
        if q.connections == 0 {
            q.idle = 0;
        }
        let path = q.path.clone();
        if let Some(p) = g.paths.get_mut(&path) {
            p.connections = p.connections.saturating_sub(1);
            if !established {
                p.opening = p.opening.saturating_sub(1);
            }
        }
        self.cleanup(&mut g, qid);
        self.poke_path(&mut g, &path, now);
    }

    /// Hold every delivery (global pause) or let them go again.
    pub fn set_paused(&self, paused: bool) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        g.paused = paused;
        if paused {
            // idle connections wake up, see the pause and quit
            for q in g.queues.values() {
                q.notify.notify_waiters();
            }
        } else {
            let qids: Vec<u64> = g.queues.keys().collect();
            for qid in qids {
                self.maybe_connect(&mut g, qid, now);
            }
        }
        drop(g);
        self.wake.notify_one();
    }

    /// Move due deliveries and wake-ups; returns the next due time.
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
                if d.expires_ms <= now {
                    g.in_flight += 1;
                    let _ = self.expired_tx.send((d, None));
                } else {
                    self.route(&mut g, d, now);
                }
                moved += 1;
            }
            while let Some(entry) = g.wakeups.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                match entry.remove() {
                    Wake::Queue(qid) => {
                        if let Some(q) = g.queues.get_mut(&qid) {
                            q.throttled_until = None;
                        }
                        self.maybe_connect(&mut g, qid, now);
                    }
                    Wake::Unpark(k) => self.unpark_locked(&mut g, &k, now),
                    Wake::Path(id) => {
                        let next = g.paths.get_mut(&id).and_then(|p| p.step_backoff(now));
                        if let Some(t) = next {
                            self.schedule(&mut g, t, Wake::Path(id.clone()));
                        }
                        self.poke_path(&mut g, &id, now);
                    }
                }
            }
            if now >= g.next_sweep {
                g.next_sweep = now + SWEEP_MS;
                self.sweep(&mut g, now);
            }
            if moved < TIMER_BATCH {
                let t = g.timer.keys().next().map(|k| k.0);
                let w = g.wakeups.keys().next().map(|k| k.0);
                let s = Some(g.next_sweep);
                return [t, w, s].into_iter().flatten().min();
            }
        }
    }

    fn unpark_locked(&self, g: &mut Inner, k: &str, now: u64) {
        let list = g.parked.remove(k).unwrap_or_default();
        g.parked_count -= list.len() as u64;
        for d in list {
            self.route(g, d, now);
        }
    }

    /// Let the parked deliveries of a campaign (or of every campaign) go again.
    pub fn unpark(&self, campaign: Option<&str>) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let keys: Vec<String> = match campaign {
            Some(c) => vec![c.to_string()],
            None => g.parked.keys().cloned().collect(),
        };
        for k in keys {
            self.unpark_locked(&mut g, &k, now);
        }
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
