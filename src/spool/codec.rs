//! Compact binary encoding of delivery records (the spool keeps millions of them).
//!
//! Layout (version 1): varints for numbers, length-prefixed UTF-8 for strings, a presence
//! byte for optional fields. The envelope sender is not stored: it is recomputed from the id
//! (and the aligned VERP domain, when there is one).

use super::{Attempt, Delivery, Extra, Meta, Priority};
use std::sync::Arc;

const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("record is truncated or malformed at byte {0}")]
pub struct DecodeError(pub usize);

struct W(Vec<u8>);

impl W {
    fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn s(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn os(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.s(s);
            }
            None => self.0.push(0),
        }
    }
    fn ou(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.0.push(1);
                self.u(v);
            }
            None => self.0.push(0),
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    p: usize,
}

impl R<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.p).ok_or(DecodeError(self.p))?;
        self.p += 1;
        Ok(v)
    }
    fn u(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError(self.p))
    }
    fn s(&mut self) -> Result<String, DecodeError> {
        let n = self.u()? as usize;
        let end = self.p.checked_add(n).ok_or(DecodeError(self.p))?;
        let bytes = self.b.get(self.p..end).ok_or(DecodeError(self.p))?;
        self.p = end;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError(self.p))
    }
    fn os(&mut self) -> Result<Option<String>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            _ => Ok(Some(self.s()?)),
        }
    }
    fn ou(&mut self) -> Result<Option<u64>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            _ => Ok(Some(self.u()?)),
        }
    }
}

/// Encode a delivery.
pub fn encode(d: &Delivery) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(64 + d.recipient.len()));
    w.0.push(VERSION);
    w.u(d.body_id);
    w.s(&d.recipient);
    w.os(d.recipient_id());
    w.os(d.campaign());
    w.os(d.tenant());
    w.os(d.pool());
    w.0.push(match d.priority() {
        Priority::Bulk => 0,
        Priority::Transactional => 1,
    });
    w.u(d.created_ms);
    w.u(d.expires_ms.saturating_sub(d.created_ms));
    w.u(d.attempts as u64);
    w.u(d.next_ms);
    w.os(d.verp_domain());
    w.u(d.history().len() as u64);
    for a in d.history() {
        w.u(a.ts);
        w.os(a.mx.as_deref());
        w.os(a.ip.as_deref());
        w.ou(a.code.map(|c| c as u64));
        w.os(a.enhanced.as_deref());
        w.s(&a.response);
    }
    match d.vars() {
        Some(v) => {
            w.u(v.len() as u64);
            for (k, val) in v.iter() {
                w.s(k);
                w.s(val);
            }
        }
        None => w.u(0),
    }
    w.0
}

/// Decode a record; `sender` recomputes the envelope sender when it was not stored.
pub fn decode(id: u64, b: &[u8]) -> Result<Delivery, DecodeError> {
    let mut r = R { b, p: 0 };
    if r.byte()? != VERSION {
        return Err(DecodeError(0));
    }
    let body_id = r.u()?;
    let recipient = r.s()?;
    let recipient_id = r.os()?;
    let campaign = r.os()?;
    let tenant = r.os()?;
    let pool = r.os()?;
    let priority = match r.byte()? {
        1 => Priority::Transactional,
        _ => Priority::Bulk,
    };
    let created_ms = r.u()?;
    let expires_ms = created_ms.saturating_add(r.u()?);
    let attempts = r.u()? as u32;
    let next_ms = r.u()?;
    let verp_domain = r.os()?;
    let n = r.u()? as usize;
    let mut history = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        history.push(Attempt {
            ts: r.u()?,
            mx: r.os()?,
            ip: r.os()?,
            code: r.ou()?.map(|c| c as u16),
            enhanced: r.os()?,
            response: r.s()?,
        });
    }
    let nv = r.u()? as usize;
    let vars = if nv == 0 {
        None
    } else {
        let mut m = crate::template::Vars::new();
        for _ in 0..nv {
            let k = r.s()?;
            let v = r.s()?;
            m.insert(k, v);
        }
        Some(m)
    };
    Ok(Delivery {
        id,
        body_id,
        recipient: recipient.into(),
        meta: Arc::new(Meta {
            campaign,
            tenant,
            pool,
            priority,
            verp_domain,
        }),
        created_ms,
        expires_ms,
        attempts,
        next_ms,
        extra: Extra::boxed(recipient_id.map(String::into_boxed_str), vars, history),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let d = Delivery {
            id: 77,
            body_id: 5,
            recipient: "ana@x.test".into(),
            meta: Arc::new(Meta {
                campaign: Some("spring".into()),
                tenant: None,
                pool: Some("p".into()),
                priority: Priority::Transactional,
                verp_domain: Some("feedback.brand.test".into()),
            }),
            created_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_000_000 + 86_400_000,
            attempts: 2,
            next_ms: 1_700_000_300_000,
            extra: Extra::boxed(
                Some("crm-1".into()),
                Some(
                    [("first_name".to_string(), "Ana".to_string())]
                        .into_iter()
                        .collect(),
                ),
                vec![Attempt {
                    ts: 1_700_000_100_000,
                    mx: Some("mx1".into()),
                    ip: None,
                    code: Some(451),
                    enhanced: Some("4.7.1".into()),
                    response: "451 4.7.1 later".into(),
                }],
            ),
        };
        assert_eq!(decode(77, &encode(&d)).unwrap(), d);
        let short = encode(&d);
        let fresh = Delivery {
            extra: None,
            attempts: 0,
            ..d.clone()
        };
        assert!(encode(&fresh).len() < 80, "{}", encode(&fresh).len());
        assert!(decode(1, &short[..short.len() - 3]).is_err());
    }
}
