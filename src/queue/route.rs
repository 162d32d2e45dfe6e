//! Routing: domain → (rule, MX site) → path and queue; source choice; DNS results;
//! unreachable sources; backoff and path-wide deferral.

use super::{Inner, Queue, Scheduler, Wake};
use crate::dns::{DnsFailure, MxHost};
use crate::inline_str::InlineStr;
use crate::rules::{BackoffAction, BackoffRule, Per, Scope};
use crate::spool::Delivery;
use crate::throttle::PathState;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

/// A resolved domain. What routing reads each time sits inline; the rest in `more`.
pub(super) struct Route {
    pub until_ms: u64,
    pub rule: usize,
    /// The queue this domain's deliveries go to from its first source (a shortcut:
    /// checked against the live queues on use, rebuilt when missing).
    pub first: Option<(usize, u64)>,
    pub more: Box<RouteMore>,
}

pub(super) struct RouteMore {
    pub site: Arc<str>,
    pub targets: Arc<Vec<MxHost>>,
    /// The shortcut for the other sources.
    pub queues: Vec<(usize, u64)>,
}

impl Route {
    pub fn new(rule: usize, site: Arc<str>, targets: Arc<Vec<MxHost>>, until_ms: u64) -> Route {
        Route {
            until_ms,
            rule,
            first: None,
            more: Box::new(RouteMore {
                site,
                targets,
                queues: Vec::new(),
            }),
        }
    }

    fn queue_of(&self, source: usize) -> Option<u64> {
        match self.first {
            Some((s, q)) if s == source => Some(q),
            _ => self
                .more
                .queues
                .iter()
                .find(|(s, _)| *s == source)
                .map(|(_, q)| *q),
        }
    }

    fn remember(&mut self, source: usize, qid: u64) {
        match &mut self.first {
            Some((s, q)) if *s == source => *q = qid,
            None => self.first = Some((source, qid)),
            Some(_) => {
                self.more.queues.retain(|(s, _)| *s != source);
                self.more.queues.push((source, qid));
            }
        }
    }
}

/// Smooth weighted round robin over a pool's sources (nginx's algorithm): over any window
/// the split follows the weights exactly, without randomness.
pub(super) struct Pool {
    pub members: Vec<(usize, i64)>,
    current: Vec<i64>,
}

impl Pool {
    fn pick(&mut self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let total: i64 = self
            .members
            .iter()
            .filter(|(s, _)| usable(*s))
            .map(|(_, w)| *w)
            .sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, (s, w)) in self.members.iter().enumerate() {
            if !usable(*s) {
                continue;
            }
            self.current[i] += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(self.members[b].0)
    }
}

pub(super) fn build_pools(
    sources: &[super::Source],
    pools: Vec<(String, Vec<String>)>,
) -> HashMap<String, Pool> {
    let mut out = HashMap::new();
    let mk = |idx: Vec<usize>| Pool {
        current: vec![0; idx.len()],
        members: idx
            .into_iter()
            .map(|i| (i, sources[i].weight.max(1) as i64))
            .collect(),
    };
    if pools.is_empty() {
        out.insert("default".to_string(), mk((0..sources.len()).collect()));
    }
    for (name, members) in pools {
        let idx: Vec<usize> = members
            .iter()
            .filter_map(|m| sources.iter().position(|s| &s.name == m))
            .collect();
        out.insert(name, mk(idx));
    }
    if !out.contains_key("default") {
        out.insert("default".to_string(), mk((0..sources.len()).collect()));
    }
    out
}

fn short_id(key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Scheduler {
    /// Route a due delivery: to its queue if its domain is resolved, else wait for DNS.
    /// A resolved domain remembers its queue per source, so the usual case is one lookup
    /// of the domain and one of the queue.
    pub(super) fn route(&self, g: &mut Inner, d: Delivery, now: u64) {
        let hit = g
            .routes
            .get(d.domain())
            .filter(|r| r.until_ms > now)
            .map(|r| (r.rule, r.first));
        let Some((rule, first)) = hit else {
            self.wait_for_dns(g, d);
            return;
        };
        let source = self.pick_source(g, &d, None, None);
        let cached = match first {
            // the usual case: no second lookup of the domain
            Some((s, q)) if s == source => Some(q),
            _ => g.routes.get(d.domain()).and_then(|r| r.queue_of(source)),
        }
        .filter(|q| g.queues.contains_key(q));
        let qid = match cached {
            Some(q) => q,
            None => {
                let Some((site, targets)) = g
                    .routes
                    .get(d.domain())
                    .map(|r| (r.more.site.clone(), r.more.targets.clone()))
                else {
                    self.wait_for_dns(g, d);
                    return;
                };
                let q = self.queue_for(g, &d, rule, &site, targets, source);
                if let Some(r) = g.routes.get_mut(d.domain()) {
                    r.remember(source, q);
                }
                q
            }
        };
        self.push(g, qid, d, now);
    }

    /// Park a delivery until its domain is resolved (asking for the resolution once).
    fn wait_for_dns(&self, g: &mut Inner, d: Delivery) {
        let domain = d.domain().to_string();
        let list = g.pending.entry(domain.clone()).or_default();
        list.push(d);
        g.pending_count += 1;
        if list.len() == 1 {
            let _ = self.resolve_tx.send(domain);
        }
    }

    /// Put a delivery on its queue (choosing its source), maybe opening a connection.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn place(
        &self,
        g: &mut Inner,
        d: Delivery,
        rule_idx: usize,
        site: &str,
        targets: Arc<Vec<MxHost>>,
        now: u64,
        avoid: Option<usize>,
    ) {
        let source = self.pick_source(g, &d, Some(site), avoid);
        let qid = self.queue_for(g, &d, rule_idx, site, targets, source);
        self.push(g, qid, d, now);
    }

    /// The pool's next source for this delivery (skipping sources that cannot reach `site`).
    /// `site` is looked up from the domain's route when not given and needed (only when
    /// some source is marked unreachable).
    fn pick_source(
        &self,
        g: &mut Inner,
        d: &Delivery,
        site: Option<&str>,
        avoid: Option<usize>,
    ) -> usize {
        let now = self.clock.now_ms();
        let capped = self.warm_capped(g);
        // the key for the unreachable marks, built only when there are some
        let site_key: Option<Arc<str>> = if g.unreachable.is_empty() {
            None
        } else {
            match site {
                Some(s) => Some(Arc::from(s)),
                None => g.routes.get(d.domain()).map(|r| r.more.site.clone()),
            }
        };
        let unreachable = &g.unreachable;
        let usable = |s: usize| {
            Some(s) != avoid
                && !capped.get(s).copied().unwrap_or(false)
                && site_key
                    .as_ref()
                    .is_none_or(|k| unreachable.get(&(s, k.clone())).is_none_or(|u| *u <= now))
        };
        let pool_name = d.pool().unwrap_or("default");
        let pool = match g.pools.get_mut(pool_name) {
            Some(p) => p,
            None => match g.pools.get_mut("default") {
                Some(p) => p,
                None => return 0,
            },
        };
        let source = pool
            .pick(usable)
            .or_else(|| pool.pick(|_| true))
            .unwrap_or(0);
        // a warming source's daily cap counts the mail assigned to it today
        if let Some(w) = g.warm.get_mut(source) {
            w.sent += 1;
        }
        source
    }

    /// The queue (and path) of a delivery from `source` to `site`, created when missing.
    fn queue_for(
        &self,
        g: &mut Inner,
        d: &Delivery,
        rule_idx: usize,
        site: &str,
        targets: Arc<Vec<MxHost>>,
        source: usize,
    ) -> u64 {
        let rules = g.rules.clone();
        let rule = &rules.rules[rule_idx.min(rules.rules.len() - 1)];
        let source_name = g
            .sources
            .get(source)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let group = match rule.per {
            Per::Rule => "*".to_string(),
            Per::Mx => site.to_string(),
            Per::Domain => d.domain().to_string(),
        };
        let path_src = if rule.shared { None } else { Some(source_name) };
        let path_key = format!(
            "{}|{}|{}",
            rule.name,
            path_src.as_deref().unwrap_or("*"),
            group
        );
        let id = short_id(&path_key);
        let (path_id, pidx): (Arc<str>, usize) = match g.paths.find(id.as_str()) {
            Some((i, p)) => (p.id.clone(), i),
            None => {
                let a: Arc<str> = Arc::from(id);
                let mut p = PathState::new(a.clone(), rule, path_src, group);
                p.rule_idx = u32::try_from(rule_idx.min(rules.rules.len() - 1)).unwrap_or(u32::MAX);
                p.source_idx = (!rule.shared).then(|| u32::try_from(source).ok()).flatten();
                (a, g.paths.insert(p))
            }
        };
        let site: Arc<str> = Arc::from(site);
        let key = (path_id.clone(), source, site.clone());
        if let Some(q) = g.queue_index.get(&key) {
            return *q;
        }
        let qid = g.queues.insert(Queue {
            path: path_id.clone(),
            pidx,
            source,
            site,
            targets,
            transactional: VecDeque::new(),
            bulk: VecDeque::new(),
            connections: 0,
            in_flight: 0,
            throttled_until: None,
            notify: Arc::new(Notify::new()),
            idle: 0,
            waiting: false,
            pacing: 0,
        });
        g.queue_index.insert(key, qid);
        if let Some(p) = g.paths.get_mut(&path_id) {
            p.queues.insert(qid);
        }
        qid
    }

    fn push(&self, g: &mut Inner, qid: u64, d: Delivery, now: u64) {
        if let Some(q) = g.queues.get_mut(&qid) {
            q.push(d, false);
            if q.idle > 0 {
                q.idle -= 1;
                q.notify.notify_one();
            }
        }
        g.ready += 1;
        self.maybe_connect(g, qid, now);
    }

    /// A domain's MX plan is known (or failed). On success its waiting deliveries are queued;
    /// on failure they are returned (counted in flight) for the caller to bounce or defer.
    pub fn resolved(
        &self,
        domain: &str,
        plan: &Result<Arc<Vec<MxHost>>, DnsFailure>,
    ) -> Vec<Delivery> {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let waiting = g.pending.remove(domain).unwrap_or_default();
        g.pending_count -= waiting.len() as u64;
        match plan {
            Ok(targets) => {
                let mut names: Vec<String> = targets.iter().map(|h| h.name.clone()).collect();
                let rule = g.rules.match_rule(domain, &names);
                names.sort();
                names.dedup();
                let site = names.join(",");
                g.routes.insert(
                    InlineStr::from(domain),
                    Route::new(
                        rule,
                        Arc::from(site.as_str()),
                        targets.clone(),
                        now + super::ROUTE_TTL_MS,
                    ),
                );
                for d in waiting {
                    self.place(&mut g, d, rule, &site, targets.clone(), now, None);
                }
                Vec::new()
            }
            Err(_) => {
                g.in_flight += waiting.len() as u64;
                waiting
            }
        }
    }

    /// The queue's source cannot reach its MX site (network failure, not a refusal). Its
    /// deliveries move to the pool's other sources; returns those that have nowhere else to
    /// go (counted in flight) for the caller to defer.
    pub fn unreachable(&self, qid: u64) -> Vec<Delivery> {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let Some(q) = g.queues.get_mut(&qid) else {
            return Vec::new();
        };
        let (source, site, targets) = (q.source, q.site.clone(), q.targets.clone());
        let mut ds: Vec<Delivery> = q.transactional.drain(..).collect();
        ds.extend(q.bulk.drain(..));
        g.ready -= ds.len() as u64;
        g.unreachable
            .insert((source, site.clone()), now + super::UNREACHABLE_MS);
        let mut stuck = Vec::new();
        for d in ds {
            let pool = d.pool().unwrap_or("default").to_string();
            let others = g.pools.get(&pool).is_some_and(|p| {
                p.members.iter().any(|(s, _)| {
                    *s != source
                        && g.unreachable
                            .get(&(*s, site.clone()))
                            .is_none_or(|u| *u <= now)
                })
            });
            if others {
                let domain = d.domain().to_string();
                let rule = g
                    .routes
                    .get(domain.as_str())
                    .map(|r| r.rule)
                    .unwrap_or(usize::MAX);
                self.place(&mut g, d, rule, &site, targets.clone(), now, Some(source));
            } else {
                stuck.push(d);
            }
        }
        if let Some(q) = g.queues.get_mut(&qid) {
            q.in_flight += stuck.len() as u32;
        }
        g.in_flight += stuck.len() as u64;
        stuck
    }

    /// A reply on queue `qid` matched a backoff rule: slow down or suspend its scope.
    pub fn backoff(&self, qid: u64, b: &BackoffRule, reason: &str) {
        let ms = b.duration.as_millis() as u64;
        let factor = if b.action == BackoffAction::Suspend {
            0.5
        } else {
            b.factor
        };
        self.apply(qid, b.action, factor, ms, ms, b.scope, &b.name, reason);
    }

    /// A connection-level 4xx (e.g. 421): the whole path waits `ms`, then resumes at
    /// `resume_factor` of its limits (a matching backoff rule's factor, or half) and recovers
    /// step by step every `step_ms`.
    pub fn defer_path(
        &self,
        qid: u64,
        ms: u64,
        resume_factor: f64,
        step_ms: u64,
        name: &str,
        reason: &str,
    ) {
        self.apply(
            qid,
            BackoffAction::Suspend,
            resume_factor,
            ms,
            step_ms,
            Scope::Path,
            name,
            reason,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        qid: u64,
        action: BackoffAction,
        factor: f64,
        ms: u64,
        step_ms: u64,
        scope: Scope,
        name: &str,
        reason: &str,
    ) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let Some(path_id) = g.queues.get(&qid).map(|q| q.path.clone()) else {
            return;
        };
        let ids: Vec<Arc<str>> = match scope {
            Scope::Rule => {
                let rule = g
                    .paths
                    .get(&path_id)
                    .map(|p| p.rule.clone())
                    .unwrap_or_default();
                g.paths
                    .values()
                    .filter(|p| p.rule == rule)
                    .map(|p| p.id.clone())
                    .collect()
            }
            // sending_domain and campaign scopes act on the path that saw the reply
            _ => vec![path_id],
        };
        for id in ids {
            if let Some(p) = g.paths.get_mut(&id) {
                let a = if action == BackoffAction::Suspend {
                    "suspend"
                } else {
                    "backoff"
                };
                self.metrics.backoffs.with_label_values(&[&p.rule, a]).inc();
                p.apply_backoff(action, factor, ms, step_ms, name, reason, now);
                tracing::info!(path = %id, rule = %p.rule, action = ?action, reason, "path backs off");
            }
            self.schedule(&mut g, now + ms, Wake::Path(id));
        }
    }
}
