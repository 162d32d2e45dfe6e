//! Counters and operator controls of the scheduler: totals, per-path status, levels,
//! rules reload, manual suspension.

use super::Scheduler;
use crate::rules::{Level, RuleSet};
use crate::throttle::BackoffState;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Counters of the whole queue (kept as they change; nothing is scanned).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct Totals {
    /// All deliveries held: waiting + resolving + ready + in flight.
    pub queued: u64,
    /// Waiting for a time (first attempt or retry).
    pub waiting: u64,
    /// Waiting for their domain's MX resolution.
    pub resolving: u64,
    /// Held because their campaign or tenant is paused (or over its rate cap).
    pub parked: u64,
    pub ready: u64,
    pub in_flight: u64,
    pub paths: u64,
    pub queues: u64,
    pub paused: bool,
}

/// One path as `GET /api/v1/queues` and `sluice status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct PathStatus {
    pub id: String,
    pub rule: String,
    pub source: Option<String>,
    /// The destination group: `*` (whole rule), the MX hosts, or the domain.
    pub destination: String,
    pub queued: u64,
    pub in_flight: u64,
    pub connections: u32,
    pub max_connections: u32,
    pub rate_per_hour: u64,
    pub max_per_hour: Option<u64>,
    pub level: &'static str,
    pub state: String,
    pub backoff: Option<BackoffState>,
    pub last_error: Option<String>,
}

impl Scheduler {
    pub fn totals(&self) -> Totals {
        let g = self.lock();
        let waiting = g.timer.len() as u64;
        Totals {
            queued: waiting + g.pending_count + g.parked_count + g.ready + g.in_flight,
            waiting,
            resolving: g.pending_count,
            parked: g.parked_count,
            ready: g.ready,
            in_flight: g.in_flight,
            paths: g.paths.len() as u64,
            queues: g.queues.len() as u64,
            paused: g.paused,
        }
    }

    /// Paths with work or state, busiest first (at most `limit`).
    pub fn paths(&self, limit: usize) -> Vec<PathStatus> {
        let now = self.clock.now_ms();
        let g = self.lock();
        let mut out: Vec<PathStatus> = g
            .paths
            .values()
            .map(|p| {
                let rule = Self::rule_of(&g, &p.rule);
                let level = Self::level_of(&g, p);
                let (queued, in_flight) = p
                    .queues
                    .iter()
                    .filter_map(|q| g.queues.get(q))
                    .fold((0u64, 0u64), |(a, b), q| {
                        (a + q.ready() as u64, b + q.in_flight as u64)
                    });
                PathStatus {
                    id: p.id.to_string(),
                    rule: p.rule.clone(),
                    source: p.source.clone(),
                    destination: p.group.clone(),
                    queued,
                    in_flight,
                    connections: p.connections,
                    max_connections: p.max_connections(&rule, level),
                    rate_per_hour: p.current_rate(now),
                    max_per_hour: p.messages_per_hour(&rule, level).map(|r| r as u64),
                    level: level.as_str(),
                    state: p.describe(&rule, level, now),
                    backoff: p.backoff.as_deref().cloned(),
                    last_error: p.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.queued + b.in_flight)
                .cmp(&(a.queued + a.in_flight))
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(limit);
        out
    }

    /// Connections and connection limits summed per rule (for metrics).
    pub fn rule_connections(&self) -> Vec<(String, u32, u32)> {
        let g = self.lock();
        let mut by: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
        for r in &g.rules.rules {
            by.insert(r.name.clone(), (0, 0));
        }
        for p in g.paths.values() {
            let rule = Self::rule_of(&g, &p.rule);
            let level = Self::level_of(&g, p);
            let e = by.entry(p.rule.clone()).or_default();
            e.0 += p.connections;
            if !p.queues.is_empty() {
                e.1 += p.max_connections(&rule, level);
            }
        }
        by.into_iter().map(|(k, (a, b))| (k, a, b)).collect()
    }

    /// Every source with its effective level.
    pub fn source_levels(&self) -> Vec<(String, Level)> {
        let g = self.lock();
        g.sources
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    g.source_levels.get(&s.name).copied().unwrap_or(g.level),
                )
            })
            .collect()
    }

    /// Suspend (or resume) a path by hand.
    pub fn set_path_suspended(&self, id: &str, suspended: bool) -> bool {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let Some(p) = g.paths.get_mut(id) else {
            return false;
        };
        p.manual_suspend = suspended;
        if !suspended {
            self.poke_path(&mut g, id, now);
        }
        true
    }

    /// The global level, or one source's.
    pub fn set_level(&self, level: Level, source: Option<&str>) -> Result<(), String> {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        match source {
            None => g.level = level,
            Some(s) => {
                if !g.sources.iter().any(|x| x.name == s) {
                    return Err(format!("no source named {s:?}"));
                }
                g.source_levels.insert(s.to_string(), level);
            }
        }
        let qids: Vec<u64> = g.queues.keys().collect();
        for q in qids {
            self.maybe_connect(&mut g, q, now);
        }
        Ok(())
    }

    /// Global level and per-source overrides.
    pub fn levels(&self) -> (Level, Vec<(String, Level)>) {
        let g = self.lock();
        let mut per: Vec<(String, Level)> = g
            .source_levels
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        per.sort_by(|a, b| a.0.cmp(&b.0));
        (g.level, per)
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.lock().rules.clone()
    }

    /// Swap in new rules. Paths keep their state (spent budget, backoff) by id; in-flight
    /// deliveries are untouched; domains are re-matched on their next delivery.
    pub fn set_rules(&self, rules: Arc<RuleSet>) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        for p in g.paths.values_mut() {
            p.rule_idx = rules
                .rules
                .iter()
                .position(|r| r.name == p.rule)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(u32::MAX);
            if let Some(r) = rules.rules.get(p.rule_idx as usize) {
                p.sync_rule(r);
            }
        }
        for r in &rules.rules {
            self.metrics.init_rule(&r.name);
        }
        g.rules = rules;
        g.routes.clear();
        let qids: Vec<u64> = g.queues.keys().collect();
        for q in qids {
            self.maybe_connect(&mut g, q, now);
        }
    }

    /// The retry schedule of the rule a queue belongs to, if the rule has its own.
    pub fn retry_for(&self, qid: Option<u64>) -> Option<Vec<Duration>> {
        let g = self.lock();
        let q = g.queues.get(&qid?)?;
        let p = g.paths.get(&q.path)?;
        g.rules.rule(&p.rule)?.retry.clone()
    }
}
