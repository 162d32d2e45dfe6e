//! One-click unsubscribe (RFC 8058) and its signed tokens.
//!
//! When `[unsubscribe]` is configured and a message has no `List-Unsubscribe`, sluice adds
//! `List-Unsubscribe: <url>, <mailto:…>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
//! per recipient, with a token naming recipient, campaign and tenant, signed with
//! `[unsubscribe] secret`. sluice can be the endpoint itself on `[listen] public`:
//! `POST /u/{token}` unsubscribes (no auth; the token is the proof), a `GET` only shows a
//! confirmation page (link scanners follow links and must not unsubscribe anyone).

use hmac::{KeyInit, Mac};
use serde::Deserialize;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeCfg {
    /// URL template with `{token}`, e.g. `https://mail.brand.example/u/{token}`.
    pub url: String,
    /// Optional mailto address for `List-Unsubscribe`.
    #[serde(default)]
    pub mailto: Option<String>,
    /// HMAC key of the tokens (at least 16 characters).
    pub secret: String,
}

/// Who a token unsubscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub recipient: String,
    pub campaign: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed unsubscribe token")]
    Malformed,
    #[error("unsubscribe token signature does not verify")]
    Forged,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 4 / 3 + 3);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut vals = Vec::with_capacity(s.len());
    for c in s.bytes() {
        vals.push(ALPHABET.iter().position(|&a| a == c)? as u32);
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in vals.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

pub struct Tokens {
    key: Vec<u8>,
}

impl Tokens {
    pub fn new(secret: &str) -> Tokens {
        Tokens {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mut m) => {
                m.update(payload);
                m.finalize().into_bytes()[..12].to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn sign(&self, s: &Subject) -> String {
        let payload = format!(
            "{}\u{0}{}\u{0}{}",
            s.recipient.to_ascii_lowercase(),
            s.campaign.as_deref().unwrap_or(""),
            s.tenant.as_deref().unwrap_or("")
        );
        format!(
            "{}.{}",
            b64url(payload.as_bytes()),
            b64url(&self.mac(payload.as_bytes()))
        )
    }

    pub fn verify(&self, token: &str) -> Result<Subject, TokenError> {
        let (p, m) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = b64url_decode(p).ok_or(TokenError::Malformed)?;
        let given = b64url_decode(m).ok_or(TokenError::Malformed)?;
        let want = self.mac(&payload);
        if given.len() != want.len()
            || given.iter().zip(&want).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0
        {
            return Err(TokenError::Forged);
        }
        let text = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let mut parts = text.split('\u{0}');
        let recipient = parts
            .next()
            .filter(|r| r.contains('@'))
            .ok_or(TokenError::Malformed)?;
        let opt = |s: Option<&str>| s.filter(|x| !x.is_empty()).map(str::to_string);
        Ok(Subject {
            recipient: recipient.to_string(),
            campaign: opt(parts.next()),
            tenant: opt(parts.next()),
        })
    }
}

/// The headers to add for one recipient (CRLF-terminated lines).
pub fn headers(cfg: &UnsubscribeCfg, tokens: &Tokens, s: &Subject) -> String {
    let token = tokens.sign(s);
    let url = cfg.url.replace("{token}", &token);
    let mut value = format!("<{url}>");
    if let Some(m) = &cfg.mailto {
        value.push_str(&format!(", <mailto:{m}?subject=unsubscribe%20{token}>"));
    }
    format!("List-Unsubscribe: {value}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_roundtrip() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\xff\x00\x10hello"] {
            assert_eq!(b64url_decode(&b64url(data)).unwrap(), data);
        }
        assert_eq!(b64url(b"hi?"), "aGk_");
    }

    #[test]
    fn tokens_sign_and_verify() {
        let t = Tokens::new("unsubscribe-secret-0123");
        let s = Subject {
            recipient: "Ana@X.test".into(),
            campaign: Some("spring".into()),
            tenant: None,
        };
        let tok = t.sign(&s);
        let back = t.verify(&tok).unwrap();
        assert_eq!(back.recipient, "ana@x.test");
        assert_eq!(back.campaign.as_deref(), Some("spring"));
        let mut forged = tok.clone();
        forged.replace_range(0..1, if tok.starts_with('Y') { "Z" } else { "Y" });
        assert!(t.verify(&forged).is_err());
        assert_eq!(
            Tokens::new("another-secret-xxxxxxx").verify(&tok),
            Err(TokenError::Forged)
        );
        assert_eq!(t.verify("nodot"), Err(TokenError::Malformed));
    }
}
