//! The feedback MX: an SMTP listener on `[listen] bounce` for returned mail.
//!
//! It accepts mail only for addresses on `verp.domain` whose VERP code verifies, plus
//! `postmaster@`, `abuse@` and `[verp] fbl_address` there; anything else gets a 5xx at RCPT
//! (never an open relay, never backscatter). What arrives — RFC 3464 DSNs, plain bounces,
//! auto-replies, RFC 5965 ARF complaints — is qualified with the bounce rules, linked to its
//! delivery through the VERP code (of the RCPT, or of the original message inside an ARF
//! report), emitted as a `bounced` event and fed to the quarantine.

use crate::bounce::{classify_message, BounceType, MessageVerdict};
use crate::clock::Clock;
use crate::delivery::outcome::base_event;
use crate::events::{Event, Events};
use crate::metrics::Metrics;
use crate::quarantine::Quarantine;
use crate::smtp_server::Handler;
use crate::spool::{Lookup, Spool};
use crate::verp::{id_str, Verp, VerpError};
use std::net::SocketAddr;
use std::sync::Arc;

pub struct FeedbackHandler {
    pub hostname: String,
    pub verp: Verp,
    pub fbl_local: Option<String>,
    pub spool: Spool,
    pub quarantine: Arc<Quarantine>,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub campaigns: Arc<crate::campaign::Campaigns>,
}

/// Largest returned message accepted (bounces carry the original, usually truncated).
const MAX_SIZE: usize = 10 * 1024 * 1024;

impl FeedbackHandler {
    fn is_role(&self, local: &str) -> bool {
        local == "postmaster"
            || local == "abuse"
            || self.fbl_local.as_deref().is_some_and(|f| f == local)
    }

    /// Qualify one returned message for one recipient address of ours.
    async fn process(&self, rcpt: &str, raw: &[u8]) {
        let now = self.clock.now_ms();
        let rules = self.quarantine.rules();
        let verdict = classify_message(raw, &rules);
        let t = verdict.bounce_type;
        let r = verdict.reason;
        self.metrics
            .bounces
            .with_label_values(&[t.as_str(), r.as_str()])
            .inc();
        // The delivery: the VERP code we were sent to, or (FBL, postmaster) the one of the
        // original message inside.
        let id = self.verp.decode(rcpt).ok().or_else(|| {
            verdict
                .original_envelope
                .as_deref()
                .and_then(|e| self.verp.decode(e).ok())
        });
        let delivery = match id {
            Some(id) => {
                let spool = self.spool.clone();
                match tokio::task::spawn_blocking(move || spool.lookup(id)).await {
                    Ok(Ok(Some(Lookup::Active(d)))) => Some(d),
                    Ok(Ok(Some(Lookup::Finished(f)))) => Some(f.delivery),
                    _ => None,
                }
            }
            None => None,
        };
        if verdict.action.as_deref() == Some("delayed") {
            let mut ev = match &delivery {
                Some(d) => base_event("delayed", d, self.verp.envelope_of(d), now),
                None => Event {
                    ts: crate::clock::rfc3339(now),
                    event: "delayed".into(),
                    ..Event::default()
                },
            };
            ev.response = verdict.diagnostic.clone();
            ev.enhanced = verdict.status.clone();
            self.events.emit(ev);
            return;
        }
        if t == BounceType::Ignored {
            tracing::debug!(
                reason = r.as_str(),
                "ignored returned message (not a failure)"
            );
            return;
        }
        let recipient = delivery
            .as_ref()
            .map(|d| d.recipient.to_string())
            .or_else(|| verdict.recipient.clone());
        let mut ev = match &delivery {
            Some(d) => base_event("bounced", d, self.verp.envelope_of(d), now),
            None => Event {
                ts: crate::clock::rfc3339(now),
                event: "bounced".into(),
                id: id.map(id_str),
                recipient: recipient.clone(),
                ..Event::default()
            },
        };
        fill(&mut ev, &verdict);
        self.events.emit(ev);
        if let Some(d) = &delivery {
            let complaint = r == crate::bounce::Reason::Complaint;
            let hard = t == BounceType::Hard && !complaint;
            let result = if complaint { "complaint" } else { "returned" };
            if let Some(reason) = self
                .campaigns
                .on_outcome(d.campaign(), result, hard, complaint)
                .await
            {
                self.metrics.breaker_trips.inc();
                self.events.emit(Event {
                    ts: crate::clock::rfc3339(now),
                    event: "campaign_paused".into(),
                    campaign: d.campaign().map(str::to_string),
                    tenant: d.tenant().map(str::to_string),
                    message: Some(reason),
                    ..Event::default()
                });
            }
            if let Some(reason) = self
                .campaigns
                .on_tenant_outcome(d.tenant(), result, hard, complaint)
                .await
            {
                self.metrics.breaker_trips.inc();
                self.events.emit(Event {
                    ts: crate::clock::rfc3339(now),
                    event: "tenant_paused".into(),
                    tenant: d.tenant().map(str::to_string),
                    message: Some(reason),
                    ..Event::default()
                });
            }
        }
        if let Some(addr) = recipient {
            let tenant = delivery
                .as_ref()
                .and_then(|d| d.tenant().map(str::to_string));
            let response = verdict.diagnostic.clone().unwrap_or_default();
            if let Err(e) = self
                .quarantine
                .record_failure(tenant.as_deref(), &addr, t, r, &response, now)
                .await
            {
                tracing::error!(error = %e, "cannot record quarantine");
            }
        } else {
            tracing::info!(rcpt, "returned message could not be linked to a delivery");
        }
    }
}

fn fill(ev: &mut Event, v: &MessageVerdict) {
    ev.bounce_type = Some(v.bounce_type.as_str().into());
    ev.bounce_reason = Some(v.reason.as_str().into());
    ev.bounce_source = Some("returned".into());
    ev.enhanced = v.status.clone();
    ev.code = v
        .status
        .as_deref()
        .and_then(|s| s.chars().next())
        .and_then(|c| c.to_digit(10))
        .map(|c| c as u16 * 100);
    ev.response = v.diagnostic.clone();
}

impl Handler for FeedbackHandler {
    fn hostname(&self) -> &str {
        &self.hostname
    }
    fn max_size(&self) -> usize {
        MAX_SIZE
    }
    fn max_rcpt(&self) -> usize {
        100
    }
    fn rcpt(&self, _peer: SocketAddr, address: &str) -> Result<String, String> {
        let a = address.trim().to_ascii_lowercase();
        let Some((local, domain)) = a.rsplit_once('@') else {
            return Err("550 5.1.3 bad address".into());
        };
        if !self.verp.is_ours(domain) {
            return Err(format!(
                "550 5.7.1 relay not permitted: this host only takes mail for {}",
                self.verp.domains().join(", ")
            ));
        }
        if self.is_role(local) {
            return Ok(a);
        }
        match self.verp.decode(&a) {
            Ok(_) => Ok(a),
            Err(VerpError::Forged) => {
                Err("550 5.7.1 invalid address: signature does not verify".into())
            }
            Err(_) => Err("550 5.1.1 no such user".into()),
        }
    }
    async fn data(&self, _peer: SocketAddr, rcpts: Vec<String>, data: Vec<u8>) -> String {
        let has_header = data
            .split(|&b| b == b'\n')
            .next()
            .is_some_and(|l| l.contains(&b':'));
        if !has_header {
            return "554 5.6.0 not an RFC 5322 message (no header section)".into();
        }
        for r in &rcpts {
            self.process(r, &data).await;
        }
        "250 2.0.0 report received".into()
    }
}
