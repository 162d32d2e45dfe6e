//! SMTP submission listener: every RCPT becomes its own delivery. It relays only for
//! clients inside `[listen] smtp_allow` (anyone else gets 550 at RCPT: never an open relay).
//! The 250 after the data is sent only once the deliveries are fsynced.

use super::message::MessageError;
use super::{Intake, IntakeError, RecipientSpec, Submission};
use crate::config::Cidr;
use crate::smtp_server::Handler;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct SubmissionHandler {
    pub intake: Arc<Intake>,
    pub allow: Vec<Cidr>,
}

impl Handler for SubmissionHandler {
    fn hostname(&self) -> &str {
        &self.intake.cfg.hostname
    }
    fn max_size(&self) -> usize {
        self.intake.cfg.intake.max_message_size
    }
    fn max_rcpt(&self) -> usize {
        self.intake.cfg.intake.max_recipients
    }
    fn mail(&self, _from: &str) -> Result<(), String> {
        self.intake
            .check_capacity(1)
            .map_err(|e| format!("452 4.3.1 {e}"))
    }
    fn rcpt(&self, peer: SocketAddr, address: &str) -> Result<String, String> {
        if !self.allow.iter().any(|c| c.contains(peer.ip())) {
            return Err(format!("550 5.7.1 relaying denied for {}", peer.ip()));
        }
        let a = super::address::parse(address)
            .map_err(|e| format!("501 5.1.3 bad recipient address: {e}"))?;
        let a = a.as_string();
        if let Some(reason) = self.intake.quarantined(None, &a) {
            return Err(format!("550 5.7.1 {a} is quarantined ({reason})"));
        }
        Ok(a)
    }
    async fn data(&self, _peer: SocketAddr, rcpts: Vec<String>, content: Vec<u8>) -> String {
        let sub = Submission {
            recipients: rcpts
                .into_iter()
                .map(|email| RecipientSpec {
                    email,
                    id: None,
                    vars: None,
                })
                .collect(),
            content,
            strip_intake_headers: true,
            channel: "smtp",
            ..Submission::default()
        };
        match self.intake.submit(sub).await {
            Ok(r) => {
                let first = r.messages.first().map(|m| m.id.clone()).unwrap_or_default();
                format!("250 2.0.0 queued as {first} ({} deliveries)", r.accepted)
            }
            Err(IntakeError::Message(e @ MessageError::TooLarge(..))) => format!("552 5.3.4 {e}"),
            Err(IntakeError::Message(e)) => format!("550 5.6.0 {e}"),
            Err(IntakeError::Busy(e)) => format!("452 4.3.1 {e}"),
            Err(IntakeError::Spool(e)) => {
                tracing::error!(error = %e, "spool write failed");
                "451 4.3.0 local storage error; try again later".to_string()
            }
            Err(e) => format!("550 5.5.0 {e}"),
        }
    }
}
