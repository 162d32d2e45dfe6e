//! Sender-domain DNS tooling: the records a brand domain publishes so that sluice can send for
//! it and receive its bounces, rendered as a table or as zone-file lines, and checked live.
//!
//! Each brand's envelope sender lives on a subdomain of the brand's domain
//! (`b-<code>@feedback.brand.example`): that subdomain's MX points at sluice's feedback
//! listener (or, for DNS providers that cannot create MX records, the subdomain is a CNAME to
//! a host that has that MX), its SPF authorises the sending IPs, and since it is under the
//! From: domain it aligns for DMARC (relaxed). The DKIM keys and a DMARC suggestion complete
//! the set.
//!
//! Names in [`Record`] are given without the trailing dot ("feedback.brand.example");
//! [`render_zone`] writes absolute names.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_resolver::proto::rr::{RData, Record as DnsRecord, RecordType};
use hickory_resolver::TokioResolver;
use serde::Serialize;

use crate::dkim::Signer;

/// TTL written by [`render_zone`].
pub const ZONE_TTL: u32 = 3600;
/// Preference of the feedback MX.
pub const MX_PREFERENCE: u16 = 10;
/// Longest character-string inside a TXT record (RFC 1035 §3.3).
pub const TXT_STRING_MAX: usize = 255;

/// [`Check::status`]: the record is published as it should be.
pub const STATUS_OK: &str = "ok";
/// [`Check::status`]: nothing (of the right kind) is published at the name.
pub const STATUS_MISSING: &str = "missing";
/// [`Check::status`]: something is published but it does not match.
pub const STATUS_WRONG: &str = "wrong";
/// [`Check::status`]: the DNS lookup itself failed (timeout, SERVFAIL, REFUSED...); the note
/// says why. Not a verdict on the record.
pub const STATUS_ERROR: &str = "error";

/// What one brand domain needs, in plain values (the caller reads sluice's configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSetup {
    /// Label(s) of the feedback subdomain under the brand domain, e.g. "feedback".
    pub subdomain: String,
    /// Host name of sluice's feedback MX, e.g. "bounce.mta.example.com".
    pub bounce_host: Option<String>,
    /// A host that itself has the feedback MX: the subdomain may be a CNAME to it instead.
    pub cname_target: Option<String>,
    /// Sending IPs, authorised by the subdomain's SPF.
    pub source_ips: Vec<IpAddr>,
    /// (record name, TXT value) of this domain's DKIM selectors; see [`dkim_for`].
    pub dkim: Vec<(String, String)>,
}

/// One DNS record to publish.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Record {
    /// Owner name, without the trailing dot.
    pub name: String,
    /// "MX", "CNAME" or "TXT".
    pub rtype: String,
    /// MX: "<preference> <host>"; CNAME: the target; TXT: the text, unquoted and whole.
    pub value: String,
    /// What the record is for, in a few words.
    pub purpose: String,
    /// Set when this record is an alternative to another one at the same name ("MX" for the
    /// CNAME): publish one or the other, never both.
    pub alternative_to: Option<String>,
}

/// The verdict on one [`Record`] after looking it up.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Check {
    pub record: Record,
    /// [`STATUS_OK`], [`STATUS_MISSING`], [`STATUS_WRONG`] or [`STATUS_ERROR`].
    pub status: String,
    /// What the DNS answered at the name, in the [`Record::value`] form (CNAME answers to an
    /// MX query are listed as "CNAME <target>").
    pub found: Vec<String>,
    pub note: Option<String>,
}

/// A domain name given by the user that cannot be a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("empty domain name")]
    Empty,
    #[error("bad domain name {domain:?}: {reason}")]
    Invalid { domain: String, reason: String },
}

/// Validate and normalise a domain name typed by a user: trimmed, lowercase, no trailing dot;
/// ASCII labels of letters, digits, '-' and '_' (1..=63 bytes), 253 bytes at most.
pub fn normalize_domain(raw: &str) -> Result<String, DomainError> {
    let domain = clean(raw);
    if domain.is_empty() {
        return Err(DomainError::Empty);
    }
    let bad = |reason: &str| DomainError::Invalid {
        domain: raw.trim().to_string(),
        reason: reason.to_string(),
    };
    if domain.len() > 253 {
        return Err(bad("longer than 253 bytes"));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(domain)
}

/// The signer's DKIM records for `domain`: those named `<selector>._domainkey.<domain>`.
pub fn dkim_for(signer: &Signer, domain: &str) -> Vec<(String, String)> {
    let suffix = format!("._domainkey.{}", clean(domain));
    signer
        .dns_records()
        .into_iter()
        .filter(|(name, _)| {
            let name = clean(name);
            name.len() > suffix.len() && name.ends_with(&suffix)
        })
        .collect()
}

/// The feedback subdomain of `domain`, e.g. "feedback.brand.example" (the domain itself if the
/// subdomain is empty).
pub fn feedback_name(domain: &str, subdomain: &str) -> String {
    let domain = clean(domain);
    let sub = subdomain.trim().trim_matches('.').to_ascii_lowercase();
    if sub.is_empty() {
        domain
    } else {
        format!("{sub}.{domain}")
    }
}

/// The SPF value authorising `ips` ("v=spf1 ip4:... ip6:... -all"), `None` without IPs (a
/// record authorising nothing would make every message fail SPF).
pub fn spf_value(ips: &[IpAddr]) -> Option<String> {
    let mut seen = HashSet::new();
    let mut v = String::from("v=spf1");
    for ip in ips.iter().filter(|ip| seen.insert(**ip)) {
        let _ = match ip {
            IpAddr::V4(a) => write!(v, " ip4:{a}"),
            IpAddr::V6(a) => write!(v, " ip6:{a}"),
        };
    }
    (!seen.is_empty()).then(|| format!("{v} -all"))
}

/// Which record of the set a [`Record`] is (drives the check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FeedbackMx,
    FeedbackCname,
    Spf,
    Dkim,
    Dmarc,
}

fn build(domain: &str, setup: &DomainSetup) -> Vec<(Kind, Record)> {
    let domain = clean(domain);
    let sub = feedback_name(&domain, &setup.subdomain);
    let bounce = non_empty(setup.bounce_host.as_deref());
    let cname = non_empty(setup.cname_target.as_deref());
    let rec = |name: &str, rtype: &str, value: String, purpose: String| Record {
        name: name.to_string(),
        rtype: rtype.to_string(),
        value,
        purpose,
        alternative_to: None,
    };
    let mut out = Vec::new();
    if let Some(host) = &bounce {
        let purpose = "bounces: the feedback subdomain's MX to sluice".to_string();
        out.push((
            Kind::FeedbackMx,
            rec(&sub, "MX", format!("{MX_PREFERENCE} {host}"), purpose),
        ));
    }
    if let Some(target) = &cname {
        let mut r = rec(&sub, "CNAME", target.clone(), String::new());
        if bounce.is_some() {
            r.purpose =
                "bounces: instead of the MX, for providers without MX (no other record may share \
                         the name)"
                    .to_string();
            r.alternative_to = Some("MX".to_string());
        } else {
            r.purpose = "bounces: the feedback subdomain to sluice's feedback host".to_string();
        }
        out.push((Kind::FeedbackCname, r));
    }
    if let Some(spf) = spf_value(&setup.source_ips) {
        let purpose = "SPF of the envelope (feedback) domain: the sending IPs".to_string();
        out.push((Kind::Spf, rec(&sub, "TXT", spf, purpose)));
    }
    for (name, value) in &setup.dkim {
        let name = clean(name);
        let selector = name.split("._domainkey.").next().unwrap_or_default();
        let purpose = format!("DKIM public key, selector {selector}");
        out.push((
            Kind::Dkim,
            rec(&name, "TXT", value.trim().to_string(), purpose),
        ));
    }
    let dmarc = format!("v=DMARC1; p=none; rua=mailto:dmarc@{domain}; adkim=r; aspf=r");
    let purpose = "DMARC (suggestion: monitor first, any existing policy is fine)".to_string();
    out.push((
        Kind::Dmarc,
        rec(&format!("_dmarc.{domain}"), "TXT", dmarc, purpose),
    ));
    out
}

/// Every record `domain` should publish: the feedback MX (to `bounce_host`, preference 10),
/// its CNAME alternative (to `cname_target`, `alternative_to = "MX"`), the feedback
/// subdomain's SPF (omitted without source IPs), each DKIM key, and a DMARC suggestion. MX or
/// CNAME are omitted when their host is not configured.
pub fn records(domain: &str, setup: &DomainSetup) -> Vec<Record> {
    build(domain, setup).into_iter().map(|(_, r)| r).collect()
}

/// A human-readable table: TYPE, NAME, PURPOSE, then the VALUE (whole, to copy).
pub fn render_table(records: &[Record]) -> String {
    let header = ["TYPE", "NAME", "PURPOSE", "VALUE"];
    let rows: Vec<[String; 4]> = records
        .iter()
        .map(|r| {
            let rtype = match &r.alternative_to {
                Some(alt) => format!("{} (or {alt})", r.rtype),
                None => r.rtype.clone(),
            };
            [rtype, r.name.clone(), r.purpose.clone(), r.value.clone()]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}

/// Zone-file lines (TTL 3600), each preceded by a comment with its purpose, e.g.
/// `feedback.brand.example. 3600 IN MX 10 bounce.mta.example.com.`. TXT values are quoted,
/// split into strings of at most 255 bytes. An alternative record (the CNAME) is written
/// commented out, since it cannot coexist with the record it replaces.
pub fn render_zone(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        let _ = writeln!(out, "; {}", r.purpose);
        let rdata = match r.rtype.as_str() {
            "MX" => match r.value.trim().split_once(char::is_whitespace) {
                Some((pref, host)) => format!("{pref} {}", absolute(host.trim())),
                None => r.value.clone(),
            },
            "CNAME" | "NS" | "PTR" => absolute(&r.value),
            "TXT" => quote_txt(&r.value),
            _ => r.value.clone(),
        };
        let line = format!("{} {ZONE_TTL} IN {} {rdata}", absolute(&r.name), r.rtype);
        match &r.alternative_to {
            Some(alt) => {
                let _ = writeln!(out, "; or, instead of the {alt} record:\n; {line}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

/// Split `text` into strings of at most [`TXT_STRING_MAX`] bytes (on character boundaries).
pub fn txt_chunks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(TXT_STRING_MAX);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// `"chunk1" "chunk2"`, with `"` and `\` escaped.
fn quote_txt(text: &str) -> String {
    let chunks = txt_chunks(text);
    if chunks.is_empty() {
        return "\"\"".to_string();
    }
    chunks
        .iter()
        .map(|c| format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn absolute(name: &str) -> String {
    let name = name.trim();
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Trimmed, lowercase, without the trailing dot.
fn clean(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(clean).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Live check

enum Answer {
    Records(Vec<DnsRecord>),
    /// NXDOMAIN or no record of that type.
    Empty,
    Failed(String),
}

async fn query(resolver: &TokioResolver, name: &str, rtype: RecordType) -> Answer {
    match resolver.lookup(absolute(name), rtype).await {
        Ok(lookup) => Answer::Records(lookup.answers().to_vec()),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Answer::Empty,
        Err(e) => Answer::Failed(format!("{rtype} lookup of {name} failed: {e}")),
    }
}

/// The TXT texts of an answer (character-strings concatenated).
fn texts(answer: &Answer) -> Vec<String> {
    let Answer::Records(records) = answer else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

/// What the feedback subdomain resolves to.
#[derive(Default)]
struct Feedback {
    /// Targets of CNAMEs owned by the subdomain.
    cnames: Vec<String>,
    /// MX answers for the subdomain (through its CNAME if any): (preference, host).
    mx: Vec<(u16, String)>,
    mx_error: Option<String>,
    cname_error: Option<String>,
}

impl Feedback {
    async fn probe(resolver: &TokioResolver, sub: &str) -> Feedback {
        let (mx, cname) = tokio::join!(
            query(resolver, sub, RecordType::MX),
            query(resolver, sub, RecordType::CNAME)
        );
        let mut fb = Feedback::default();
        for (answer, is_mx) in [(mx, true), (cname, false)] {
            let records = match answer {
                Answer::Records(r) => r,
                Answer::Empty => continue,
                Answer::Failed(e) => {
                    if is_mx {
                        fb.mx_error = Some(e);
                    } else {
                        fb.cname_error = Some(e);
                    }
                    continue;
                }
            };
            for r in records {
                match &r.data {
                    RData::MX(mx) => {
                        let v = (mx.preference, clean(&mx.exchange.to_ascii()));
                        if !fb.mx.contains(&v) {
                            fb.mx.push(v);
                        }
                    }
                    RData::CNAME(c) if clean(&r.name.to_ascii()) == sub => {
                        let t = clean(&c.0.to_ascii());
                        if !fb.cnames.contains(&t) {
                            fb.cnames.push(t);
                        }
                    }
                    _ => {}
                }
            }
        }
        fb
    }

    fn found(&self) -> Vec<String> {
        let cnames = self.cnames.iter().map(|t| format!("CNAME {t}"));
        cnames
            .chain(self.mx.iter().map(|(p, h)| format!("{p} {h}")))
            .collect()
    }

    fn has_mx_to(&self, host: &str) -> bool {
        self.mx.iter().any(|(_, h)| h == host)
    }
}

fn verdict(record: Record, status: &str, found: Vec<String>, note: Option<String>) -> Check {
    Check {
        record,
        status: status.to_string(),
        found,
        note,
    }
}

fn check_mx(record: Record, fb: &Feedback, bounce: &str, cname_target: Option<&str>) -> Check {
    let found = fb.found();
    if let Some(via) = fb.cnames.first() {
        if fb.has_mx_to(bounce) || Some(via.as_str()) == cname_target {
            let note = format!("via CNAME to {via}");
            return verdict(record, STATUS_OK, found, Some(note));
        }
        let note = format!(
            "{} is a CNAME to {via}, which has no MX to {bounce}",
            record.name
        );
        return verdict(record, STATUS_WRONG, found, Some(note));
    }
    if fb.has_mx_to(bounce) {
        verdict(record, STATUS_OK, found, None)
    } else if !fb.mx.is_empty() {
        let note = format!("no MX to {bounce}: bounces would not reach sluice");
        verdict(record, STATUS_WRONG, found, Some(note))
    } else if let Some(e) = &fb.mx_error {
        verdict(record, STATUS_ERROR, found, Some(e.clone()))
    } else {
        verdict(record, STATUS_MISSING, found, None)
    }
}

fn check_cname(record: Record, fb: &Feedback, target: &str, bounce: Option<&str>) -> Check {
    let found = fb.cnames.clone();
    if fb.cnames.iter().any(|t| t == target) {
        verdict(record, STATUS_OK, found, None)
    } else if let Some(other) = fb.cnames.first() {
        let note = format!("CNAME to {other}, expected {target}");
        verdict(record, STATUS_WRONG, found, Some(note))
    } else if bounce.is_some_and(|b| fb.has_mx_to(b)) {
        let note = "not needed: the MX record is published".to_string();
        verdict(record, STATUS_OK, found, Some(note))
    } else if let Some(e) = &fb.cname_error {
        verdict(record, STATUS_ERROR, found, Some(e.clone()))
    } else {
        verdict(record, STATUS_MISSING, found, None)
    }
}

fn is_spf(text: &str) -> bool {
    let t = text.trim().trim_matches('"');
    t.get(..6).is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
        && t.as_bytes().get(6).is_none_or(|b| *b == b' ')
}

/// Whether the network `net` ("192.0.2.0/24", "2001:db8::1") contains `ip`.
fn net_contains(net: &str, ip: IpAddr) -> bool {
    let (addr, len) = match net.split_once('/') {
        Some((a, l)) => match l.parse::<u32>() {
            Ok(l) => (a, Some(l)),
            Err(_) => return false,
        },
        None => (net, None),
    };
    match (addr.parse::<IpAddr>(), ip) {
        (Ok(IpAddr::V4(n)), IpAddr::V4(ip)) => {
            let len = len.unwrap_or(32);
            len <= 32 && masked(u32::from(n).into(), u32::from(ip).into(), len, 32)
        }
        (Ok(IpAddr::V6(n)), IpAddr::V6(ip)) => {
            let len = len.unwrap_or(128);
            len <= 128 && masked(u128::from(n), u128::from(ip), len, 128)
        }
        _ => false,
    }
}

/// Whether the first `len` bits of two `width`-bit numbers agree.
fn masked(a: u128, b: u128, len: u32, width: u32) -> bool {
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (a >> shift) == (b >> shift)
}

/// The IPs of `ips` that the SPF record `spf` does not list in an `ip4:`/`ip6:` mechanism
/// (with a pass qualifier).
fn spf_missing_ips(spf: &str, ips: &[IpAddr]) -> Vec<IpAddr> {
    let nets: Vec<String> = spf
        .split_whitespace()
        .map(|t| t.trim_matches('"').to_ascii_lowercase())
        .filter_map(|t| {
            let t = t.strip_prefix('+').unwrap_or(&t).to_string();
            t.strip_prefix("ip4:")
                .or_else(|| t.strip_prefix("ip6:"))
                .map(str::to_string)
        })
        .collect();
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if !nets.iter().any(|n| net_contains(n, *ip)) && !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// An SPF term that may authorise IPs through another lookup (not followed by the check).
fn is_indirect(term: &str) -> bool {
    let t = term.to_ascii_lowercase();
    let t = t.trim_start_matches(['+', '-', '~', '?']);
    let prefixed =
        |m: &str| t == m || t.starts_with(&format!("{m}:")) || t.starts_with(&format!("{m}/"));
    prefixed("a")
        || prefixed("mx")
        || t.starts_with("include:")
        || t.starts_with("exists:")
        || t.starts_with("redirect=")
}

fn check_spf(record: Record, answer: &Answer, ips: &[IpAddr], fb: Option<&Feedback>) -> Check {
    let found = texts(answer);
    let via = fb
        .and_then(|f| f.cnames.first())
        .map(|t| format!("served via CNAME to {t}"));
    if let Answer::Failed(e) = answer {
        return verdict(record, STATUS_ERROR, found, Some(e.clone()));
    }
    let spf: Vec<&String> = found.iter().filter(|t| is_spf(t)).collect();
    let note = |s: String| Some(via.as_ref().map_or(s.clone(), |v| format!("{s} ({v})")));
    match spf.as_slice() {
        [] => {
            let n = via.clone();
            verdict(record, STATUS_MISSING, found, n)
        }
        [one] => {
            let missing = spf_missing_ips(one, ips);
            if missing.is_empty() {
                let n = via.clone();
                return verdict(record, STATUS_OK, found, n);
            }
            let list: Vec<String> = missing.iter().map(IpAddr::to_string).collect();
            let mut s = format!("does not list {}", list.join(", "));
            if one.split_whitespace().any(is_indirect) {
                s.push_str("; include/a/mx/redirect/exists are not followed by this check");
            }
            verdict(record, STATUS_WRONG, found, note(s))
        }
        _ => {
            let s = "several SPF records at the name (a permerror, RFC 7208 §4.5)".to_string();
            verdict(record, STATUS_WRONG, found, note(s))
        }
    }
}

/// The `p=` tag of a DKIM key record, whitespace and quotes removed.
fn dkim_p(text: &str) -> Option<String> {
    let s: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .collect();
    s.split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| *k == "p")
        .map(|(_, v)| v.to_string())
}

fn check_dkim(record: Record, answer: &Answer) -> Check {
    let found = texts(answer);
    if let Answer::Failed(e) = answer {
        return verdict(record, STATUS_ERROR, found, Some(e.clone()));
    }
    if found.is_empty() {
        return verdict(record, STATUS_MISSING, found, None);
    }
    let ours = dkim_p(&record.value);
    let published: Vec<Option<String>> = found.iter().map(|t| dkim_p(t)).collect();
    if ours.is_some() && published.contains(&ours) {
        return verdict(record, STATUS_OK, found, None);
    }
    let note = if published.iter().all(Option::is_none) {
        "the published record has no p= tag"
    } else if published.iter().any(|p| p.as_deref() == Some("")) {
        "the published key is revoked (empty p=)"
    } else {
        "the published p= differs from the configured key"
    };
    verdict(record, STATUS_WRONG, found, Some(note.to_string()))
}

fn check_dmarc(record: Record, answer: &Answer) -> Check {
    let found = texts(answer);
    if let Answer::Failed(e) = answer {
        return verdict(record, STATUS_ERROR, found, Some(e.clone()));
    }
    let is_dmarc = |t: &String| {
        let t = t.trim().trim_start_matches('"');
        t.get(..8)
            .is_some_and(|v| v.eq_ignore_ascii_case("v=DMARC1"))
    };
    if found.iter().any(is_dmarc) {
        let note = "a DMARC record exists (the suggested one is only a starting point)";
        verdict(record, STATUS_OK, found, Some(note.to_string()))
    } else {
        verdict(record, STATUS_MISSING, found, None)
    }
}

/// Look every record of [`records`] up through `resolver` and say whether it is published.
///
/// - Feedback MX: ok if an MX to `bounce_host` exists, or if the subdomain is a CNAME to
///   `cname_target` (note "via CNAME to ..."); wrong if the MX (or CNAME) points elsewhere.
/// - CNAME alternative: ok if the subdomain is a CNAME to `cname_target`, or when the MX is
///   published (note "not needed"); wrong if a CNAME points elsewhere.
/// - SPF: ok if the single `v=spf1` TXT at the subdomain lists every sending IP in `ip4:` /
///   `ip6:` (a covering network counts); wrong if one is missing or there are several SPF
///   records; missing if none.
/// - DKIM: ok if a TXT's `p=` equals ours (whitespace and quotes ignored); wrong if it
///   differs; missing without TXT.
/// - DMARC: ok if any `v=DMARC1` record exists; missing otherwise.
///
/// A failed lookup (timeout, SERVFAIL, REFUSED) gives [`STATUS_ERROR`] with the error as note.
pub async fn check(domain: &str, setup: &DomainSetup, resolver: &TokioResolver) -> Vec<Check> {
    let built = build(domain, setup);
    let sub = feedback_name(domain, &setup.subdomain);
    let bounce = non_empty(setup.bounce_host.as_deref());
    let cname_target = non_empty(setup.cname_target.as_deref());
    let feedback = if bounce.is_some() || cname_target.is_some() {
        Some(Feedback::probe(resolver, &sub).await)
    } else {
        None
    };
    let mut out = Vec::with_capacity(built.len());
    for (kind, record) in built {
        let c = match (kind, &feedback) {
            (Kind::FeedbackMx, Some(fb)) => {
                let bounce = bounce.as_deref().unwrap_or_default();
                check_mx(record, fb, bounce, cname_target.as_deref())
            }
            (Kind::FeedbackCname, Some(fb)) => {
                let target = cname_target.as_deref().unwrap_or_default();
                check_cname(record, fb, target, bounce.as_deref())
            }
            (Kind::FeedbackMx | Kind::FeedbackCname, None) => {
                verdict(record, STATUS_MISSING, Vec::new(), None)
            }
            (Kind::Spf, fb) => {
                let answer = query(resolver, &record.name, RecordType::TXT).await;
                check_spf(record, &answer, &setup.source_ips, fb.as_ref())
            }
            (Kind::Dkim, _) => {
                let answer = query(resolver, &record.name, RecordType::TXT).await;
                check_dkim(record, &answer)
            }
            (Kind::Dmarc, _) => {
                let answer = query(resolver, &record.name, RecordType::TXT).await;
                check_dmarc(record, &answer)
            }
        };
        out.push(c);
    }
    out
}

/// The setup of `domain` from sluice's configuration (the VERP subdomain, the feedback
/// host names, the sending IPs and the DKIM keys of that domain).
/// Call [`DomainSetup::dkim_of`] with the domain to add its DKIM records.
pub fn setup_for(cfg: &crate::config::Config, signer: Option<&Signer>) -> DomainSetup {
    DomainSetup {
        subdomain: cfg
            .verp
            .subdomain
            .clone()
            .unwrap_or_else(|| "feedback".into()),
        bounce_host: cfg.verp.bounce_host.clone(),
        cname_target: cfg.verp.cname_target.clone(),
        source_ips: cfg.sources.iter().filter_map(|s| s.ip).collect(),
        dkim: Vec::new(),
    }
    .dkim_of(signer, "")
}

impl DomainSetup {
    /// Add the DKIM records of `domain` from the signer.
    pub fn dkim_of(mut self, signer: Option<&Signer>, domain: &str) -> DomainSetup {
        if let Some(s) = signer {
            self.dkim = dkim_for(s, domain);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_coverage() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let spf = "v=spf1 ip4:192.0.2.0/24 +ip6:2001:db8::/32 -ip4:10.0.0.1 -all";
        assert!(spf_missing_ips(spf, &[ip("192.0.2.77"), ip("2001:db8::5")]).is_empty());
        assert_eq!(
            spf_missing_ips(spf, &[ip("10.0.0.1")]),
            vec![ip("10.0.0.1")]
        );
        assert!(net_contains("0.0.0.0/0", ip("8.8.8.8")));
        assert!(!net_contains("192.0.2.1/33", ip("192.0.2.1")));
        assert!(!net_contains("192.0.2.1", ip("2001:db8::1")));
        assert!(is_spf("v=spf1 -all") && is_spf("V=SPF1") && !is_spf("v=spf10 -all"));
    }

    #[test]
    fn dkim_p_ignores_whitespace_and_quotes() {
        assert_eq!(
            dkim_p("v=DKIM1; k=rsa; p=AB CD\"\"EF").as_deref(),
            Some("ABCDEF")
        );
        assert_eq!(dkim_p("v=DKIM1; k=rsa"), None);
    }
}
