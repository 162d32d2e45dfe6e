//! Text helpers: whitespace normalisation, SMTP code extraction, address extraction, and
//! the JSON helpers behind `sluice bounce classify`.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Value};

use super::message::classify_message;
use super::rules::BounceRules;

fn re(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).ok()).as_ref()
}

/// Joins lines, drops the SMTP continuation prefixes ("550-5.1.1 ") of the second and
/// following lines and collapses whitespace.
pub fn normalize(text: &str) -> String {
    static CONT: OnceLock<Option<Regex>> = OnceLock::new();
    let cont = re(&CONT, r"^\s*[245]\d\d[ -](?:#?[245]\.\d{1,3}\.\d{1,3}\b)?");
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let mut l = line;
        if i > 0 {
            if let Some(m) = cont.and_then(|c| c.find(l)) {
                l = &l[m.end()..];
            }
        }
        for w in l.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(w);
        }
    }
    out
}

/// The basic reply code and the enhanced status found in a reply or diagnostic text.
///
/// The basic code is the first 4xx/5xx number followed by an enhanced status, else the
/// first one at the start of a line or after `:` / `;` / `(`; the enhanced status is the
/// first `4.x.x` / `5.x.x` token.
pub fn extract_codes(text: &str) -> (Option<u16>, Option<String>) {
    static BOTH: OnceLock<Option<Regex>> = OnceLock::new();
    static BASIC: OnceLock<Option<Regex>> = OnceLock::new();
    static ENH: OnceLock<Option<Regex>> = OnceLock::new();
    let both = re(
        &BOTH,
        r"(?:^|[^\w.#-])([45]\d\d)[ -]#?\(?([45]\.\d{1,3}\.\d{1,3})(?:[^\w.]|\.(?:\s|$)|$)",
    );
    let basic = re(
        &BASIC,
        r"(?m)(?:^[\s>]*|[:;(\[]\s*|said:\s*|<<<\s*|\bcode:?\s*|\berror\s*)([45]\d\d)(?:[ ,-]|\.?$)",
    );
    let enh = re(
        &ENH,
        r"(?:^|[^\w.])[#(]?([45]\.\d{1,3}\.\d{1,3})(?:[^\w.]|\.(?:\s|$)|$)",
    );
    if let Some(c) = both.and_then(|r| r.captures(text)) {
        let code = c.get(1).and_then(|m| m.as_str().parse().ok());
        let e = c.get(2).map(|m| m.as_str().to_string());
        return (code, e);
    }
    let code = basic
        .and_then(|r| r.captures(text))
        .and_then(|c| c.get(1))
        .and_then(|m| m.as_str().parse().ok());
    let e = enh
        .and_then(|r| r.captures(text))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string());
    (code, e)
}

/// The first e-mail address in `text`, preferring one in angle brackets.
pub fn first_address(text: &str) -> Option<String> {
    static ANGLE: OnceLock<Option<Regex>> = OnceLock::new();
    static BARE: OnceLock<Option<Regex>> = OnceLock::new();
    let angle = re(&ANGLE, r"<([^<>\s@]+@[A-Za-z0-9][A-Za-z0-9.-]*)>");
    let bare = re(
        &BARE,
        r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)+)",
    );
    angle
        .and_then(|r| r.captures(text))
        .or_else(|| bare.and_then(|r| r.captures(text)))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim_end_matches('.').to_string())
}

/// Strips an address-type prefix ("rfc822; x@y") and angle brackets.
pub fn strip_addr_type(value: &str) -> String {
    let v = match value.split_once(';') {
        Some((_, rest)) => rest,
        None => value,
    };
    v.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// Strips a diagnostic-type prefix ("smtp; 550 ...") from a Diagnostic-Code value.
pub fn strip_diag_type(value: &str) -> String {
    let v = value.trim();
    match v.split_once(';') {
        Some((t, rest))
            if !t.is_empty()
                && t.len() <= 20
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            rest.trim().to_string()
        }
        _ => v.to_string(),
    }
}

/// `{"type", "reason", "status", "recipient"}` for one SMTP reply text ("550 5.1.1 ...").
pub fn classify_text_json(text: &str, rules: &BounceRules) -> Value {
    let (code, enhanced) = extract_codes(text);
    let c = rules.classify_reply(code, enhanced.as_deref(), text);
    json!({
        "type": c.bounce_type.as_str(),
        "reason": c.reason.as_str(),
        "status": enhanced,
        "recipient": first_address(text),
    })
}

/// `{"type", "reason", "status", "recipient"}` for one returned message (raw RFC 5322).
pub fn classify_file_json(raw: &[u8], rules: &BounceRules) -> Value {
    let v = classify_message(raw, rules);
    json!({
        "type": v.bounce_type.as_str(),
        "reason": v.reason.as_str(),
        "status": v.status,
        "recipient": v.recipient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_replies() {
        assert_eq!(
            extract_codes("550 5.1.1 <x@y> User unknown"),
            (Some(550), Some("5.1.1".into()))
        );
        assert_eq!(
            extract_codes("550-5.1.1 The email account"),
            (Some(550), Some("5.1.1".into()))
        );
        assert_eq!(
            extract_codes("smtp; 421 4.16.55 [TS01] Messages"),
            (Some(421), Some("4.16.55".into()))
        );
        assert_eq!(extract_codes("554 delivery error: dd"), (Some(554), None));
        assert_eq!(extract_codes("from 192.0.2.1 port 25"), (None, None));
        assert_eq!(
            extract_codes("Remote host said: 552 mailbox full"),
            (Some(552), None)
        );
        assert_eq!(
            extract_codes("#5.1.1 no such user"),
            (None, Some("5.1.1".into()))
        );
    }

    #[test]
    fn normalize_joins_continuations() {
        assert_eq!(
            normalize("550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking"),
            "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking"
        );
    }

    #[test]
    fn json_helpers() {
        let rules = BounceRules::builtin();
        let v = classify_text_json("550 5.1.1 <x@example.org> User is unknown", &rules);
        assert_eq!(v["type"], "hard");
        assert_eq!(v["reason"], "user_unknown");
        assert_eq!(v["status"], "5.1.1");
        assert_eq!(v["recipient"], "x@example.org");
        let v = classify_file_json(b"\xff\xfe garbage", &rules);
        assert_eq!(v["reason"], "unknown");
    }
}
