//! DKIM signing (RFC 6376, RSA-SHA256 and Ed25519-SHA256 from RFC 8463).
//!
//! A [`Signer`] holds every key of the `[[dkim]]` entries of the configuration, loaded once at
//! start (and again on reload): a missing, unreadable, malformed or too weak key is an error
//! naming the entry, never a silent "send unsigned". [`Signer::sign`] picks the entries whose
//! `domain` matches the domain of the message's `From:` header (`*.brand.example` matches any
//! subdomain of `brand.example`) and returns one `DKIM-Signature:` header per matching entry
//! (several entries for one domain give dual signatures, e.g. Ed25519 + RSA).
//!
//! Signing is pure CPU work on the rendered message (no I/O); the caller signs each distinct
//! rendered message once and reuses the header for every recipient of identical content.
//!
//! Canonicalization is relaxed/relaxed; `t=` is set, `x=` and `l=` are not. The default signed
//! headers follow RFC 6376 §5.4: `From` is over-signed (listed twice, so that a second `From:`
//! added in transit breaks the signature); the others ([`DEFAULT_HEADERS`]) are signed only
//! when present in the message. An explicit `headers` list is used as given: a name listed
//! but absent from the message is signed as absent (over-signing).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::PrivateKeyDer;

/// Smallest RSA modulus accepted (RFC 8301 says verifiers may refuse less than 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// Headers signed by default, in this order, when present (`From` is always signed, twice).
pub const DEFAULT_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// One `[[dkim]]` entry of sluice.toml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimCfg {
    /// Signing domain (`d=`), matched against the `From:` domain. `*.brand.example` matches
    /// every subdomain of `brand.example` (not `brand.example` itself) and signs with
    /// `d=brand.example` (relaxed DMARC alignment).
    pub domain: String,
    /// Selector (`s=`): the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (2048 bits or more; PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA PRIVATE
    /// KEY") or Ed25519 (PKCS#8 "PRIVATE KEY"). Relative paths resolve from the config dir.
    pub key: PathBuf,
    /// Headers to sign (`h=`), used as given; must include `From`. Default: see
    /// [`DEFAULT_HEADERS`].
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

/// Which `[[dkim]]` entry an error is about (`index` counts from 1, in file order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub index: usize,
    pub domain: String,
    pub selector: String,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[[dkim]] entry {} (domain {:?}, selector {:?})",
            self.index, self.domain, self.selector
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The entry itself is invalid (domain, selector, headers, duplicate).
    #[error("{entry}: {reason}")]
    Config { entry: EntryRef, reason: String },
    /// The key file cannot be read.
    #[error("{entry}: cannot read key file {}: {source}", path.display())]
    KeyRead {
        entry: EntryRef,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The key file is not a usable RSA or Ed25519 private key.
    #[error("{entry}: key file {}: {reason}", path.display())]
    KeyInvalid {
        entry: EntryRef,
        path: PathBuf,
        reason: String,
    },
    /// RSA key shorter than [`MIN_RSA_BITS`].
    #[error(
        "{entry}: key file {}: RSA key of {bits} bits refused, at least {MIN_RSA_BITS} are required",
        path.display()
    )]
    KeyTooWeak {
        entry: EntryRef,
        path: PathBuf,
        bits: usize,
    },
    /// The message has no `From:` header with an address (nothing to match the entries with).
    /// Signing it again will fail the same way.
    #[error("cannot DKIM-sign: the message has no From: header with an address")]
    NoFromDomain,
    /// The signing operation failed (signature over the message could not be computed).
    #[error("DKIM signing for d={domain} s={selector} failed: {reason}")]
    Sign {
        domain: String,
        selector: String,
        reason: String,
    },
}

impl DkimError {
    /// The key file an error is about, if any (for `sluice check`).
    pub fn key_path(&self) -> Option<&Path> {
        match self {
            DkimError::KeyRead { path, .. }
            | DkimError::KeyInvalid { path, .. }
            | DkimError::KeyTooWeak { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The `[[dkim]]` entry an error is about, if any.
    pub fn entry(&self) -> Option<&EntryRef> {
        match self {
            DkimError::Config { entry, .. }
            | DkimError::KeyRead { entry, .. }
            | DkimError::KeyInvalid { entry, .. }
            | DkimError::KeyTooWeak { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// How an entry's domain matches a `From:` domain.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    /// ".brand.example": any name ending with it (a strict subdomain).
    Suffix(String),
}

impl Pattern {
    fn matches(&self, domain: &str) -> bool {
        match self {
            Pattern::Exact(d) => d == domain,
            Pattern::Suffix(s) => domain.len() > s.len() && domain.ends_with(s.as_str()),
        }
    }
}

/// A loaded key shared by every signature made with it.
#[derive(Clone)]
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

#[derive(Clone)]
struct Entry {
    /// The domain as configured (lowercase, without a trailing dot), e.g. "*.brand.example".
    configured: String,
    pattern: Pattern,
    /// `d=`
    d: String,
    selector: String,
    headers: Option<Vec<String>>,
    key: SharedKey,
    /// "v=DKIM1; k=...; p=..."
    txt: String,
    path: PathBuf,
}

/// Every DKIM key of the configuration, ready to sign. Cheap to clone (keys are shared).
#[derive(Clone, Default)]
pub struct Signer {
    entries: Vec<Entry>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        let mut l = f.debug_list();
        for e in &self.entries {
            l.entry(&format_args!(
                "{} s={} key={} ({})",
                e.configured,
                e.selector,
                e.path.display(),
                algorithm_name(e.key.algorithm())
            ));
        }
        l.finish()
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

impl Signer {
    /// Load every entry's key. Relative key paths resolve from `base_dir` (the directory of
    /// sluice.toml). Errors name the entry (index from 1, domain, selector) and the key path.
    pub fn load(entries: &[DkimCfg], base_dir: &Path) -> Result<Signer, DkimError> {
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for (i, cfg) in entries.iter().enumerate() {
            let entry = EntryRef {
                index: i + 1,
                domain: cfg.domain.clone(),
                selector: cfg.selector.clone(),
            };
            let bad = |reason: String| DkimError::Config {
                entry: entry.clone(),
                reason,
            };
            let (configured, pattern, d) = parse_domain(&cfg.domain).map_err(bad)?;
            let selector = cfg
                .selector
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            check_dns_name(&selector).map_err(|e| bad(format!("selector: {e}")))?;
            let headers = match &cfg.headers {
                Some(h) => Some(check_headers(h).map_err(bad)?),
                None => None,
            };
            if let Some(prev) = out
                .iter()
                .position(|e| e.configured == configured && e.selector == selector)
            {
                return Err(bad(format!(
                    "same domain and selector as [[dkim]] entry {}: one DNS record cannot hold \
                     two keys",
                    prev + 1
                )));
            }

            let path = if cfg.key.is_absolute() {
                cfg.key.clone()
            } else {
                base_dir.join(&cfg.key)
            };
            let pem = std::fs::read(&path).map_err(|source| DkimError::KeyRead {
                entry: entry.clone(),
                path: path.clone(),
                source,
            })?;
            let loaded = parse_key(&pem).map_err(|e| match e {
                KeyProblem::Invalid(reason) => DkimError::KeyInvalid {
                    entry: entry.clone(),
                    path: path.clone(),
                    reason,
                },
                KeyProblem::TooWeak(bits) => DkimError::KeyTooWeak {
                    entry: entry.clone(),
                    path: path.clone(),
                    bits,
                },
            })?;
            out.push(Entry {
                configured,
                pattern,
                d,
                selector,
                headers,
                key: SharedKey(Arc::new(loaded.key)),
                txt: loaded.txt,
                path,
            });
        }
        Ok(Signer { entries: out })
    }

    /// No `[[dkim]]` entry: nothing is ever signed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of loaded keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `DKIM-Signature:` header lines (CRLF-terminated, folded) to prepend to `message`,
    /// one per entry matching the `From:` domain, in configuration order; `Ok(None)` when no
    /// entry matches (or there are no entries at all).
    ///
    /// `message` is the rendered message (headers, blank line, body) with CRLF line endings,
    /// exactly as it will be sent (before dot-stuffing).
    pub fn sign(&self, message: &[u8]) -> Result<Option<Vec<u8>>, DkimError> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let parsed = mail_parser::MessageParser::new().parse_headers(message);
        let domain = parsed
            .as_ref()
            .and_then(from_domain)
            .ok_or(DkimError::NoFromDomain)?;
        let mut matching = self
            .entries
            .iter()
            .filter(|e| e.pattern.matches(&domain))
            .peekable();
        if matching.peek().is_none() {
            return Ok(None);
        }
        let mut defaults: Option<Vec<String>> = None;
        let mut out = Vec::with_capacity(600);
        for e in matching {
            let headers = match &e.headers {
                Some(h) => h.clone(),
                None => defaults
                    .get_or_insert_with(|| parsed.as_ref().map(default_headers).unwrap_or_default())
                    .clone(),
            };
            let signature = DkimSigner::from_key(e.key.clone())
                .domain(e.d.as_str())
                .selector(e.selector.as_str())
                .headers(headers)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
                .sign(message)
                .map_err(|err| DkimError::Sign {
                    domain: e.d.clone(),
                    selector: e.selector.clone(),
                    reason: err.to_string(),
                })?;
            signature.write_header(&mut out);
        }
        Ok(Some(out))
    }

    /// `message` with its DKIM-Signature header(s) in front; an unchanged copy when no entry
    /// matches the `From:` domain.
    pub fn signed(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        match self.sign(message)? {
            Some(mut headers) => {
                headers.extend_from_slice(message);
                Ok(headers)
            }
            None => Ok(message.to_vec()),
        }
    }

    /// The TXT record value ("v=DKIM1; k=rsa; p=...") to publish at
    /// `<selector>._domainkey.<d>` for the entry with this selector whose domain is `domain`
    /// (as configured, e.g. "*.brand.example", or as signed, e.g. "brand.example").
    pub fn public_key_txt(&self, domain: &str, selector: &str) -> Option<String> {
        let domain = domain.trim().trim_end_matches('.');
        let selector = selector.trim().trim_end_matches('.');
        self.entries
            .iter()
            .find(|e| {
                e.selector.eq_ignore_ascii_case(selector)
                    && (e.configured.eq_ignore_ascii_case(domain)
                        || e.d.eq_ignore_ascii_case(domain))
            })
            .map(|e| e.txt.clone())
    }

    /// Every record to publish: (`<selector>._domainkey.<d>`, TXT value), in configuration
    /// order.
    pub fn dns_records(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (format!("{}._domainkey.{}", e.selector, e.d), e.txt.clone()))
            .collect()
    }
}

/// (configured form, pattern, d=) of a configured domain.
fn parse_domain(raw: &str) -> Result<(String, Pattern, String), String> {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = domain.strip_prefix("*.") {
        check_dns_name(rest).map_err(|e| format!("domain: {e}"))?;
        Ok((
            domain.clone(),
            Pattern::Suffix(format!(".{rest}")),
            rest.to_string(),
        ))
    } else {
        check_dns_name(&domain).map_err(|e| format!("domain: {e}"))?;
        Ok((domain.clone(), Pattern::Exact(domain.clone()), domain))
    }
}

/// A lowercase ASCII DNS name: labels of letters, digits, '-' and '_', 1..=63 bytes each.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if !name.is_ascii() {
        return Err(format!(
            "{name:?} is not ASCII (write internationalized names in their xn-- form)"
        ));
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} has an empty label or one over 63 bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{name:?} contains {c:?}"));
        }
    }
    Ok(())
}

fn check_headers(headers: &[String]) -> Result<Vec<String>, String> {
    if headers.is_empty() {
        return Err("headers: empty list (leave it out for the default list)".into());
    }
    for h in headers {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("headers: {h:?} is not a header field name"));
        }
    }
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err("headers: must include From (RFC 6376 §5.4)".into());
    }
    Ok(headers.to_vec())
}

/// The default `h=` list for this message: From twice, then the other defaults present.
fn default_headers(parsed: &mail_parser::Message<'_>) -> Vec<String> {
    let mut h = vec!["From".to_string(), "From".to_string()];
    for name in DEFAULT_HEADERS.iter().skip(1) {
        if parsed
            .headers()
            .iter()
            .any(|p| p.name().trim().eq_ignore_ascii_case(name))
        {
            h.push((*name).to_string());
        }
    }
    h
}

/// Lowercase domain of the first address of the `From:` header.
fn from_domain(parsed: &mail_parser::Message<'_>) -> Option<String> {
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

struct LoadedKey {
    key: DkimKey,
    txt: String,
}

enum KeyProblem {
    Invalid(String),
    TooWeak(usize),
}

/// DER of the rsaEncryption OID (1.2.840.113549.1.1.1) and of id-Ed25519 (1.3.101.112).
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

fn parse_key(pem_bytes: &[u8]) -> Result<LoadedKey, KeyProblem> {
    let invalid = KeyProblem::Invalid;
    if contains(pem_bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(invalid(
            "encrypted private keys are not supported (decrypt it: openssl pkey -in KEY -out KEY.plain)"
                .into(),
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            "no PEM private key found (expected a \"PRIVATE KEY\" or \"RSA PRIVATE KEY\" block)"
                .into(),
        ),
        other => invalid(format!("malformed PEM: {other}")),
    })?;
    let rsa = |der: PrivateKeyDer<'_>| -> Result<LoadedKey, KeyProblem> {
        let key = RsaKey::<Sha256>::from_key_der(der)
            .map_err(|e| invalid(format!("not a valid RSA private key: {e}")))?;
        let pkcs1 = key.public_key();
        let bits = rsa_modulus_bits(&pkcs1)
            .ok_or_else(|| invalid("cannot read the RSA public key".into()))?;
        if bits < MIN_RSA_BITS {
            return Err(KeyProblem::TooWeak(bits));
        }
        Ok(LoadedKey {
            key: DkimKey::Rsa(key),
            txt: format!("v=DKIM1; k=rsa; p={}", base64(&rsa_spki(&pkcs1))),
        })
    };
    match der {
        PrivateKeyDer::Pkcs1(_) => rsa(der),
        PrivateKeyDer::Pkcs8(ref p8) => {
            // The AlgorithmIdentifier comes right after the version, within the first bytes.
            let head = p8
                .secret_pkcs8_der()
                .get(..32)
                .unwrap_or(p8.secret_pkcs8_der());
            if contains(head, OID_ED25519) {
                let key = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der())
                    .map_err(|e| invalid(format!("not a valid Ed25519 private key: {e}")))?;
                let txt = format!("v=DKIM1; k=ed25519; p={}", base64(&key.public_key()));
                Ok(LoadedKey {
                    key: DkimKey::Ed25519(key),
                    txt,
                })
            } else if contains(head, OID_RSA) {
                rsa(der)
            } else {
                Err(invalid(
                    "unsupported key algorithm (DKIM keys must be RSA or Ed25519)".into(),
                ))
            }
        }
        PrivateKeyDer::Sec1(_) => Err(invalid(
            "EC (SEC1) keys are not supported by DKIM (use RSA or Ed25519)".into(),
        )),
        _ => Err(invalid("unsupported private key format".into())),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Read one DER tag + length at `pos`; returns (content start, content length).
fn der_header(der: &[u8], pos: usize, tag: u8) -> Option<(usize, usize)> {
    if *der.get(pos)? != tag {
        return None;
    }
    let first = *der.get(pos + 1)?;
    if first < 0x80 {
        return Some((pos + 2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *der.get(pos + 2 + i)? as usize;
    }
    Some((pos + 2 + n, len))
}

/// Size in bits of the modulus of a PKCS#1 RSAPublicKey.
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (seq, _) = der_header(pkcs1, 0, 0x30)?;
    let (start, len) = der_header(pkcs1, seq, 0x02)?;
    let modulus = pkcs1.get(start..start.checked_add(len)?)?;
    let significant = modulus.iter().position(|b| *b != 0)?;
    let top = modulus.get(significant)?;
    Some((modulus.len() - significant - 1) * 8 + (8 - top.leading_zeros() as usize))
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else if len < 0x1_0000 {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    } else {
        out.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
    }
}

/// Wrap a PKCS#1 RSAPublicKey into a SubjectPublicKeyInfo (what `openssl rsa -pubout` gives
/// and what every DKIM verifier accepts in `p=`).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    let mut alg = vec![0x30];
    der_len(OID_RSA.len() + 2, &mut alg);
    alg.extend_from_slice(OID_RSA);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut bits = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bits);
    bits.push(0x00);
    bits.extend_from_slice(pkcs1);
    let mut spki = vec![0x30];
    der_len(alg.len() + bits.len(), &mut spki);
    spki.extend_from_slice(&alg);
    spki.extend_from_slice(&bits);
    spki
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: &[u8]) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::new()
            .parse_headers(m)
            .expect("test message has headers")
    }

    #[test]
    fn signer_is_shareable_across_tasks() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Signer>();
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn domain_patterns() {
        let (_, p, d) = parse_domain("*.Brand.Example.").expect("valid");
        assert_eq!(d, "brand.example");
        assert!(p.matches("news.brand.example"));
        assert!(p.matches("a.news.brand.example"));
        assert!(!p.matches("brand.example"));
        assert!(!p.matches("xbrand.example"));
        let (_, p, _) = parse_domain("brand.example").expect("valid");
        assert!(p.matches("brand.example"));
        assert!(!p.matches("news.brand.example"));
        assert!(parse_domain("a.*.example").is_err());
        assert!(parse_domain("").is_err());
        assert!(parse_domain("bad domain").is_err());
    }

    #[test]
    fn from_domain_reads_first_address() {
        let m = b"From: \"Doe, J\" <j@News.Example.>\r\nTo: x@y\r\n\r\nbody\r\n";
        assert_eq!(from_domain(&parse(m)).as_deref(), Some("news.example"));
        assert_eq!(from_domain(&parse(b"To: x@y\r\n\r\nbody\r\n")), None);
    }

    #[test]
    fn default_headers_sign_only_present_ones() {
        let m = b"From: a@b.example\r\nsubject: hi\r\nX-Other: 1\r\n\r\nbody\r\n";
        assert_eq!(default_headers(&parse(m)), ["From", "From", "Subject"]);
    }
}
