//! Quarantine: addresses that must not be mailed (bounced, complained, unsubscribed, imported).
//!
//! One entry per address (optionally scoped to a tenant): error count, first and last error,
//! reason, quarantined_at, release_at. Stored in the spool's redb file (survives restarts)
//! and mirrored in memory so intake and delivery check it without I/O.
//!
//! Policy: a hard bounce (or a complaint) quarantines at once; a soft one at the reason's
//! `quarantine_after`-th failed delivery within the window (default 30 days); `refused` and
//! `unreachable` never quarantine (they are about the sender); `mailbox_full` is released
//! after its `release_after` (30 days); a successful delivery resets the soft count.

use crate::bounce::{BounceRules, BounceType, Reason};
use crate::spool::{Spool, SpoolError};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const TABLE: &str = "quarantine";
/// Soft errors older than this no longer count.
pub const SOFT_WINDOW_MS: u64 = 30 * 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub reason: String,
    pub bounce_type: String,
    pub error_count: u32,
    pub first_error_ms: u64,
    pub last_error_ms: u64,
    pub quarantined_at: Option<u64>,
    pub release_at: Option<u64>,
    #[serde(default)]
    pub last_response: Option<String>,
}

impl Entry {
    pub fn blocks(&self, now: u64) -> bool {
        self.quarantined_at.is_some() && self.release_at.is_none_or(|r| r > now)
    }
}

/// What a recorded failure did to an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    Counted(u32),
    Quarantined,
}

pub struct Quarantine {
    spool: Spool,
    entries: DashMap<String, Entry>,
    rules: std::sync::RwLock<Arc<BounceRules>>,
}

fn key(tenant: Option<&str>, address: &str) -> String {
    format!(
        "{}\u{0}{}",
        tenant.unwrap_or(""),
        address.to_ascii_lowercase()
    )
}

impl Quarantine {
    /// Load every entry from the spool.
    pub fn open(spool: Spool, rules: Arc<BounceRules>) -> Result<Quarantine, SpoolError> {
        let entries = DashMap::new();
        for (k, v) in spool.kv_scan(TABLE)? {
            if let Ok(e) = serde_json::from_slice::<Entry>(&v) {
                entries.insert(k, e);
            }
        }
        Ok(Quarantine {
            spool,
            entries,
            rules: std::sync::RwLock::new(rules),
        })
    }

    pub fn rules(&self) -> Arc<BounceRules> {
        self.rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn set_rules(&self, rules: Arc<BounceRules>) {
        match self.rules.write() {
            Ok(mut g) => *g = rules,
            Err(e) => *e.into_inner() = rules,
        }
    }

    /// Is this address blocked (globally or for this tenant)? Returns the reason.
    pub fn blocked(&self, tenant: Option<&str>, address: &str, now: u64) -> Option<String> {
        let mut keys = vec![key(None, address)];
        if tenant.is_some() {
            keys.push(key(tenant, address));
        }
        keys.iter().find_map(|k| {
            self.entries
                .get(k)
                .filter(|e| e.blocks(now))
                .map(|e| e.reason.clone())
        })
    }

    async fn store(&self, k: &str, e: Option<&Entry>) -> Result<(), SpoolError> {
        let bytes = match e {
            Some(e) => Some(serde_json::to_vec(e).map_err(|x| SpoolError::Db(x.to_string()))?),
            None => None,
        };
        self.spool.kv_put(TABLE, k.to_string(), bytes).await
    }

    /// A delivery to `address` failed for good (bounced, expired, or a returned bounce).
    pub async fn record_failure(
        &self,
        tenant: Option<&str>,
        address: &str,
        bounce_type: BounceType,
        reason: Reason,
        response: &str,
        now: u64,
    ) -> Result<Effect, SpoolError> {
        if bounce_type == BounceType::Ignored {
            return Ok(Effect::None);
        }
        let policy = self.rules().policy(reason);
        let hard = bounce_type == BounceType::Hard || reason == Reason::Complaint;
        let threshold = if hard { 1 } else { policy.quarantine_after };
        if threshold == 0 {
            return Ok(Effect::None);
        }
        let k = key(tenant, address);
        let mut e = self.entries.get(&k).map(|e| e.clone()).unwrap_or(Entry {
            address: address.to_ascii_lowercase(),
            tenant: tenant.map(str::to_string),
            reason: reason.as_str().to_string(),
            bounce_type: bounce_type.as_str().to_string(),
            error_count: 0,
            first_error_ms: now,
            last_error_ms: now,
            quarantined_at: None,
            release_at: None,
            last_response: None,
        });
        if now.saturating_sub(e.last_error_ms) > SOFT_WINDOW_MS && e.quarantined_at.is_none() {
            e.error_count = 0;
            e.first_error_ms = now;
        }
        e.error_count += 1;
        e.last_error_ms = now;
        e.reason = reason.as_str().to_string();
        e.bounce_type = bounce_type.as_str().to_string();
        e.last_response = Some(response.chars().take(300).collect());
        let effect = if e.error_count >= threshold && !e.blocks(now) {
            e.quarantined_at = Some(now);
            e.release_at = policy.release_after.map(|d| now + d.as_millis() as u64);
            Effect::Quarantined
        } else if e.blocks(now) {
            Effect::Quarantined
        } else {
            Effect::Counted(e.error_count)
        };
        self.store(&k, Some(&e)).await?;
        self.entries.insert(k, e);
        Ok(effect)
    }

    /// A delivery succeeded: the soft count starts over.
    pub async fn record_success(
        &self,
        tenant: Option<&str>,
        address: &str,
    ) -> Result<(), SpoolError> {
        for k in [key(None, address), key(tenant, address)] {
            let reset = self
                .entries
                .get(&k)
                .is_some_and(|e| e.quarantined_at.is_none() && e.error_count > 0);
            if reset {
                self.entries.remove(&k);
                self.store(&k, None).await?;
            }
        }
        Ok(())
    }

    /// Quarantine by hand or by import (reason e.g. "unsubscribed", "imported").
    pub async fn add(
        &self,
        tenant: Option<&str>,
        address: &str,
        reason: &str,
        now: u64,
    ) -> Result<(), SpoolError> {
        let k = key(tenant, address);
        let e = Entry {
            address: address.to_ascii_lowercase(),
            tenant: tenant.map(str::to_string),
            reason: reason.to_string(),
            bounce_type: "manual".into(),
            error_count: 0,
            first_error_ms: now,
            last_error_ms: now,
            quarantined_at: Some(now),
            release_at: None,
            last_response: None,
        };
        self.store(&k, Some(&e)).await?;
        self.entries.insert(k, e);
        Ok(())
    }

    /// Release an address (global and every tenant scope). Returns how many entries went.
    pub async fn remove(&self, address: &str) -> Result<usize, SpoolError> {
        let a = address.to_ascii_lowercase();
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.value().address == a)
            .map(|e| e.key().clone())
            .collect();
        for k in &keys {
            self.entries.remove(k);
            self.store(k, None).await?;
        }
        Ok(keys.len())
    }

    /// Quarantined entries, filtered and paged by address order.
    pub fn list(
        &self,
        reason: Option<&str>,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.value().blocks(now))
            .filter(|e| reason.is_none_or(|r| e.value().reason == r))
            .filter(|e| after.is_none_or(|a| e.value().address.as_str() > a))
            .map(|e| e.value().clone())
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address).then(a.tenant.cmp(&b.tenant)));
        v.truncate(limit);
        v
    }

    /// Addresses in quarantine by reason (for metrics).
    pub fn counts(&self, now: u64) -> Vec<(String, u64)> {
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for e in self.entries.iter() {
            if e.value().blocks(now) {
                *by.entry(e.value().reason.clone()).or_default() += 1;
            }
        }
        by.into_iter().collect()
    }

    /// CSV export: address,tenant,reason,type,error_count,quarantined_at,release_at.
    pub fn export_csv(&self, now: u64) -> String {
        let mut out =
            String::from("address,tenant,reason,type,error_count,quarantined_at,release_at\n");
        for e in self.list(None, None, usize::MAX, now) {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                e.address,
                e.tenant.unwrap_or_default(),
                e.reason,
                e.bounce_type,
                e.error_count,
                e.quarantined_at
                    .map(crate::clock::rfc3339)
                    .unwrap_or_default(),
                e.release_at.map(crate::clock::rfc3339).unwrap_or_default(),
            ));
        }
        out
    }

    /// CSV import: one address per line, optionally `address,tenant,reason` (a header line
    /// starting with "address" is skipped). Returns (imported, rejected lines).
    pub async fn import_csv(
        &self,
        text: &str,
        now: u64,
    ) -> Result<(usize, Vec<String>), SpoolError> {
        let mut n = 0;
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("address")) {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let addr = cols[0];
            if crate::intake::address::parse(addr).is_err() {
                bad.push(format!("line {}: invalid address {addr:?}", i + 1));
                continue;
            }
            let tenant = cols.get(1).filter(|t| !t.is_empty()).copied();
            let reason = cols
                .get(2)
                .filter(|r| !r.is_empty())
                .copied()
                .unwrap_or("imported");
            self.add(tenant, addr, reason, now).await?;
            n += 1;
        }
        Ok((n, bad))
    }
}
