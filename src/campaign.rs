//! Campaign controls: per-campaign (and per-tenant) pause / resume / cancel, an optional
//! per-campaign rate cap, live counts, and the circuit breakers that pause a campaign — or a
//! tenant, judged over all its campaigns together — whose hard-bounce or complaint ratio
//! shows a bought or stale list. After an operator's resume, the breaker judges what follows.
//!
//! States (paused, cancelled, rate caps) are persisted in the spool at once; the counters
//! are written every minute and at shutdown (the queued count is rebuilt from the spool),
//! so a restart neither zeroes a campaign's figures nor resets its circuit breaker.

use crate::spool::Spool;
use crate::throttle::Gcra;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const TABLE: &str = "campaigns";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Active,
    Paused,
    Cancelled,
}

/// Circuit-breaker thresholds (`[campaigns]` in sluice.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerCfg {
    #[serde(default = "yes")]
    pub breaker: bool,
    /// The breaker judges a campaign after this many final outcomes.
    #[serde(default = "default_min")]
    pub breaker_min_deliveries: u64,
    #[serde(default = "default_hard")]
    pub max_hard_bounce_ratio: f64,
    #[serde(default = "default_complaints")]
    pub max_complaint_ratio: f64,
}

fn yes() -> bool {
    true
}
fn default_min() -> u64 {
    200
}
fn default_hard() -> f64 {
    0.10
}
fn default_complaints() -> f64 {
    0.003
}

impl Default for BreakerCfg {
    fn default() -> Self {
        BreakerCfg {
            breaker: true,
            breaker_min_deliveries: default_min(),
            max_hard_bounce_ratio: default_hard(),
            max_complaint_ratio: default_complaints(),
        }
    }
}

/// Persisted part of a campaign or tenant.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Saved {
    state: State,
    reason: Option<String>,
    rate_cap: Option<u64>,
    /// A campaign's counters (not a tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counts: Option<Counts>,
    /// A campaign's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

/// How often the counters are written (and once more at shutdown).
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A campaign's counters as kept in the spool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
struct Counts {
    accepted: u64,
    delivered: u64,
    deferred: u64,
    bounced: u64,
    hard_bounces: u64,
    complaints: u64,
    expired: u64,
    suppressed: u64,
    cancelled: u64,
}

impl Counts {
    fn of(s: &CampaignStats) -> Counts {
        Counts {
            accepted: s.accepted,
            delivered: s.delivered,
            deferred: s.deferred,
            bounced: s.bounced,
            hard_bounces: s.hard_bounces,
            complaints: s.complaints,
            expired: s.expired,
            suppressed: s.suppressed,
            cancelled: s.cancelled,
        }
    }

    fn apply(&self, s: &mut CampaignStats) {
        s.accepted = self.accepted;
        s.delivered = self.delivered;
        s.deferred = self.deferred;
        s.bounced = self.bounced;
        s.hard_bounces = self.hard_bounces;
        s.complaints = self.complaints;
        s.expired = self.expired;
        s.suppressed = self.suppressed;
        s.cancelled = self.cancelled;
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CampaignStats {
    pub campaign: String,
    pub tenant: Option<String>,
    pub state: State,
    pub reason: Option<String>,
    pub rate_cap_per_hour: Option<u64>,
    pub accepted: u64,
    pub queued: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub hard_bounces: u64,
    pub complaints: u64,
    pub expired: u64,
    pub suppressed: u64,
    pub cancelled: u64,
}

pub struct Campaigns {
    spool: Spool,
    stats: DashMap<String, CampaignStats>,
    tenants: DashMap<String, Saved>,
    buckets: Mutex<HashMap<String, Gcra>>,
    cfg: BreakerCfg,
    /// Outcomes per tenant, all its campaigns together (for the tenant's breaker).
    tenant_counts: DashMap<String, Counts>,
    /// Where the breaker starts counting, by spool key: an operator's resume sets it to the
    /// counts of that moment, so a resumed campaign or tenant is judged on what follows.
    baselines: DashMap<String, (u64, u64, u64)>,
    /// The counters last written, by spool key (`campaign:…`, `tenant:…`).
    written: Mutex<HashMap<String, Counts>>,
}

/// Key of a campaign ("" when none was given).
pub fn key(campaign: Option<&str>) -> String {
    campaign.unwrap_or("").to_string()
}

impl Campaigns {
    pub fn open(spool: Spool, cfg: BreakerCfg) -> Result<Campaigns, crate::spool::SpoolError> {
        let c = Campaigns {
            spool,
            stats: DashMap::new(),
            tenants: DashMap::new(),
            buckets: Mutex::new(Default::default()),
            cfg,
            tenant_counts: DashMap::new(),
            baselines: DashMap::new(),
            written: Mutex::new(Default::default()),
        };
        for (k, v) in c.spool.kv_scan(TABLE)? {
            let Ok(saved) = serde_json::from_slice::<Saved>(&v) else {
                continue;
            };
            if let Some(t) = k.strip_prefix("tenant:") {
                if let Some(counts) = saved.counts {
                    c.tenant_counts.insert(t.to_string(), counts);
                    if let Ok(mut w) = c.written.lock() {
                        w.insert(k.clone(), counts);
                    }
                }
                c.tenants.insert(t.to_string(), saved);
            } else if let Some(name) = k.strip_prefix("campaign:") {
                let mut s = c.stats.entry(name.to_string()).or_default();
                s.campaign = name.to_string();
                s.state = saved.state;
                s.reason = saved.reason;
                s.rate_cap_per_hour = saved.rate_cap;
                if s.tenant.is_none() {
                    s.tenant = saved.tenant;
                }
                if let Some(counts) = saved.counts {
                    counts.apply(&mut s);
                    if let Ok(mut w) = c.written.lock() {
                        w.insert(k.clone(), counts);
                    }
                }
            }
        }
        Ok(c)
    }

    async fn persist(&self, k: String, saved: &Saved) {
        let bytes = serde_json::to_vec(saved).ok();
        if let Err(e) = self.spool.kv_put(TABLE, k, bytes).await {
            tracing::error!(error = %e, "cannot persist campaign state");
        }
    }

    fn saved_of(s: &CampaignStats) -> Saved {
        Saved {
            state: s.state,
            reason: s.reason.clone(),
            rate_cap: s.rate_cap_per_hour,
            counts: Some(Counts::of(s)),
            tenant: s.tenant.clone(),
        }
    }

    /// Write the counters of every campaign and tenant whose counters changed since the
    /// last write.
    pub async fn save_counts(&self) {
        let todo: Vec<(String, Saved)> = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let campaigns = self
                .stats
                .iter()
                .map(|s| (format!("campaign:{}", s.key()), Self::saved_of(s.value())));
            // one map at a time: the counts first, then each tenant's state
            let counts: Vec<(String, Counts)> = self
                .tenant_counts
                .iter()
                .map(|c| (c.key().clone(), *c.value()))
                .collect();
            let tenants = counts.into_iter().map(|(t, c)| {
                let mut saved = self.tenants.get(&t).map(|s| s.clone()).unwrap_or_default();
                saved.counts = Some(c);
                (format!("tenant:{t}"), saved)
            });
            campaigns
                .chain(tenants)
                .filter(|(k, saved)| {
                    saved.counts.is_some() && written.get(k) != saved.counts.as_ref()
                })
                .collect()
        };
        for (k, saved) in todo {
            self.persist(k.clone(), &saved).await;
            if let (Some(c), Ok(mut w)) = (saved.counts, self.written.lock()) {
                w.insert(k, c);
            }
        }
    }

    /// The task that writes the counters every [`SAVE_EVERY`] and at shutdown.
    pub async fn keep(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(SAVE_EVERY) => false,
                _ = shutdown.changed() => true,
            };
            self.save_counts().await;
            if stop {
                return;
            }
        }
    }

    /// Is a new injection into this campaign allowed?
    pub fn accepts(&self, campaign: Option<&str>, tenant: Option<&str>) -> Result<(), String> {
        if let Some(s) = self.stats.get(&key(campaign)) {
            if s.state == State::Cancelled {
                return Err(format!("campaign {:?} was cancelled", s.campaign));
            }
        }
        if let Some(t) = tenant.and_then(|t| self.tenants.get(t)) {
            if t.state == State::Cancelled {
                return Err(format!("tenant {:?} was cancelled", tenant.unwrap_or("")));
            }
        }
        Ok(())
    }

    pub fn on_accepted(&self, campaign: Option<&str>, tenant: Option<&str>, n: u64) {
        let mut s = self.stats.entry(key(campaign)).or_default();
        s.campaign = key(campaign);
        if s.tenant.is_none() {
            s.tenant = tenant.map(str::to_string);
        }
        s.accepted += n;
        s.queued += n;
    }

    /// Deliveries recovered from the spool at start count as queued.
    pub fn on_recovered(&self, campaign: Option<&str>, tenant: Option<&str>) {
        let mut s = self.stats.entry(key(campaign)).or_default();
        s.campaign = key(campaign);
        if s.tenant.is_none() {
            s.tenant = tenant.map(str::to_string);
        }
        s.queued += 1;
    }

    /// Count an outcome. Returns a reason when the circuit breaker trips (the campaign is
    /// then paused).
    pub async fn on_outcome(
        &self,
        campaign: Option<&str>,
        result: &str,
        hard: bool,
        complaint: bool,
    ) -> Option<String> {
        let k = key(campaign);
        let trip = {
            let mut s = self.stats.entry(k.clone()).or_default();
            s.campaign = k.clone();
            let final_outcome = matches!(
                result,
                "delivered" | "bounced" | "expired" | "suppressed" | "cancelled"
            );
            if final_outcome {
                s.queued = s.queued.saturating_sub(1);
            }
            match result {
                "delivered" => s.delivered += 1,
                "deferred" => s.deferred += 1,
                "bounced" | "returned" => s.bounced += 1,
                "expired" => s.expired += 1,
                "suppressed" => s.suppressed += 1,
                "cancelled" => s.cancelled += 1,
                _ => {}
            }
            if hard {
                s.hard_bounces += 1;
            }
            if complaint {
                s.complaints += 1;
            }
            let done = s.delivered + s.bounced + s.expired;
            if s.state == State::Active && !k.is_empty() {
                self.judge(&format!("campaign:{k}"), done, s.hard_bounces, s.complaints)
            } else {
                None
            }
        };
        if let Some(reason) = &trip {
            self.set_state(&k, State::Paused, Some(reason.clone()))
                .await;
        }
        trip
    }

    /// The breaker's verdict on `done` final outcomes with these hard bounces and
    /// complaints: a reason when a ratio is over its limit.
    fn judge(&self, key: &str, done: u64, hard: u64, complaints: u64) -> Option<String> {
        let (d0, h0, c0) = self.baselines.get(key).map(|b| *b).unwrap_or_default();
        let (done, hard, complaints) = (
            done.saturating_sub(d0),
            hard.saturating_sub(h0),
            complaints.saturating_sub(c0),
        );
        if !self.cfg.breaker || done == 0 || done < self.cfg.breaker_min_deliveries {
            return None;
        }
        let hard_ratio = hard as f64 / done as f64;
        let complaint_ratio = complaints as f64 / done as f64;
        if hard_ratio > self.cfg.max_hard_bounce_ratio {
            Some(format!(
                "circuit breaker: hard-bounce ratio {:.1} % over {} deliveries (limit {:.1} %)",
                hard_ratio * 100.0,
                done,
                self.cfg.max_hard_bounce_ratio * 100.0
            ))
        } else if complaint_ratio > self.cfg.max_complaint_ratio {
            Some(format!(
                "circuit breaker: complaint ratio {:.2} % over {} deliveries (limit {:.2} %)",
                complaint_ratio * 100.0,
                done,
                self.cfg.max_complaint_ratio * 100.0
            ))
        } else {
            None
        }
    }

    /// Count an outcome against its tenant: all the tenant's campaigns together, so a list
    /// spread over many small campaigns (each under `breaker_min_deliveries`) is still
    /// judged. Returns a reason when the tenant's breaker trips (the tenant is then paused:
    /// every campaign of it waits).
    pub async fn on_tenant_outcome(
        &self,
        tenant: Option<&str>,
        result: &str,
        hard: bool,
        complaint: bool,
    ) -> Option<String> {
        let t = tenant?;
        // one map at a time (no guard held while another map is locked)
        let active = self.tenants.get(t).is_none_or(|s| s.state == State::Active);
        let (done, hard_n, complaints) = {
            let mut c = self.tenant_counts.entry(t.to_string()).or_default();
            match result {
                "delivered" => c.delivered += 1,
                "bounced" | "returned" => c.bounced += 1,
                "expired" => c.expired += 1,
                _ => {}
            }
            if hard {
                c.hard_bounces += 1;
            }
            if complaint {
                c.complaints += 1;
            }
            (
                c.delivered + c.bounced + c.expired,
                c.hard_bounces,
                c.complaints,
            )
        };
        let trip = if active {
            self.judge(&format!("tenant:{t}"), done, hard_n, complaints)
                .map(|r| format!("tenant {r}"))
        } else {
            None
        };
        if let Some(reason) = &trip {
            self.set_tenant_state(t, State::Paused, Some(reason.clone()))
                .await;
        }
        trip
    }

    /// A late complaint (ARF report) for a campaign.
    pub async fn on_complaint(&self, campaign: Option<&str>) -> Option<String> {
        self.on_outcome(campaign, "complaint", false, true).await
    }

    pub async fn set_state(&self, campaign: &str, state: State, reason: Option<String>) {
        let saved = {
            let mut s = self.stats.entry(campaign.to_string()).or_default();
            s.campaign = campaign.to_string();
            if state == State::Active && s.state != State::Active {
                // resumed: the breaker judges what follows
                self.baselines.insert(
                    format!("campaign:{campaign}"),
                    (
                        s.delivered + s.bounced + s.expired,
                        s.hard_bounces,
                        s.complaints,
                    ),
                );
            }
            s.state = state;
            s.reason = reason;
            Self::saved_of(&s)
        };
        self.persist(format!("campaign:{campaign}"), &saved).await;
    }

    pub async fn set_tenant_state(&self, tenant: &str, state: State, reason: Option<String>) {
        let counts = self.tenant_counts.get(tenant).map(|c| *c);
        let mut saved = {
            let mut t = self.tenants.entry(tenant.to_string()).or_default();
            if let (true, Some(c)) = (state == State::Active && t.state != State::Active, counts) {
                // resumed: the breaker judges what follows
                self.baselines.insert(
                    format!("tenant:{tenant}"),
                    (
                        c.delivered + c.bounced + c.expired,
                        c.hard_bounces,
                        c.complaints,
                    ),
                );
            }
            t.state = state;
            t.reason = reason;
            t.clone()
        };
        saved.counts = counts;
        self.persist(format!("tenant:{tenant}"), &saved).await;
    }

    pub async fn set_rate_cap(&self, campaign: &str, per_hour: Option<u64>) {
        let saved = {
            let mut s = self.stats.entry(campaign.to_string()).or_default();
            s.campaign = campaign.to_string();
            s.rate_cap_per_hour = per_hour;
            Self::saved_of(&s)
        };
        if let Ok(mut b) = self.buckets.lock() {
            b.remove(campaign);
        }
        self.persist(format!("campaign:{campaign}"), &saved).await;
    }

    /// Must a delivery of this campaign / tenant wait (paused or cancelled)?
    pub fn held(&self, campaign: Option<&str>, tenant: Option<&str>) -> bool {
        let c = self
            .stats
            .get(&key(campaign))
            .is_some_and(|s| s.state != State::Active);
        c || tenant
            .and_then(|t| self.tenants.get(t))
            .is_some_and(|t| t.state != State::Active)
    }

    /// Take a token of the campaign's rate cap; `Err(wait_ms)` when over it.
    pub fn take_token(&self, campaign: Option<&str>, now: u64) -> Result<(), u64> {
        let k = key(campaign);
        let Some(cap) = self.stats.get(&k).and_then(|s| s.rate_cap_per_hour) else {
            return Ok(());
        };
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.entry(k)
            .or_insert_with(|| {
                Gcra::per_hour(cap as f64, crate::throttle::hourly_burst(cap as f64))
            })
            .check(now)
    }

    pub fn get(&self, campaign: &str) -> Option<CampaignStats> {
        self.stats.get(campaign).map(|s| s.clone())
    }

    pub fn list(&self) -> Vec<CampaignStats> {
        let mut v: Vec<CampaignStats> = self.stats.iter().map(|s| s.value().clone()).collect();
        v.sort_by(|a, b| a.campaign.cmp(&b.campaign));
        v
    }

    pub fn tenant_states(&self) -> Vec<(String, State, Option<String>)> {
        let mut v: Vec<_> = self
            .tenants
            .iter()
            .map(|t| (t.key().clone(), t.value().state, t.value().reason.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaigns(dir: &std::path::Path) -> Campaigns {
        let spool =
            Spool::open(&dir.join("s.redb"), crate::Clock::System, 86_400_000).expect("spool");
        let cfg = BreakerCfg {
            breaker: true,
            breaker_min_deliveries: 4,
            max_hard_bounce_ratio: 0.2,
            max_complaint_ratio: 0.5,
        };
        Campaigns::open(spool, cfg).expect("campaigns")
    }

    #[tokio::test]
    async fn a_resumed_tenant_is_judged_on_what_follows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = campaigns(dir.path());
        let t = Some("acme");
        // four campaigns of one hard bounce each: none reaches 4 outcomes, the tenant does
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(c.on_outcome(Some(name), "bounced", true, false).await, None);
            assert_eq!(
                c.on_tenant_outcome(t, "bounced", true, false).await,
                None,
                "{i}"
            );
        }
        assert_eq!(c.on_outcome(Some("d"), "bounced", true, false).await, None);
        let trip = c.on_tenant_outcome(t, "bounced", true, false).await;
        assert!(trip.is_some_and(|r| r.starts_with("tenant circuit breaker")));
        assert!(c.held(Some("a"), t), "the tenant's campaigns wait");
        // the operator resumes: the next hard bounce alone does not trip it again
        c.set_tenant_state("acme", State::Active, None).await;
        assert!(!c.held(Some("a"), t));
        for _ in 0..3 {
            assert_eq!(c.on_tenant_outcome(t, "bounced", true, false).await, None);
        }
        // four more since the resume: judged again, and tripped
        assert!(c
            .on_tenant_outcome(t, "bounced", true, false)
            .await
            .is_some());
        // clean tenants and outcomes without a tenant are left alone
        for _ in 0..10 {
            assert_eq!(
                c.on_tenant_outcome(Some("clean"), "delivered", false, false)
                    .await,
                None
            );
            assert_eq!(
                c.on_tenant_outcome(None, "bounced", true, false).await,
                None
            );
        }
        c.spool.close();
    }
}
