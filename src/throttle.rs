//! Throttling state of a path: GCRA buckets, connection counts, backoff and suspension.
//!
//! The GCRA (generic cell rate algorithm) is written out here rather than taken from
//! `governor`, because a path needs three things governor does not give: the engine's
//! injectable clock (tests jump hours ahead), a rate that changes in place when the level,
//! a backoff or a rules reload changes it — keeping the budget already spent — and a
//! "when may the next one go" answer without sleeping. The algorithm is the same: one
//! theoretical arrival time per bucket, emission interval T = 1 h / rate, a burst of `b`
//! tolerated as T·(b−1).

use crate::rules::{BackoffAction, Level, Rule};
use serde::Serialize;

/// A GCRA bucket (times in clock milliseconds).
#[derive(Debug, Clone)]
pub struct Gcra {
    tat: f64,
    interval: f64,
    burst: u32,
}

impl Gcra {
    /// `per_hour` events per hour with a burst of `burst`.
    pub fn per_hour(per_hour: f64, burst: u32) -> Gcra {
        Gcra {
            tat: 0.0,
            interval: 3_600_000.0 / per_hour.max(0.001),
            burst: burst.max(1),
        }
    }

    pub fn per_minute(per_minute: f64, burst: u32) -> Gcra {
        Gcra::per_hour(per_minute * 60.0, burst)
    }

    /// Change the rate, keeping the budget already spent.
    pub fn set_per_hour(&mut self, per_hour: f64) {
        self.interval = 3_600_000.0 / per_hour.max(0.001);
    }

    /// Take one token now, or say how many ms until one is available.
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        let now = now_ms as f64;
        let tau = self.interval * (self.burst as f64 - 1.0);
        if self.tat - tau <= now {
            self.tat = self.tat.max(now) + self.interval;
            Ok(())
        } else {
            Err((self.tat - tau - now).ceil().max(1.0) as u64)
        }
    }

    /// Give a token back (it was taken for a transaction that did not happen).
    pub fn refund(&mut self) {
        self.tat -= self.interval;
    }
}

/// Burst allowed for an hourly rate: small, so the rate stays smooth over the hour.
pub fn hourly_burst(per_hour: f64) -> u32 {
    ((per_hour / 360.0) as u32).clamp(1, 20)
}

#[derive(Debug, Clone, Serialize)]
pub struct BackoffState {
    pub action: &'static str,
    /// Fraction of the normal limits in force (0 while suspended).
    pub factor: f64,
    pub reason: String,
    pub rule: String,
    pub since_ms: u64,
    /// When the next step up (or the end of the suspension) is due.
    pub until_ms: u64,
    pub step_ms: u64,
    pub hits: u32,
    /// Fraction of the limits a suspension resumes at.
    pub resume_factor: f64,
}

/// One path: (source, destination group) under one rule. What every scheduling decision
/// reads or writes sits in the first 64 bytes (`repr(C)`: at most two cache lines); the
/// buckets and the backoff state sit behind pointers that are null for most paths.
#[derive(Debug)]
#[repr(C)]
pub struct PathState {
    pub connections: u32,
    pub opening: u32,
    /// Position of `rule` in the scheduler's current rule set (kept by the scheduler;
    /// `u32::MAX` = look it up by name).
    pub rule_idx: u32,
    /// Position of `source` among the scheduler's sources (kept by the scheduler).
    pub source_idx: Option<u32>,
    pub manual_suspend: bool,
    pub backoff: Option<Box<BackoffState>>,
    pub rate: Option<Box<Gcra>>,
    pub conn_rate: Option<Box<Gcra>>,
    /// Attempts in the current and previous minute buckets (for the current rate).
    minute: u32,
    this_minute: u32,
    pub attempts: u64,
    last_minute: u32,
    pub id: std::sync::Arc<str>,
    pub rule: String,
    pub source: Option<String>,
    pub group: String,
    pub last_error: Option<String>,
    /// The path's queues.
    pub queues: std::collections::HashSet<u64>,
    /// Queues refused a connection by the path's limits, in the order they asked: a freed
    /// connection goes to the first of them (no walk over every queue of the path).
    pub waiting: std::collections::VecDeque<u64>,
}

impl PathState {
    pub fn new(
        id: std::sync::Arc<str>,
        rule: &Rule,
        source: Option<String>,
        group: String,
    ) -> PathState {
        PathState {
            id,
            rule_idx: u32::MAX,
            source_idx: None,
            rule: rule.name.clone(),
            source,
            group,
            connections: 0,
            opening: 0,
            rate: rule
                .messages_per_hour
                .map(|r| Box::new(Gcra::per_hour(r as f64, hourly_burst(r as f64)))),
            conn_rate: rule
                .max_new_connections_per_minute
                .map(|r| Box::new(Gcra::per_minute(r as f64, (r / 6).max(1)))),
            backoff: None,
            last_error: None,
            manual_suspend: false,
            minute: 0,
            this_minute: 0,
            last_minute: 0,
            attempts: 0,
            queues: Default::default(),
            waiting: Default::default(),
        }
    }

    /// Follow a reloaded rule: add or drop buckets, keeping the budget already spent.
    pub fn sync_rule(&mut self, rule: &Rule) {
        match (rule.messages_per_hour, &mut self.rate) {
            (Some(r), None) => {
                self.rate = Some(Box::new(Gcra::per_hour(r as f64, hourly_burst(r as f64))))
            }
            (None, Some(_)) => self.rate = None,
            _ => {}
        }
        match (rule.max_new_connections_per_minute, &mut self.conn_rate) {
            (Some(r), None) => {
                self.conn_rate = Some(Box::new(Gcra::per_minute(r as f64, (r / 6).max(1))))
            }
            (Some(r), Some(g)) => g.set_per_hour(r as f64 * 60.0),
            (None, Some(_)) => self.conn_rate = None,
            _ => {}
        }
    }

    fn factor(&self, level: Level) -> f64 {
        level.factor() * self.backoff.as_ref().map(|b| b.factor).unwrap_or(1.0)
    }

    /// Connections allowed now (0 while suspended).
    pub fn max_connections(&self, rule: &Rule, level: Level) -> u32 {
        if self.suspended() {
            return 0;
        }
        ((rule.max_connections as f64 * self.factor(level)).ceil() as u32).max(1)
    }

    /// Messages per hour allowed now, if capped.
    pub fn messages_per_hour(&self, rule: &Rule, level: Level) -> Option<f64> {
        rule.messages_per_hour
            .map(|r| (r as f64 * self.factor(level)).max(1.0))
    }

    pub fn suspended(&self) -> bool {
        self.manual_suspend
            || self
                .backoff
                .as_ref()
                .map(|b| b.action == "suspend")
                .unwrap_or(false)
    }

    /// May a new connection open now? `Err(wait_ms)` when the connection rate says wait.
    pub fn may_open(&mut self, rule: &Rule, level: Level, now: u64) -> Result<bool, u64> {
        if self.connections >= self.max_connections(rule, level) {
            return Ok(false);
        }
        // gradual start: one connection opening at a time
        if self.opening > 0 {
            return Ok(false);
        }
        if let Some(g) = &mut self.conn_rate {
            g.check(now)?;
        }
        Ok(true)
    }

    /// Take a message token (an attempt). `Err(wait_ms)` when the hourly rate says wait.
    pub fn take_message(&mut self, rule: &Rule, level: Level, now: u64) -> Result<(), u64> {
        let per_hour = self.messages_per_hour(rule, level);
        if let (Some(g), Some(r)) = (&mut self.rate, per_hour) {
            g.set_per_hour(r);
            g.check(now)?;
        }
        self.count_attempt(now);
        Ok(())
    }

    fn count_attempt(&mut self, now: u64) {
        let m = (now / 60_000) as u32;
        if m != self.minute {
            self.last_minute = if m == self.minute.wrapping_add(1) {
                self.this_minute
            } else {
                0
            };
            self.this_minute = 0;
            self.minute = m;
        }
        self.this_minute += 1;
        self.attempts += 1;
    }

    /// Approximate current rate (attempts per hour, from the last full minute).
    pub fn current_rate(&self, now: u64) -> u64 {
        let m = (now / 60_000) as u32;
        if m == self.minute {
            u64::from(self.last_minute) * 60
        } else if m == self.minute.wrapping_add(1) {
            u64::from(self.this_minute) * 60
        } else {
            0
        }
    }

    /// Enter backoff or suspension (or extend it).
    /// `factor` is the fraction of the limits while backing off, or — for a suspension —
    /// the fraction it resumes at.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_backoff(
        &mut self,
        action: BackoffAction,
        factor: f64,
        duration_ms: u64,
        step_ms: u64,
        rule: &str,
        reason: &str,
        now: u64,
    ) {
        let suspend = action == BackoffAction::Suspend;
        match &mut self.backoff {
            Some(b) => {
                b.hits += 1;
                b.reason = reason.to_string();
                b.rule = rule.to_string();
                b.resume_factor = b.resume_factor.min(factor);
                if suspend {
                    b.action = "suspend";
                    b.factor = 0.0;
                    b.until_ms = b.until_ms.max(now + duration_ms);
                } else if b.action != "suspend" {
                    b.factor = b.factor.min(factor);
                    b.until_ms = now + duration_ms;
                }
                b.step_ms = b.step_ms.max(step_ms);
            }
            None => {
                self.backoff = Some(Box::new(BackoffState {
                    action: if suspend { "suspend" } else { "backoff" },
                    factor: if suspend { 0.0 } else { factor },
                    reason: reason.to_string(),
                    rule: rule.to_string(),
                    since_ms: now,
                    until_ms: now + duration_ms,
                    step_ms,
                    hits: 1,
                    resume_factor: factor,
                }));
            }
        }
    }

    /// Advance backoff at `now`: a suspension ends; a backoff steps up (factor doubles).
    /// Returns the next time this must be called, if any.
    pub fn step_backoff(&mut self, now: u64) -> Option<u64> {
        let b = self.backoff.as_mut()?;
        if now < b.until_ms {
            return Some(b.until_ms);
        }
        if b.action == "suspend" {
            // resume at reduced speed, then recover step by step
            b.action = "backoff";
            b.factor = b.resume_factor.clamp(0.01, 1.0);
        } else {
            b.factor *= 2.0;
        }
        if b.factor >= 1.0 {
            self.backoff = None;
            return None;
        }
        b.until_ms = now + b.step_ms;
        Some(b.until_ms)
    }

    /// The state in words, for `sluice status`.
    pub fn describe(&self, rule: &Rule, level: Level, now: u64) -> String {
        let who = match &self.source {
            Some(s) => format!("{} via {}", self.rule, s),
            None => format!("{} (shared)", self.rule),
        };
        if self.manual_suspend {
            return format!("{who}: suspended by an operator");
        }
        match &self.backoff {
            Some(b) if b.action == "suspend" => format!(
                "{who}: suspended since {}: {} ×{}; resumes at {}",
                hhmm(b.since_ms),
                b.reason,
                b.hits,
                hhmm(b.until_ms)
            ),
            Some(b) => format!(
                "{who} at {:.0} % since {}: {} ×{}; next step up at {}",
                b.factor * level.factor() * 100.0,
                hhmm(b.since_ms),
                b.reason,
                b.hits,
                hhmm(b.until_ms)
            ),
            None => {
                let rate = match self.messages_per_hour(rule, level) {
                    Some(r) => format!("{}/h of {:.0}/h", self.current_rate(now), r),
                    None => format!("{}/h, no cap", self.current_rate(now)),
                };
                format!(
                    "{who} at {:.0} %: {}/{} connections, {rate}",
                    level.factor() * 100.0,
                    self.connections,
                    self.max_connections(rule, level)
                )
            }
        }
    }
}

fn hhmm(ms: u64) -> String {
    let s = crate::clock::rfc3339(ms);
    s.get(11..16).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_paths_hot_fields_share_one_cache_line() {
        use std::mem::offset_of;
        for (name, end) in [
            ("connections", offset_of!(PathState, connections) + 4),
            ("opening", offset_of!(PathState, opening) + 4),
            ("rule_idx", offset_of!(PathState, rule_idx) + 4),
            ("source_idx", offset_of!(PathState, source_idx) + 8),
            ("backoff", offset_of!(PathState, backoff) + 8),
            ("rate", offset_of!(PathState, rate) + 8),
            ("conn_rate", offset_of!(PathState, conn_rate) + 8),
            ("minute", offset_of!(PathState, minute) + 4),
            ("this_minute", offset_of!(PathState, this_minute) + 4),
            ("attempts", offset_of!(PathState, attempts) + 8),
        ] {
            assert!(end <= 64, "{name} ends at byte {end}");
        }
    }

    use super::*;

    #[test]
    fn gcra_is_smooth_with_a_small_burst() {
        let mut g = Gcra::per_hour(3600.0, 5); // one per second, burst 5
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert!(g.check(t0).is_ok());
        }
        let wait = g.check(t0).unwrap_err();
        assert_eq!(wait, 1000);
        assert!(g.check(t0 + 1000).is_ok());
        // over an hour, exactly 3600 + burst pass
        let mut g = Gcra::per_hour(3600.0, 5);
        let mut n = 0;
        let mut t = t0;
        while t < t0 + 3_600_000 {
            match g.check(t) {
                Ok(()) => n += 1,
                Err(w) => t += w,
            }
        }
        assert!((3600..=3605).contains(&n), "{n}");
    }

    #[test]
    fn rate_change_keeps_spent_budget() {
        let mut g = Gcra::per_hour(3600.0, 1);
        assert!(g.check(0).is_ok());
        g.set_per_hour(1800.0);
        // the spent token still counts: not allowed again at t=0
        assert!(g.check(0).is_err());
    }
}
