//! Outcomes: every attempt ends in exactly one of delivered / deferred / bounced / expired.
//! Each updates the spool, the queue counters and emits its event.

use super::Ctx;
use crate::bounce::{BounceType, Reason};
use crate::clock::rfc3339;
use crate::events::Event;
use crate::quarantine::Effect;
use crate::spool::{Attempt, Delivery, FinalState};
use crate::verp::id_str;
use rand::Rng;

/// Where and how an attempt happened.
#[derive(Debug, Clone, Default)]
pub struct AttemptInfo {
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub source_ip: Option<String>,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub response: String,
    pub tls: Option<String>,
}

pub fn base_event(kind: &str, d: &Delivery, envelope_from: String, ts_ms: u64) -> Event {
    Event {
        ts: rfc3339(ts_ms),
        event: kind.to_string(),
        id: Some(id_str(d.id)),
        campaign: d.campaign().map(str::to_string),
        tenant: d.tenant().map(str::to_string),
        recipient: Some(d.recipient.to_string()),
        recipient_id: d.recipient_id().map(str::to_string),
        envelope_from: Some(envelope_from),
        ..Event::default()
    }
}

fn attempt_event(kind: &str, d: &Delivery, env: String, a: &AttemptInfo, ts: u64) -> Event {
    let mut e = base_event(kind, d, env, ts);
    e.mx = a.mx.clone();
    e.ip = a.ip.clone();
    e.source_ip = a.source_ip.clone();
    e.code = a.code;
    e.enhanced = a.enhanced.clone();
    e.response = Some(a.response.clone());
    e.attempt = Some(d.attempts);
    e.tls = Some(a.tls.clone().unwrap_or_else(|| "none".into()));
    e
}

fn record(d: &mut Delivery, a: &AttemptInfo, now: u64) {
    d.record_attempt(Attempt {
        ts: now,
        mx: a.mx.clone(),
        ip: a.ip.clone(),
        code: a.code,
        enhanced: a.enhanced.clone(),
        response: a.response.clone(),
    });
}

fn short(a: &AttemptInfo) -> String {
    let mut s = a.response.clone();
    s.truncate(200);
    s
}

impl Ctx {
    /// Emit an event once its spool write is committed (so the API agrees with the event),
    /// without making the connection wait for that commit.
    fn emit_after(&self, committed: Option<crate::spool::Committed>, ev: Event) {
        match committed {
            Some(c) => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    let _ = c.await;
                    events.emit(ev);
                });
            }
            None => self.events.emit(ev),
        }
    }

    /// Campaign and tenant counters and their circuit breakers.
    async fn campaign(&self, d: &Delivery, result: &str, hard: bool, complaint: bool) {
        if let Some(reason) = self
            .campaigns
            .on_outcome(d.campaign(), result, hard, complaint)
            .await
        {
            self.campaign_paused(d.campaign(), d.tenant(), &reason);
        }
        if let Some(reason) = self
            .campaigns
            .on_tenant_outcome(d.tenant(), result, hard, complaint)
            .await
        {
            self.tenant_paused(d.tenant(), &reason);
        }
    }

    /// Announce an automatic tenant pause (the tenant-wide circuit breaker).
    pub fn tenant_paused(&self, tenant: Option<&str>, reason: &str) {
        tracing::warn!(tenant, reason, "tenant paused");
        self.metrics.breaker_trips.inc();
        self.events.emit(crate::events::Event {
            ts: crate::clock::rfc3339(self.clock.now_ms()),
            event: "tenant_paused".into(),
            tenant: tenant.map(str::to_string),
            message: Some(reason.to_string()),
            ..crate::events::Event::default()
        });
    }

    /// Announce an automatic campaign pause (circuit breaker).
    pub fn campaign_paused(&self, campaign: Option<&str>, tenant: Option<&str>, reason: &str) {
        tracing::warn!(campaign, reason, "campaign paused");
        self.metrics.breaker_trips.inc();
        self.events.emit(crate::events::Event {
            ts: crate::clock::rfc3339(self.clock.now_ms()),
            event: "campaign_paused".into(),
            campaign: campaign.map(str::to_string),
            tenant: tenant.map(str::to_string),
            message: Some(reason.to_string()),
            ..crate::events::Event::default()
        });
    }

    fn count(&self, d: &Delivery, qid: Option<u64>, result: &str, final_outcome: bool, now: u64) {
        self.sched.note_result(qid, result);
        let (rule, source) = self.sched.labels_of(qid);
        let m = &self.metrics;
        m.deliveries.with_label_values(&[&rule, result]).inc();
        if let Some(s) = source {
            if matches!(result, "delivered" | "deferred" | "bounced") {
                m.source_deliveries.with_label_values(&[&s, result]).inc();
            }
        }
        if final_outcome {
            let secs = now.saturating_sub(d.created_ms) as f64 / 1000.0;
            m.latency.with_label_values(&[result]).observe(secs);
        }
    }

    /// Qualify a reply with the bounce rules.
    fn qualify(&self, a: &AttemptInfo) -> (BounceType, Reason) {
        let c = self
            .quarantine
            .rules()
            .classify_reply(a.code, a.enhanced.as_deref(), &a.response);
        (c.bounce_type, c.reason)
    }

    /// Feed a final failure to the quarantine (and the bounce metrics).
    async fn final_failure(
        &self,
        d: &Delivery,
        t: BounceType,
        r: Reason,
        response: &str,
        now: u64,
    ) {
        self.metrics
            .bounces
            .with_label_values(&[t.as_str(), r.as_str()])
            .inc();
        match self
            .quarantine
            .record_failure(d.tenant(), &d.recipient, t, r, response, now)
            .await
        {
            Ok(Effect::Quarantined) => {
                tracing::info!(recipient = %d.recipient, reason = r.as_str(), "address quarantined")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot record quarantine"),
        }
    }

    pub async fn delivered(&self, mut d: Delivery, a: AttemptInfo, qid: Option<u64>) {
        let now = self.clock.now_ms();
        record(&mut d, &a, now);
        if let Err(e) = self
            .quarantine
            .record_success(d.tenant(), &d.recipient)
            .await
        {
            tracing::error!(error = %e, "cannot reset quarantine count");
        }
        let committed = match self.spool.finish_detached(&d, FinalState::Delivered) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(id = %id_str(d.id), error = %e, "cannot record delivery");
                None
            }
        };
        self.count(&d, qid, "delivered", true, now);
        self.campaign(&d, "delivered", false, false).await;
        self.emit_after(
            committed,
            attempt_event("delivered", &d, self.verp.envelope_of(&d), &a, now),
        );
        self.sched.settle(qid, Some(short(&a)));
    }

    pub async fn bounced(&self, mut d: Delivery, a: AttemptInfo, qid: Option<u64>) {
        let now = self.clock.now_ms();
        record(&mut d, &a, now);
        let committed = match self.spool.finish_detached(&d, FinalState::Bounced) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(id = %id_str(d.id), error = %e, "cannot record bounce");
                None
            }
        };
        self.count(&d, qid, "bounced", true, now);
        let (t, r) = self.qualify(&a);
        self.final_failure(&d, t, r, &a.response, now).await;
        self.campaign(&d, "bounced", t == BounceType::Hard, r == Reason::Complaint)
            .await;
        let mut ev = attempt_event("bounced", &d, self.verp.envelope_of(&d), &a, now);
        ev.bounce_type = Some(t.as_str().into());
        ev.bounce_reason = Some(r.as_str().into());
        ev.bounce_source = Some("smtp".into());
        self.emit_after(committed, ev);
        self.sched.settle(qid, Some(short(&a)));
    }

    /// A temporary failure: schedule the next attempt (with ±10 % jitter so a wave of
    /// deferrals does not come back in the same second), never past the expiry.
    pub async fn deferred(&self, mut d: Delivery, a: AttemptInfo, qid: Option<u64>) {
        let now = self.clock.now_ms();
        record(&mut d, &a, now);
        let retry = &self.cfg.delivery.retry;
        let idx = (d.attempts as usize)
            .saturating_sub(1)
            .min(retry.len().saturating_sub(1));
        let base = retry
            .get(idx)
            .map(|r| r.0.as_millis() as u64)
            .unwrap_or(300_000);
        let jitter = rand::rng().random_range(0..=base / 5);
        d.next_ms = now + base - base / 10 + jitter;
        let committed = match self.spool.update_detached(&d) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(id = %id_str(d.id), error = %e, "cannot record deferral");
                None
            }
        };
        self.count(&d, qid, "deferred", false, now);
        self.campaign(&d, "deferred", false, false).await;
        let (t, r) = self.qualify(&a);
        let mut ev = attempt_event("deferred", &d, self.verp.envelope_of(&d), &a, now);
        ev.bounce_type = Some(t.as_str().into());
        ev.bounce_reason = Some(r.as_str().into());
        ev.next_attempt = Some(rfc3339(d.next_ms.min(d.expires_ms)));
        self.emit_after(committed, ev);
        self.sched.add(d);
        self.sched.settle(qid, Some(short(&a)));
    }

    pub async fn expired(&self, d: Delivery, qid: Option<u64>) {
        let now = self.clock.now_ms();
        if let Err(e) = self.spool.finish(&d, FinalState::Expired).await {
            tracing::error!(id = %id_str(d.id), error = %e, "cannot record expiry");
        }
        self.count(&d, qid, "expired", true, now);
        self.campaign(&d, "expired", false, false).await;
        let mut ev = base_event("expired", &d, self.verp.envelope_of(&d), now);
        ev.attempt = Some(d.attempts);
        if let Some(last) = d.history().last() {
            let c = self.quarantine.rules().classify_reply(
                last.code,
                last.enhanced.as_deref(),
                &last.response,
            );
            // an expiry is one failed delivery: it counts once toward the soft threshold
            self.final_failure(&d, c.bounce_type, c.reason, &last.response, now)
                .await;
            ev.bounce_type = Some(c.bounce_type.as_str().into());
            ev.bounce_reason = Some(c.reason.as_str().into());
            ev.code = last.code;
            ev.enhanced = last.enhanced.clone();
            ev.mx = last.mx.clone();
            ev.ip = last.ip.clone();
            ev.response = Some(format!(
                "expired after {} attempts; last: {}",
                d.attempts, last.response
            ));
        } else {
            ev.response = Some("expired before any attempt".into());
        }
        self.events.emit(ev);
        self.sched.settle(qid, None);
    }
}

impl Ctx {
    /// The recipient is quarantined: drop the delivery with a `suppressed` event.
    pub async fn suppressed(&self, d: Delivery, reason: &str, qid: Option<u64>) {
        let now = self.clock.now_ms();
        if let Err(e) = self.spool.finish(&d, FinalState::Suppressed).await {
            tracing::error!(id = %id_str(d.id), error = %e, "cannot record suppression");
        }
        self.count(&d, qid, "suppressed", true, now);
        self.campaign(&d, "suppressed", false, false).await;
        let mut ev = base_event("suppressed", &d, self.verp.envelope_of(&d), now);
        ev.attempt = Some(d.attempts);
        ev.response = Some(format!("recipient is quarantined ({reason})"));
        ev.bounce_reason = Some(reason.to_string());
        self.events.emit(ev);
        self.sched.settle(qid, None);
    }
}

impl Ctx {
    /// The campaign (or tenant) was cancelled: drop the delivery with a `cancelled` event.
    pub async fn cancelled(&self, d: Delivery, qid: Option<u64>) {
        let now = self.clock.now_ms();
        if let Err(e) = self.spool.finish(&d, FinalState::Cancelled).await {
            tracing::error!(id = %id_str(d.id), error = %e, "cannot record cancellation");
        }
        self.count(&d, qid, "cancelled", true, now);
        self.campaign(&d, "cancelled", false, false).await;
        let mut ev = base_event("cancelled", &d, self.verp.envelope_of(&d), now);
        ev.attempt = Some(d.attempts);
        self.events.emit(ev);
        self.sched.settle(qid, None);
    }
}
