//! Returned-mail parsing: RFC 3464 DSNs, RFC 5965 ARF reports, RFC 3834 auto-replies and
//! legacy plain-text bounces → [`MessageVerdict`].

use std::sync::OnceLock;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use regex::Regex;
use serde::Serialize;

use super::envelope;
use super::rules::{enhanced_reason, fallback_reason, final_status, BounceRules};
use super::text::{extract_codes, first_address, normalize, strip_addr_type, strip_diag_type};
use super::{BounceType, Reason};

/// What kind of returned message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// RFC 3464 delivery status notification.
    Dsn,
    /// RFC 5965 feedback report.
    Arf,
    /// RFC 3834 auto-reply / out-of-office.
    AutoReply,
    /// Legacy bounce without a machine-readable report.
    PlainBounce,
    /// Not recognised (or not parsable).
    Unknown,
}

/// The classification of one returned message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageVerdict {
    /// What kind of message.
    pub kind: MessageKind,
    /// hard / soft / ignored.
    pub bounce_type: BounceType,
    /// The reason.
    pub reason: Reason,
    /// Enhanced status, e.g. "5.1.1".
    pub status: Option<String>,
    /// The failed recipient.
    pub recipient: Option<String>,
    /// DSN action (failed, delayed, ...).
    pub action: Option<String>,
    /// The diagnostic text.
    pub diagnostic: Option<String>,
    /// Return-Path of the enclosed original message (for VERP linking).
    pub original_envelope: Option<String>,
}

impl MessageVerdict {
    fn new(kind: MessageKind, reason: Reason) -> MessageVerdict {
        MessageVerdict {
            kind,
            bounce_type: reason.default_type(),
            reason,
            status: None,
            recipient: None,
            action: None,
            diagnostic: None,
            original_envelope: None,
        }
    }
}

fn re(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(pattern).ok()).as_ref()
}

fn is_match(cell: &'static OnceLock<Option<Regex>>, pattern: &str, text: &str) -> bool {
    re(cell, pattern).is_some_and(|r| r.is_match(text))
}

/// Parsed body pieces of a message.
#[derive(Default)]
struct Parts {
    human: Vec<String>,
    delivery_status: Option<String>,
    feedback: Option<String>,
    original_headers: Option<String>,
    original_envelope: Option<String>,
}

fn part_text(body: &PartType<'_>) -> Option<String> {
    match body {
        PartType::Text(t) => Some(t.to_string()),
        PartType::Html(h) => Some(strip_html(h)),
        PartType::Binary(b) | PartType::InlineBinary(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

fn strip_html(html: &str) -> String {
    static TAG: OnceLock<Option<Regex>> = OnceLock::new();
    let text = match re(
        &TAG,
        r"(?is)<(?:br|/p|/div|/tr)[^>]*>|<style.*?</style>|<[^>]*>",
    ) {
        Some(r) => r
            .replace_all(html, |c: &regex::Captures<'_>| {
                let t = c.get(0).map_or("", |m| m.as_str()).to_ascii_lowercase();
                if t.starts_with("<br") || t.starts_with("</") && !t.starts_with("</style") {
                    "\n"
                } else {
                    " "
                }
            })
            .into_owned(),
        None => html.to_string(),
    };
    text.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The envelope sender of an enclosed original message (Return-Path, envelope-from).
fn envelope_of(m: &Message<'_>) -> Option<String> {
    m.header_raw("Return-Path")
        .and_then(envelope::clean_address)
        .or_else(|| envelope::from_headers(&String::from_utf8_lossy(m.raw_message())))
}

fn collect_parts(msg: &Message<'_>) -> Parts {
    let mut p = Parts::default();
    for (i, part) in msg.parts.iter().enumerate() {
        if i > 0 && p.original_envelope.is_none() {
            // An original message enclosed without its own Content-Type: its headers are
            // parsed as the headers of the MIME part.
            let raw = msg.raw_message();
            let (start, end) = (part.offset_header as usize, part.offset_body as usize);
            if let Some(h) = raw.get(start..end.max(start)) {
                p.original_envelope = envelope::from_headers(&String::from_utf8_lossy(h));
            }
        }
        let (ctype, sub) = match part.content_type() {
            Some(ct) => (
                ct.ctype().to_ascii_lowercase(),
                ct.subtype().unwrap_or("").to_ascii_lowercase(),
            ),
            None => ("text".to_string(), "plain".to_string()),
        };
        if let PartType::Message(m) = &part.body {
            if p.original_envelope.is_none() {
                p.original_envelope = envelope_of(m);
            }
            continue;
        }
        let Some(text) = part_text(&part.body) else {
            continue;
        };
        match (ctype.as_str(), sub.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                p.delivery_status.get_or_insert(text);
            }
            ("message", "feedback-report") => {
                p.feedback.get_or_insert(text);
            }
            ("text" | "message", s) if s.starts_with("rfc822-header") || s == "global-headers" => {
                p.original_headers.get_or_insert(text);
            }
            ("text", _) | ("message", _) => p.human.push(text),
            _ if matches!(part.body, PartType::Text(_) | PartType::Html(_)) => p.human.push(text),
            _ => {}
        }
    }
    if p.original_envelope.is_none() {
        p.original_envelope = p
            .original_headers
            .as_deref()
            .and_then(envelope::from_headers);
    }
    p
}

/// Unfolded `(lowercase name, value)` fields of a header block.
fn parse_fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
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

fn header_value(block: &str, name: &str) -> Option<String> {
    parse_fields(block)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Splits a delivery-status body into blocks; returns the recipient block to report.
fn recipient_block(ds: &str) -> Option<Vec<(String, String)>> {
    let normalized = ds.replace("\r\n", "\n");
    let blocks: Vec<Vec<(String, String)>> = normalized
        .split("\n\n")
        .map(parse_fields)
        .filter(|f| {
            f.iter().any(|(n, _)| {
                matches!(
                    n.as_str(),
                    "final-recipient" | "original-recipient" | "action" | "status"
                )
            })
        })
        .collect();
    let failed = blocks.iter().position(|b| {
        field(b, "action").is_some_and(|a| a.to_ascii_lowercase().starts_with("fail"))
    });
    let idx = failed.or_else(|| blocks.iter().position(|b| field(b, "status").is_some()))?;
    blocks.into_iter().nth(idx)
}

/// Cuts a human-readable bounce text before the enclosed original message.
fn cut_original(text: &str) -> (&str, &str) {
    static MARK: OnceLock<Option<Regex>> = OnceLock::new();
    let mark = re(
        &MARK,
        r"(?mi)^[\s>|]*(?:-{2,}|={2,}|\*{2,})?\s*(?:this is a copy of|original message|below this line|a copy of the original|(?:the )?(?:original|returned|undelivered|rejected)[- ](?:message|mail|e-?mail)|message header|headers? (?:of|from) (?:the )?(?:original|message)|unsent message|included message|your message (?:reads|follows)|start of returned message|content-type: message/rfc822)|^(?:return-path|received|dkim-signature|message-id|x-mailer|mime-version):\s",
    );
    let skip = |start: usize| {
        let start = text.len() - text[start..].trim_start().len();
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[start..line_end].to_ascii_lowercase();
        line.contains("was received")
            || line.contains("received at")
            || line.contains("received on")
    };
    match mark.and_then(|r| {
        r.find_iter(text)
            .find(|m| m.start() > 0 && !skip(m.start()))
    }) {
        Some(m) => text.split_at(m.start()),
        None => (text, ""),
    }
}

fn looks_like_bounce(msg: &Message<'_>) -> bool {
    static FROM: OnceLock<Option<Regex>> = OnceLock::new();
    static SUBJ: OnceLock<Option<Regex>> = OnceLock::new();
    let from = msg.header_raw("From").unwrap_or("");
    let subject = msg.subject().unwrap_or("");
    is_match(
        &FROM,
        r"(?i)mailer-daemon|postmaster|mail delivery|mdaemon|mail administrator|\bdaemon\b|bounce",
        from,
    ) || is_match(
        &SUBJ,
        r"(?i)undeliver|deliver(?:y|ed)? (?:status|failure|notification|fail|report|problem)|returned mail|failure notice|mail delivery|non[- ]?delivery|could not be delivered|delivery has failed|rejected|bounce|could not send|mail system error|not delivered|error sending|delivery error|unzustellbar|nicht zustellbar|message you sent|failed",
        subject,
    )
}

/// A plain-text delay warning (the message is still queued and being retried).
fn is_delay_warning(msg: &Message<'_>, human: &str) -> bool {
    static SUBJ: OnceLock<Option<Regex>> = OnceLock::new();
    static TEXT: OnceLock<Option<Regex>> = OnceLock::new();
    is_match(
        &SUBJ,
        r"(?i)\bdelay(?:ed)?\b|^\s*warning\b|still being retried|could not send (?:mail|message) for (?:the )?past",
        msg.subject().unwrap_or(""),
    ) || is_match(
        &TEXT,
        r"(?i)this is a warning message only|you do not need to (?:re-?send|resend)|will (?:continue|keep) (?:trying|to try)|only a temporary failure report",
        human,
    )
}

fn is_auto_reply(msg: &Message<'_>) -> bool {
    static SUBJ: OnceLock<Option<Regex>> = OnceLock::new();
    static PREC: OnceLock<Option<Regex>> = OnceLock::new();
    let auto = msg
        .header_raw("Auto-Submitted")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v.starts_with("auto-replied"));
    let x = msg.header_raw("X-Autoreply").is_some()
        || msg.header_raw("X-Autorespond").is_some()
        || msg.header_raw("X-Autoresponder").is_some();
    let prec = msg
        .header_raw("Precedence")
        .is_some_and(|v| is_match(&PREC, r"(?i)auto[_-]?reply", v));
    let subject = msg.subject().unwrap_or("");
    let subj = is_match(
        &SUBJ,
        r"(?i)out of (?:the )?office|automatic reply|auto(?:matic)?[ -]?(?:reply|response|antwort)|^\s*auto:|abwesenheit|\babsence|vacation|\bcongés?\b|r[ée]ponse automatique|away from (?:my|the) (?:office|desk)|on leave|not in the office|autoreply",
        subject,
    );
    auto || x || prec || subj
}

/// Classifies one returned message. Never panics; unparsable input → kind `Unknown`.
///
/// A returned message reports a delivery that has finally failed (or, for `Action:
/// delayed`, is still being retried): a 4xx code in it does not make the failure
/// temporary, so its text is qualified by content ([`BounceRules::match_rule_final`]).
/// Delay notices are classified by their cause too and keep `action` = "delayed".
pub fn classify_message(raw: &[u8], rules: &BounceRules) -> MessageVerdict {
    classify_depth(raw, rules, 0)
}

/// How deep forwarded / enclosed bounces are followed.
const MAX_DEPTH: usize = 2;

fn classify_depth(raw: &[u8], rules: &BounceRules, depth: usize) -> MessageVerdict {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return MessageVerdict::new(MessageKind::Unknown, Reason::Unknown);
    };
    let mut v = classify_parsed(&msg, rules);
    if depth < MAX_DEPTH
        && v.reason == Reason::Unknown
        && matches!(v.kind, MessageKind::PlainBounce | MessageKind::Dsn)
    {
        if let Some(inner) = enclosed_bounce(&msg, rules, depth) {
            let envelope = inner.original_envelope.clone().or(v.original_envelope);
            v = MessageVerdict {
                original_envelope: envelope,
                recipient: inner.recipient.clone().or(v.recipient),
                ..inner
            };
        }
    }
    v
}

/// A bounce enclosed in a bounce (a forwarded or re-bounced notification): the verdict
/// of the first enclosed message that is itself a report with a usable diagnostic.
fn enclosed_bounce(msg: &Message<'_>, rules: &BounceRules, depth: usize) -> Option<MessageVerdict> {
    msg.parts.iter().find_map(|part| {
        let PartType::Message(m) = &part.body else {
            return None;
        };
        let inner = classify_depth(m.raw_message(), rules, depth + 1);
        let coded = inner.status.is_some()
            || extract_codes(inner.diagnostic.as_deref().unwrap_or(""))
                .0
                .is_some();
        let usable = match inner.kind {
            MessageKind::Dsn => true,
            MessageKind::PlainBounce => coded,
            _ => false,
        };
        (usable && inner.reason != Reason::Unknown).then_some(inner)
    })
}

fn classify_parsed(msg: &Message<'_>, rules: &BounceRules) -> MessageVerdict {
    let parts = collect_parts(msg);
    let report_type = msg
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();

    // ARF feedback report.
    let feedback = parts.feedback.clone().or_else(|| {
        parts
            .human
            .iter()
            .find(|t| {
                header_value(t, "feedback-type").is_some()
                    && header_value(t, "user-agent").is_some()
            })
            .cloned()
    });
    if feedback.is_some() || report_type == "feedback-report" {
        return classify_arf(&feedback.unwrap_or_default(), &parts);
    }

    let human_full: String = parts.human.join("\n");
    let (human, rest) = cut_original(&human_full);

    // RFC 3464 DSN (or DSN fields inside a text part).
    let ds = parts.delivery_status.clone().or_else(|| {
        static DSF: OnceLock<Option<Regex>> = OnceLock::new();
        parts
            .human
            .iter()
            .find(|t| {
                is_match(&DSF, r"(?mi)^(?:final|original)-recipient:", t)
                    && header_value(t, "status").is_some()
            })
            .cloned()
    });
    let original_envelope = parts
        .original_envelope
        .clone()
        .or_else(|| ds.as_deref().and_then(envelope::from_report))
        .or_else(|| envelope::from_quoted(rest));
    if let Some(block) = ds.as_deref().and_then(recipient_block) {
        let mut v = classify_dsn(&block, human, rules);
        v.original_envelope = original_envelope;
        return v;
    }

    let bounce_like = looks_like_bounce(msg);
    if !bounce_like && is_auto_reply(msg) {
        let mut v = MessageVerdict::new(MessageKind::AutoReply, Reason::AutoReply);
        v.recipient = msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_string);
        v.original_envelope = original_envelope;
        return v;
    }

    // Legacy plain-text bounce.
    let mut v = classify_plain(
        human,
        rules,
        bounce_like || report_type == "delivery-status",
    );
    if v.kind == MessageKind::PlainBounce && is_delay_warning(msg, human) {
        // Like a DSN's `Action: delayed`: classified by cause, skipped by the caller.
        v.action = Some("delayed".to_string());
    }
    if v.recipient.is_none() {
        v.recipient = first_address(human).filter(|a| {
            let to = msg.header_raw("To").unwrap_or("");
            !to.contains(a.as_str())
        });
    }
    v.original_envelope = original_envelope;
    v
}

/// An RFC 5965 feedback report: complaint, or ignored for auth-failure reports.
fn classify_arf(fb: &str, parts: &Parts) -> MessageVerdict {
    let ftype = header_value(fb, "feedback-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut v = if ftype.starts_with("auth-failure") {
        let mut v = MessageVerdict::new(MessageKind::Arf, Reason::Unknown);
        v.bounce_type = BounceType::Ignored;
        v
    } else {
        MessageVerdict::new(MessageKind::Arf, Reason::Complaint)
    };
    v.recipient = header_value(fb, "original-rcpt-to")
        .or_else(|| header_value(fb, "removal-recipient"))
        .map(|s| strip_addr_type(&s));
    v.original_envelope = header_value(fb, "original-mail-from")
        .and_then(|s| envelope::clean_address(&s))
        .or_else(|| parts.original_envelope.clone());
    v.diagnostic = Some(format!("feedback-type: {ftype}"));
    v
}

/// The SMTP command a rejection answered, when the bounce says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connect,
    Mail,
    Rcpt,
    Data,
}

fn smtp_stage(text: &str) -> Option<Stage> {
    static SAID: OnceLock<Option<Regex>> = OnceLock::new();
    static TRANSCRIPT: OnceLock<Option<Regex>> = OnceLock::new();
    let said = re(
        &SAID,
        r"(?i)(?:\bafter|\bin reply to|\bin response to|did not like our|\bfailed after)\s+(?:the\s+)?(end of data|data\b|mail from|mail\b|rcpt to|rcpt\b|helo|ehlo|initial connection|connect|greeting|banner)|(but sender was rejected)|(does not like recipient)",
    );
    let from_caps = |c: regex::Captures<'_>| -> Option<Stage> {
        if c.get(2).is_some() {
            return Some(Stage::Mail);
        }
        if c.get(3).is_some() {
            return Some(Stage::Rcpt);
        }
        let w = c.get(1)?.as_str().to_ascii_lowercase();
        Some(if w.contains("data") {
            Stage::Data
        } else if w.starts_with("mail") {
            Stage::Mail
        } else if w.starts_with("rcpt") {
            Stage::Rcpt
        } else {
            Stage::Connect
        })
    };
    if let Some(st) = said.and_then(|r| r.captures(text)).and_then(from_caps) {
        return Some(st);
    }
    // Session transcript: the last ">>> COMMAND" before the first "<<< 5xx".
    let tr = re(&TRANSCRIPT, r"(?mi)^\s*(?:>>>|<<<)\s*(\S+)")?;
    let mut last = None;
    for c in tr.captures_iter(text) {
        let whole = c.get(0).map_or("", |m| m.as_str()).trim_start();
        let word = c.get(1).map_or("", |m| m.as_str()).to_ascii_uppercase();
        if whole.starts_with("<<<") {
            if word.starts_with('4') || word.starts_with('5') {
                return last;
            }
        } else {
            last = match word.as_str() {
                "MAIL" => Some(Stage::Mail),
                "RCPT" => Some(Stage::Rcpt),
                "DATA" | "." => Some(Stage::Data),
                "HELO" | "EHLO" => Some(Stage::Connect),
                _ => last,
            };
        }
    }
    None
}

/// Adjusts a reason by the SMTP stage: a rejection of MAIL FROM or of the connection is
/// about the sender (refused); a "user unknown" after DATA comes from a content filter, and
/// so does one whose enhanced status points at the mailbox state or at a policy (x.2.x,
/// x.7.x) when the bounce does not say the RCPT command was rejected.
fn apply_stage(v: &mut MessageVerdict, stage: Option<Stage>, status: Option<&str>) {
    if v.bounce_type == BounceType::Ignored {
        return;
    }
    let policy_status = status.is_some_and(|s| {
        let mut it = s.trim().split('.').skip(1);
        matches!(it.next(), Some("2" | "7")) && it.next().is_some_and(|d| d != "0")
    });
    let refuse = match (stage, v.reason) {
        (Some(Stage::Mail | Stage::Connect), r) => matches!(
            r,
            Reason::UserUnknown
                | Reason::InvalidDomain
                | Reason::InactiveMailbox
                | Reason::MailboxFull
                | Reason::Unknown
        ),
        (Some(Stage::Data), Reason::UserUnknown) => true,
        (None, Reason::UserUnknown) => policy_status,
        _ => false,
    };
    if refuse {
        v.reason = Reason::Refused;
        v.bounce_type = BounceType::Soft;
    }
}

/// The line of a human-readable report about `recipient` ("<rcpt>: 550 ...", "rcpt: No MX
/// found for domain"), with its indented continuation lines, when it says more than the
/// address itself.
fn recipient_line(human: &str, recipient: &str) -> Option<String> {
    let rcpt = recipient.to_ascii_lowercase();
    if rcpt.is_empty() {
        return None;
    }
    let lines: Vec<&str> = human.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.to_ascii_lowercase().contains(&rcpt) && l.contains(':'))?;
    let mut out = lines[i].trim().to_string();
    for l in &lines[i + 1..] {
        if !l.starts_with([' ', '\t']) || l.trim().is_empty() {
            break;
        }
        out.push(' ');
        out.push_str(l.trim());
    }
    let lower = out.to_ascii_lowercase();
    let rest = lower.replace(&rcpt, " ");
    let words = rest
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() > 1)
        .count();
    (words >= 2).then_some(out)
}

fn classify_dsn(block: &[(String, String)], human: &str, rules: &BounceRules) -> MessageVerdict {
    let mut v = MessageVerdict::new(MessageKind::Dsn, Reason::Unknown);
    v.recipient = field(block, "final-recipient")
        .or_else(|| field(block, "original-recipient"))
        .map(strip_addr_type);
    v.action = field(block, "action").map(|a| a.trim().to_ascii_lowercase());
    let status_field = field(block, "status").and_then(|s| {
        let (_, e) = extract_codes(s);
        e.or_else(|| {
            let t = s.split_whitespace().next()?;
            (t.split('.').count() == 3).then(|| t.to_string())
        })
    });
    let diag = field(block, "diagnostic-code")
        .map(strip_diag_type)
        .filter(|d| !d.is_empty())
        .or_else(|| {
            v.recipient
                .as_deref()
                .and_then(|r| recipient_line(human, r))
        });
    let (dcode, denh) = diag.as_deref().map(extract_codes).unwrap_or((None, None));
    let generic = |s: &str| s.ends_with(".0.0") || s.split('.').nth(1).is_some_and(|x| x.len() > 2);
    let enhanced = match (&status_field, &denh) {
        (Some(s), Some(d)) if generic(s) && !generic(d) => Some(d.clone()),
        (Some(s), _) => Some(s.clone()),
        (None, d) => d.clone(),
    };
    v.status = enhanced.clone();
    v.diagnostic = diag.clone();

    let delayed = v.action.as_deref().is_some_and(|a| a.starts_with("delay"));
    let stage = smtp_stage(&format!("{}\n{}", diag.as_deref().unwrap_or(""), human));
    let decided = diag
        .as_deref()
        .and_then(|d| rules.match_rule_final(dcode, enhanced.as_deref(), d))
        .map(|rule| (rule.bounce_type, rule.reason))
        .or_else(|| {
            enhanced
                .as_deref()
                .and_then(|e| enhanced_reason(&final_status(e)))
                .map(|r| (r.default_type(), r))
        })
        .or_else(|| {
            let plain = classify_plain(human, rules, true);
            (plain.reason != Reason::Unknown).then_some((plain.bounce_type, plain.reason))
        });
    let (t, r) = decided.unwrap_or_else(|| {
        let r = match fallback_reason(dcode, enhanced.as_deref()) {
            Reason::Unknown if delayed => Reason::Unreachable,
            r => r,
        };
        (r.default_type(), r)
    });
    v.bounce_type = t;
    v.reason = r;
    apply_stage(&mut v, stage, enhanced.as_deref());
    v
}

/// Diagnostic segments of a plain bounce (a line and its indented continuation lines):
/// first those with SMTP codes or "said:", then all those with error wording.
fn diagnostic_segments(text: &str) -> (Vec<String>, Vec<String>) {
    static DIAG: OnceLock<Option<Regex>> = OnceLock::new();
    static CODED: OnceLock<Option<Regex>> = OnceLock::new();
    let mut coded: Vec<String> = Vec::new();
    let mut all: Vec<String> = Vec::new();
    let mut open = (false, false);
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            open = (false, false);
            continue;
        }
        let cont = line.starts_with([' ', '\t']) && !t.starts_with('<');
        let is_coded = is_match(
            &CODED,
            r"(?i)(?:^|[\s:;(\[])[45]\d\d[\s-]|(?:^|[\s#(])[45]\.\d{1,3}\.\d{1,3}\b|said:",
            t,
        );
        let hit = is_coded
            || is_match(
                &DIAG,
                r"(?i)\berror\b|unknown|no such|not (?:exist|found|allowed|accepted|reached)|does not|doesn.t|rejected|refused|denied|blocked|quota|full|disabled|invalid|failed|unable|timed? ?out|expired|unrout",
                t,
            );
        for (list, is_hit, open) in [
            (&mut coded, is_coded, &mut open.0),
            (&mut all, hit, &mut open.1),
        ] {
            if is_hit {
                list.push(t.to_string());
                *open = true;
            } else if *open && cont {
                if let Some(last) = list.last_mut() {
                    last.push('\n');
                    last.push_str(t);
                }
            } else {
                *open = false;
            }
        }
    }
    (coded, all)
}

fn classify_plain(human: &str, rules: &BounceRules, bounce_like: bool) -> MessageVerdict {
    let (coded, diag) = diagnostic_segments(human);
    let codes_from = if coded.is_empty() { &diag } else { &coded };
    let (code, enh) = extract_codes(&codes_from.join("\n"));
    let mut v = MessageVerdict::new(MessageKind::PlainBounce, Reason::Unknown);
    v.status = enh.clone();
    let first = coded.first().or_else(|| diag.first()).cloned();
    v.diagnostic = first.as_deref().map(normalize).or_else(|| {
        let n = normalize(human);
        (!n.is_empty()).then(|| n.chars().take(300).collect())
    });
    let segments = coded.iter().chain(diag.iter()).map(|t| (t.as_str(), true));
    let rule = segments
        .chain(std::iter::once((human, false)))
        .find_map(|(t, segment)| {
            let (c, e) = extract_codes(t);
            rules
                .match_rule_final(c.or(code), e.as_deref().or(enh.as_deref()), t)
                .map(|r| (r, segment.then_some(t)))
        });
    if let Some((rule, segment)) = rule {
        v.bounce_type = rule.bounce_type;
        v.reason = rule.reason;
        if let Some(t) = segment {
            v.diagnostic = Some(normalize(t));
        }
        v.recipient = segment
            .and_then(first_address)
            .or_else(|| first.as_deref().and_then(first_address));
    } else if !bounce_like && code.is_none() && enh.is_none() {
        v.kind = MessageKind::Unknown;
        return v;
    } else {
        v.reason = fallback_reason(code, enh.as_deref());
        v.bounce_type = v.reason.default_type();
    }
    apply_stage(&mut v, smtp_stage(human), enh.as_deref());
    v
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
