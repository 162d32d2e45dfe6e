//! Envelope-sender extraction: the address a returned message was originally sent from
//! (usually a VERP address), used to link a bounce to its delivery.
//!
//! Sources, most reliable first: the `Return-Path` of the enclosed original message
//! (`message/rfc822`, `message/global`, `text/rfc822-headers`), the sender fields some
//! MTAs add to the delivery report (`X-Postfix-Sender`, `X-Original-Mail-From`, ...), the
//! `envelope-from` / `envelope sender` note of a `Received` header of the enclosed message,
//! and finally the same headers quoted in the text of a plain bounce.

use std::sync::OnceLock;

use regex::Regex;

use super::text::strip_addr_type;

fn re(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).ok()).as_ref()
}

/// A usable envelope address: not empty, not the null sender, has an `@`.
pub(crate) fn clean_address(value: &str) -> Option<String> {
    let a = strip_addr_type(value);
    let a = a
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c| matches!(c, '<' | '>' | '"' | '\'' | ',' | ';'));
    (a.contains('@') && !a.starts_with('@') && !a.ends_with('@')).then(|| a.to_string())
}

/// Unfolded header lines of the first header block of `text` (up to the first empty
/// line), as `(lowercase name, value)`.
fn header_block(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if out.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                out.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    out
}

/// The `envelope-from` of a `Received` header value ("(envelope-from <a@b>)",
/// "envelope-from=<a@b>", "(envelope sender: <a@b>)").
fn received_envelope(value: &str) -> Option<String> {
    static ENV: OnceLock<Option<Regex>> = OnceLock::new();
    let r = re(
        &ENV,
        r#"(?i)envelope[- ](?:from|sender)\s*[:=]?\s*["<]?([^\s<>();,"]+@[^\s<>();,"]+)"#,
    )?;
    r.captures(value)
        .and_then(|c| c.get(1))
        .and_then(|m| clean_address(m.as_str()))
}

/// The envelope sender named by the headers of an enclosed original message: its
/// `Return-Path`, else an `X-Envelope-From`-like header, else the `envelope-from` note of
/// its `Received` headers.
pub(crate) fn from_headers(text: &str) -> Option<String> {
    let fields = header_block(text);
    let get = |names: &[&str]| {
        fields
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .find_map(|(_, v)| clean_address(v))
    };
    get(&["return-path"])
        .or_else(|| get(&["x-envelope-from", "envelope-from", "x-original-return-path"]))
        .or_else(|| {
            fields
                .iter()
                .filter(|(n, _)| n == "received" || n == "received-spf")
                .find_map(|(_, v)| received_envelope(v))
        })
}

/// The envelope sender a delivery-status report names in its per-message fields
/// (`X-Postfix-Sender: rfc822; a@b`, `X-Original-Mail-From`, `X-Envelope-From`, ...).
pub(crate) fn from_report(ds: &str) -> Option<String> {
    static SENDER: OnceLock<Option<Regex>> = OnceLock::new();
    let r = re(
        &SENDER,
        r"(?mi)^(?:x-[a-z0-9]+-sender|x-original-mail-from|original-mail-from|x-envelope-from|x-sender)\s*:\s*(.+)$",
    )?;
    r.captures_iter(ds)
        .filter_map(|c| c.get(1))
        .find_map(|m| clean_address(m.as_str()))
}

/// The envelope sender quoted in the text of a plain bounce after its "original message"
/// mark: a `Return-Path:` line, else an `envelope-from` / `envelope sender` note.
pub(crate) fn from_quoted(text: &str) -> Option<String> {
    static RP: OnceLock<Option<Regex>> = OnceLock::new();
    let rp = re(&RP, r"(?mi)^[\s>|]*return-path\s*:\s*(.+)$")?;
    rp.captures_iter(text)
        .filter_map(|c| c.get(1))
        .find_map(|m| clean_address(m.as_str()))
        .or_else(|| received_envelope(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            clean_address("<b+x=y@s.example>").as_deref(),
            Some("b+x=y@s.example")
        );
        assert_eq!(clean_address("<>"), None);
        assert_eq!(
            clean_address("rfc822; a@b.example").as_deref(),
            Some("a@b.example")
        );
    }

    #[test]
    fn headers() {
        let h = "Received: from x by y\n (envelope-from <bounce+1@s.example>); Mon\nFrom: a@b\n\nbody Return-Path: <no@x>\n";
        assert_eq!(from_headers(h).as_deref(), Some("bounce+1@s.example"));
        let h = "Return-Path: <v+2@s.example>\nReceived: (envelope-from <o@s.example>)\n";
        assert_eq!(from_headers(h).as_deref(), Some("v+2@s.example"));
        let ds = "Reporting-MTA: dns; mx\nX-Postfix-Sender: rfc822; v+3@s.example\n\nFinal-Recipient: rfc822; u@r\n";
        assert_eq!(from_report(ds).as_deref(), Some("v+3@s.example"));
        assert_eq!(
            from_quoted("--- copy\n\n  Return-Path: <v+4@s.example>\n").as_deref(),
            Some("v+4@s.example")
        );
    }
}
