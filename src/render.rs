//! Rendering: the exact bytes sent for one delivery.
//!
//! Stored template → `{{placeholders}}` filled for the recipient → `List-Unsubscribe` /
//! `List-Unsubscribe-Post` (when `[unsubscribe]` is set and the message has none) and
//! `Feedback-ID` (from `[events] feedback_id`) added → DKIM signatures prepended.
//!
//! A message that is the same for every recipient (no placeholders, no per-recipient
//! unsubscribe header) is rendered and signed once per stored body, not once per recipient.

use crate::dkim::{DkimError, Signer};
use crate::spool::Delivery;
use crate::template::{Template, TemplateError, Vars};
use crate::unsubscribe::{self, Subject, Tokens, UnsubscribeCfg};
use dashmap::DashMap;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DkimOnError {
    /// Defer the delivery (never send unsigned mail by surprise).
    #[default]
    Defer,
    SendUnsigned,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("personalisation: {0}")]
    Template(#[from] TemplateError),
    #[error("DKIM signing failed: {0}")]
    Dkim(#[from] DkimError),
}

pub struct Renderer {
    pub unsubscribe: Option<(UnsubscribeCfg, Tokens)>,
    pub feedback_id: Option<String>,
    pub dkim: Option<Arc<Signer>>,
    pub dkim_on_error: DkimOnError,
    shared: DashMap<u64, Arc<Vec<u8>>>,
}

const SHARED_MAX: usize = 4096;

fn has_header(msg: &[u8], name: &str) -> bool {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    let name = name.to_ascii_lowercase();
    head.split("\r\n").any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().to_ascii_lowercase() == name)
    })
}

impl Renderer {
    pub fn new(
        unsubscribe: Option<UnsubscribeCfg>,
        feedback_id: Option<String>,
        dkim: Option<Arc<Signer>>,
        dkim_on_error: DkimOnError,
    ) -> Renderer {
        Renderer {
            unsubscribe: unsubscribe.map(|c| {
                let t = Tokens::new(&c.secret);
                (c, t)
            }),
            feedback_id,
            dkim: dkim.filter(|s| !s.is_empty()),
            dkim_on_error,
            shared: DashMap::new(),
        }
    }

    /// Does this renderer change anything at all?
    pub fn is_identity(&self) -> bool {
        self.unsubscribe.is_none() && self.feedback_id.is_none() && self.dkim.is_none()
    }

    /// The bytes to send for delivery `d` whose stored body is `body`.
    pub fn render(&self, d: &Delivery, body: &Arc<Vec<u8>>) -> Result<Arc<Vec<u8>>, RenderError> {
        let personal = memchr::memmem::find(body, b"{{").is_some();
        let unsub = self
            .unsubscribe
            .as_ref()
            .filter(|_| !has_header(body, "List-Unsubscribe"));
        if !personal && unsub.is_none() {
            if self.is_identity() {
                return Ok(body.clone());
            }
            if let Some(m) = self.shared.get(&d.body_id) {
                return Ok(m.clone());
            }
            let m = Arc::new(self.finish(d, Vec::new(), body)?);
            if self.shared.len() >= SHARED_MAX {
                self.shared.clear();
            }
            self.shared.insert(d.body_id, m.clone());
            return Ok(m);
        }
        let content = if personal {
            let t = Template::parse(body)?;
            let empty = Vars::new();
            let vars = d.vars().unwrap_or(&empty);
            t.check(vars)?;
            t.render(body, vars)
        } else {
            body.to_vec()
        };
        let mut extra = Vec::new();
        if let Some((cfg, tokens)) = unsub {
            let s = Subject {
                recipient: d.recipient.to_string(),
                campaign: d.campaign().map(str::to_string),
                tenant: d.tenant().map(str::to_string),
            };
            extra.extend_from_slice(unsubscribe::headers(cfg, tokens, &s).as_bytes());
        }
        Ok(Arc::new(self.finish(d, extra, &content)?))
    }

    /// Add Feedback-ID and the extra headers on top, then sign.
    fn finish(
        &self,
        d: &Delivery,
        mut head: Vec<u8>,
        content: &[u8],
    ) -> Result<Vec<u8>, RenderError> {
        if let Some(tpl) = &self.feedback_id {
            if !has_header(content, "Feedback-ID") {
                let v = tpl
                    .replace("{campaign}", d.campaign().unwrap_or("none"))
                    .replace("{tenant}", d.tenant().unwrap_or("default"));
                head.extend_from_slice(format!("Feedback-ID: {v}\r\n").as_bytes());
            }
        }
        head.extend_from_slice(content);
        let Some(signer) = &self.dkim else {
            return Ok(head);
        };
        match signer.sign(&head) {
            Ok(Some(sig)) => {
                let mut out = sig;
                out.extend_from_slice(&head);
                Ok(out)
            }
            Ok(None) => Ok(head),
            Err(e) if self.dkim_on_error == DkimOnError::SendUnsigned => {
                tracing::warn!(error = %e, "DKIM signing failed; sending unsigned (dkim_on_error = send_unsigned)");
                Ok(head)
            }
            Err(e) => Err(e.into()),
        }
    }
}
