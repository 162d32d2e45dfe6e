//! VERP: one signed envelope sender per delivery.
//!
//! The MAIL FROM of delivery `id` is `<prefix>-<id><mac>@<domain>` where `id` is the delivery id
//! (16 lowercase hex digits) and `mac` the first 8 bytes of HMAC-SHA256(secret, id), in hex.
//! Hex is lowercase and case-insensitive, so the code survives MTAs that fold case; the MAC
//! makes forged bounces detectable without any spool lookup.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

const ID_HEX: usize = 16;
const MAC_HEX: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerpError {
    #[error("not an address on the VERP domain {0}")]
    WrongDomain(String),
    #[error("local part does not start with the VERP prefix {0:?}")]
    WrongPrefix(String),
    #[error("malformed VERP code")]
    Malformed,
    #[error("VERP signature does not verify (forged or tampered address)")]
    Forged,
}

#[derive(Clone)]
pub struct Verp {
    domain: String,
    prefix: String,
    key: Vec<u8>,
    /// Aligned VERP: `<subdomain>.<sender domain>` for these sender domains.
    subdomain: Option<String>,
    senders: Vec<String>,
}

/// Format a delivery id as the 16-digit lowercase hex string used everywhere outside.
pub fn id_str(id: u64) -> String {
    format!("{id:016x}")
}

/// Parse a delivery id string.
pub fn parse_id(s: &str) -> Option<u64> {
    if s.len() != ID_HEX {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

impl Verp {
    pub fn new(domain: &str, prefix: &str, secret: &str) -> Verp {
        Verp {
            domain: domain.trim().to_ascii_lowercase(),
            prefix: prefix.to_ascii_lowercase(),
            key: secret.as_bytes().to_vec(),
            subdomain: None,
            senders: Vec::new(),
        }
    }

    /// Aligned VERP: mail whose From: domain is one of `senders` gets its envelope on
    /// `<subdomain>.<that domain>`; any other From: domain uses the fallback `domain`.
    pub fn with_senders(mut self, subdomain: Option<&str>, senders: &[String]) -> Verp {
        self.subdomain = subdomain
            .map(|s| s.trim().trim_matches('.').to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        self.senders = senders
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        self
    }

    /// The VERP domain for mail from `from_domain`.
    pub fn domain_for(&self, from_domain: Option<&str>) -> String {
        match (&self.subdomain, from_domain) {
            (Some(sub), Some(f)) if self.senders.iter().any(|s| s.eq_ignore_ascii_case(f)) => {
                format!("{sub}.{}", f.to_ascii_lowercase())
            }
            _ => self.domain.clone(),
        }
    }

    /// Every domain whose VERP addresses this instance accepts.
    pub fn domains(&self) -> Vec<String> {
        let mut v = vec![self.domain.clone()];
        if let Some(sub) = &self.subdomain {
            v.extend(self.senders.iter().map(|s| format!("{sub}.{s}")));
        }
        v
    }

    /// Is this one of our VERP domains?
    pub fn is_ours(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        d == self.domain
            || self
                .subdomain
                .as_ref()
                .is_some_and(|sub| self.senders.iter().any(|s| d == format!("{sub}.{s}")))
    }

    /// The envelope sender of a delivery.
    pub fn envelope_of(&self, d: &crate::spool::Delivery) -> String {
        match d.verp_domain() {
            Some(domain) => self.encode_on(d.id, domain),
            None => self.encode(d.id),
        }
    }

    /// The envelope sender for delivery `id` on a given VERP domain.
    pub fn encode_on(&self, id: u64, domain: &str) -> String {
        let mut s = self.encode(id);
        if domain != self.domain {
            let at = s.rfind('@').unwrap_or(s.len());
            s.truncate(at + 1);
            s.push_str(domain);
        }
        s
    }

    fn mac(&self, id: u64) -> [u8; 8] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut m = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return [0; 8],
        };
        m.update(&id.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// The envelope sender for delivery `id`.
    pub fn encode(&self, id: u64) -> String {
        let mac = self.mac(id);
        let mut s = String::with_capacity(self.prefix.len() + 34 + self.domain.len());
        s.push_str(&self.prefix);
        s.push('-');
        s.push_str(&id_str(id));
        for b in mac {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('@');
        s.push_str(&self.domain);
        s
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The delivery id a VERP address belongs to, or why it is not one of ours.
    pub fn decode(&self, address: &str) -> Result<u64, VerpError> {
        let addr = address
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        let (local, domain) = addr.rsplit_once('@').ok_or(VerpError::Malformed)?;
        if !self.is_ours(domain) {
            return Err(VerpError::WrongDomain(self.domain.clone()));
        }
        let code = local
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(|| VerpError::WrongPrefix(self.prefix.clone()))?;
        if code.len() != ID_HEX + MAC_HEX || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(VerpError::Malformed);
        }
        let id = parse_id(&code[..ID_HEX]).ok_or(VerpError::Malformed)?;
        let mut given = [0u8; 8];
        for (i, g) in given.iter_mut().enumerate() {
            *g = u8::from_str_radix(&code[ID_HEX + 2 * i..ID_HEX + 2 * i + 2], 16)
                .map_err(|_| VerpError::Malformed)?;
        }
        // constant-time comparison
        let want = self.mac(id);
        let diff = want
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(VerpError::Forged);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Verp {
        Verp::new("fb.example.com", "b", "0123456789abcdef-secret")
    }

    #[test]
    fn roundtrip_and_case_folding() {
        let a = v().encode(0x0190_abcd_ef01_2345);
        assert!(a.starts_with("b-0190abcdef012345"));
        assert!(a.ends_with("@fb.example.com"));
        assert_eq!(v().decode(&a), Ok(0x0190_abcd_ef01_2345));
        assert_eq!(v().decode(&a.to_uppercase()), Ok(0x0190_abcd_ef01_2345));
        assert_eq!(v().decode(&format!("<{a}>")), Ok(0x0190_abcd_ef01_2345));
    }

    #[test]
    fn aligned_domains() {
        let v = v().with_senders(Some("feedback"), &["brand.example".into()]);
        assert_eq!(
            v.domain_for(Some("Brand.Example")),
            "feedback.brand.example"
        );
        assert_eq!(v.domain_for(Some("other.example")), "fb.example.com");
        let a = v.encode_on(9, "feedback.brand.example");
        assert!(a.ends_with("@feedback.brand.example"));
        assert_eq!(v.decode(&a), Ok(9));
        assert!(matches!(
            v.decode(&a.replace("feedback.brand", "feedback.evil")),
            Err(VerpError::WrongDomain(_))
        ));
    }

    #[test]
    fn unique_per_delivery() {
        assert_ne!(v().encode(1), v().encode(2));
    }

    #[test]
    fn tampering_is_detected() {
        let a = v().encode(42);
        // change one digit of the id
        let forged = a.replacen("000000000000002a", "000000000000002b", 1);
        assert_eq!(v().decode(&forged), Err(VerpError::Forged));
        let other = Verp::new("fb.example.com", "b", "another-secret-entirely");
        assert_eq!(other.decode(&a), Err(VerpError::Forged));
        assert_eq!(v().decode("b-zz@fb.example.com"), Err(VerpError::Malformed));
        assert!(matches!(
            v().decode("b-00@other.com"),
            Err(VerpError::WrongDomain(_))
        ));
        assert!(matches!(
            v().decode("x-00@fb.example.com"),
            Err(VerpError::WrongPrefix(_))
        ));
        assert_eq!(v().decode("no-at-sign"), Err(VerpError::Malformed));
    }
}
