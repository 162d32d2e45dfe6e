//! Intake: turns a submission (HTTP or SMTP) into durable, queued deliveries.
//!
//! Validate everything first, then store the body once and one small record per recipient
//! in a single group-committed spool write, and only then acknowledge and queue them.

pub mod address;
pub mod message;
pub mod smtp;

use crate::clock::Clock;
use crate::config::Config;
use crate::events::Events;
use crate::queue::Scheduler;
use crate::spool::{Delivery, Extra, Priority, Spool, SpoolError};
use crate::verp::{id_str, Verp};
use std::sync::Arc;
use std::time::Duration;

/// One recipient of a submission.
#[derive(Debug, Clone)]
pub struct RecipientSpec {
    pub email: String,
    pub id: Option<String>,
    /// Personalisation variables for `{{name}}` placeholders.
    pub vars: Option<crate::template::Vars>,
}

#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    pub pool: Option<String>,
    pub priority: Priority,
    pub expires_in: Option<Duration>,
    pub recipients: Vec<RecipientSpec>,
    pub content: Vec<u8>,
    /// Take X-Sluice-* / x-job / x-virtual-mta headers out of the content (SMTP intake).
    pub strip_intake_headers: bool,
    /// "http" or "smtp" (for metrics).
    pub channel: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AcceptedRecipient {
    pub id: String,
    pub recipient: String,
    pub envelope_from: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedRecipient {
    pub recipient: String,
    pub error: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Receipt {
    pub accepted: usize,
    pub messages: Vec<AcceptedRecipient>,
    pub rejected: Vec<RejectedRecipient>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Message(#[from] message::MessageError),
    #[error("no valid recipient")]
    NoRecipients(Vec<RejectedRecipient>),
    #[error("{0} recipients in one submission; the limit is {1}")]
    TooManyRecipients(usize, usize),
    #[error("{0}")]
    Invalid(String),
    #[error("content: {0}")]
    Template(#[from] crate::template::TemplateError),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Spool(#[from] SpoolError),
}

pub struct Intake {
    pub cfg: Arc<Config>,
    pub spool: Spool,
    pub sched: Arc<Scheduler>,
    pub events: Events,
    pub verp: Verp,
    pub clock: Clock,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub quarantine: Arc<crate::quarantine::Quarantine>,
    pub campaigns: Arc<crate::campaign::Campaigns>,
    /// Counts accepted recipients so freed intake buffers go back to the OS.
    pub reclaim: Arc<crate::memory::Reclaim>,
}

fn clean_label(what: &str, v: Option<String>) -> Result<Option<String>, IntakeError> {
    match v {
        Some(s) if s.chars().any(|c| c.is_control()) => Err(IntakeError::Invalid(format!(
            "{what} contains control characters"
        ))),
        Some(s) if s.len() > 200 => Err(IntakeError::Invalid(format!(
            "{what} is longer than 200 characters"
        ))),
        Some(s) if s.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

impl Intake {
    /// The quarantine reason of an address, if it must not be mailed.
    pub fn quarantined(&self, tenant: Option<&str>, address: &str) -> Option<String> {
        self.quarantine
            .blocked(tenant, address, self.clock.now_ms())
    }

    /// Is there room for `n` more deliveries? (back-pressure)
    pub fn check_capacity(&self, n: usize) -> Result<(), IntakeError> {
        let queued = self.sched.totals().queued;
        if queued + n as u64 > self.cfg.spool.max_queued {
            return Err(IntakeError::Busy(format!(
                "queue is full ({queued} deliveries queued, limit {}); try again later",
                self.cfg.spool.max_queued
            )));
        }
        if let Some(pct) = self.spool.disk_used_percent() {
            if pct >= self.cfg.spool.max_disk_percent as f64 {
                return Err(IntakeError::Busy(format!(
                    "spool disk is {pct:.0}% full (limit {}%); try again later",
                    self.cfg.spool.max_disk_percent
                )));
            }
        }
        Ok(())
    }

    /// Validate, store durably, then queue. Returns only once the deliveries are fsynced.
    pub async fn submit(&self, sub: Submission) -> Result<Receipt, IntakeError> {
        let channel = sub.channel;
        let r = self.submit_inner(sub).await;
        match &r {
            Ok(receipt) => self
                .metrics
                .injected
                .with_label_values(&[channel])
                .inc_by(receipt.accepted as u64),
            Err(e) => {
                let reason = match e {
                    IntakeError::Busy(_) => "busy",
                    IntakeError::Spool(_) => "error",
                    _ => "invalid",
                };
                self.metrics
                    .intake_refused
                    .with_label_values(&[reason])
                    .inc();
            }
        }
        r
    }

    async fn submit_inner(&self, sub: Submission) -> Result<Receipt, IntakeError> {
        let max_rcpt = self.cfg.intake.max_recipients;
        if sub.recipients.len() > max_rcpt {
            return Err(IntakeError::TooManyRecipients(
                sub.recipients.len(),
                max_rcpt,
            ));
        }
        self.check_capacity(sub.recipients.len())?;
        let now = self.clock.now_ms();
        let body_id = self.spool.next_id();
        let prepared = message::prepare(
            &sub.content,
            self.cfg.intake.max_message_size,
            &self.cfg.hostname,
            now,
            body_id,
            sub.strip_intake_headers,
        )?;
        let campaign = clean_label("campaign", sub.campaign.or(prepared.headers.campaign))?;
        let tenant = clean_label("tenant", sub.tenant.or(prepared.headers.tenant))?;
        let pool = clean_label("pool", sub.pool.or(prepared.headers.pool))?;
        if let Err(e) = self
            .campaigns
            .accepts(campaign.as_deref(), tenant.as_deref())
        {
            return Err(IntakeError::Invalid(e));
        }
        if let Some(p) = &pool {
            if !self.sched.has_pool(p) {
                return Err(IntakeError::Invalid(format!("no pool named {p:?}")));
            }
        }
        let max_age = self.cfg.delivery.max_age.0;
        let ttl = sub.expires_in.unwrap_or(max_age).min(max_age);
        if ttl.is_zero() {
            return Err(IntakeError::Invalid("expires_in must be above zero".into()));
        }
        let expires_ms = now + ttl.as_millis() as u64;
        let template = crate::template::Template::parse(&prepared.content)?;
        let verp_domain = self.verp.domain_for(prepared.from_domain.as_deref());
        let meta = Arc::new(crate::spool::Meta {
            campaign: campaign.clone(),
            tenant: tenant.clone(),
            pool: pool.clone(),
            priority: sub.priority,
            verp_domain: (verp_domain != self.verp.domain()).then(|| verp_domain.clone()),
        });
        let mut deliveries = Vec::with_capacity(sub.recipients.len());
        let mut rejected = Vec::new();
        for r in sub.recipients {
            if let Some(id) = &r.id {
                if id.chars().any(|c| c.is_control()) || id.len() > 200 {
                    rejected.push(RejectedRecipient {
                        recipient: r.email,
                        error:
                            "recipient id must be at most 200 characters without control characters"
                                .into(),
                    });
                    continue;
                }
            }
            if !template.is_empty() {
                let empty = crate::template::Vars::new();
                if let Err(e) = template.check(r.vars.as_ref().unwrap_or(&empty)) {
                    rejected.push(RejectedRecipient {
                        recipient: r.email,
                        error: e.to_string(),
                    });
                    continue;
                }
            }
            match address::parse(&r.email) {
                Ok(a)
                    if self
                        .quarantined(tenant.as_deref(), &a.as_string())
                        .is_some() =>
                {
                    let reason = self
                        .quarantined(tenant.as_deref(), &a.as_string())
                        .unwrap_or_default();
                    rejected.push(RejectedRecipient {
                        recipient: r.email,
                        error: format!("address is quarantined ({reason})"),
                    });
                }
                Ok(a) => {
                    let id = self.spool.next_id();
                    deliveries.push(Delivery {
                        id,
                        body_id,
                        recipient: a.as_string().into(),
                        meta: meta.clone(),
                        created_ms: now,
                        expires_ms,
                        attempts: 0,
                        next_ms: now,
                        extra: Extra::boxed(r.id.map(String::into_boxed_str), r.vars, Vec::new()),
                    });
                }
                Err(e) => rejected.push(RejectedRecipient {
                    recipient: r.email,
                    error: e.to_string(),
                }),
            }
        }
        if deliveries.is_empty() {
            return Err(IntakeError::NoRecipients(rejected));
        }
        self.spool
            .inject(body_id, Arc::new(prepared.content), &deliveries)
            .await?;
        let messages: Vec<AcceptedRecipient> = deliveries
            .iter()
            .map(|d| AcceptedRecipient {
                id: id_str(d.id),
                recipient: d.recipient.to_string(),
                envelope_from: self.verp.envelope_of(d),
            })
            .collect();
        self.events.emit_accepted(&deliveries, &self.verp, now);
        self.reclaim.accepted(deliveries.len() as u64);
        self.campaigns.on_accepted(
            campaign.as_deref(),
            tenant.as_deref(),
            deliveries.len() as u64,
        );
        self.sched.add_many(deliveries);
        Ok(Receipt {
            accepted: messages.len(),
            messages,
            rejected,
        })
    }
}
