//! Bounce rules: an ordered list of text rules (`[[rule]]`) plus per-reason policies
//! (`[[reason]]`), loaded from TOML, and the classifier of one SMTP reply.
//!
//! Matching: the first rule whose `pattern` matches the (whitespace-normalised) text and
//! whose `codes` / `enhanced` filters, when present, match wins. A `codes` mask ("5xx",
//! "55x", "550") is checked against the basic reply code; when the reply has no basic
//! code, a class-only mask ("4xx") is checked against the class of the enhanced status.
//! An `enhanced` mask ("5.1.1", "5.7.*", "4.*.*") is checked against the enhanced status;
//! when the reply has none, a class-only mask ("4.*.*") is checked against the class of
//! the basic code. When both filters are present both must match.
//!
//! Without a matching rule, the RFC 3463 enhanced status decides, then the code class.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::config::{line_of, parse_duration};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::text::normalize;
use super::{BounceType, Reason};

/// The shipped rules file.
pub const BUILTIN_RULES: &str = include_str!("../../rules/bounce-rules.toml");
const BUILTIN_PATH: &str = "rules/bounce-rules.toml";

/// A rules-file loading error. The message names the file, the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum BounceRulesError {
    /// The file could not be read.
    #[error("{path}: cannot read bounce rules: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid (TOML syntax, unknown key, bad regex, type or reason...).
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The key, e.g. `rule[7].pattern`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    reason: Vec<RawReason>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    pattern: String,
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    enhanced: Vec<String>,
    #[serde(rename = "type")]
    bounce_type: String,
    reason: String,
    #[serde(default)]
    case_sensitive: bool,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReason {
    name: String,
    #[serde(default)]
    quarantine_after: Option<u32>,
    #[serde(default)]
    release_after: Option<String>,
}

/// One compiled text rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Compiled pattern.
    pub pattern: Regex,
    /// Basic-code masks ("5xx", "550"); empty = any.
    pub codes: Vec<String>,
    /// Enhanced-status masks ("5.7.*"); empty = any.
    pub enhanced: Vec<String>,
    /// Resulting type.
    pub bounce_type: BounceType,
    /// Resulting reason.
    pub reason: Reason,
}

/// Quarantine policy of one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonPolicy {
    /// Number of bounces with this reason before the address is quarantined; 0 = never.
    pub quarantine_after: u32,
    /// How long a quarantine lasts; `None` = until released by hand.
    pub release_after: Option<Duration>,
}

impl ReasonPolicy {
    /// The default policy of a reason.
    pub fn default_for(reason: Reason) -> ReasonPolicy {
        let quarantine_after = match reason {
            Reason::Refused | Reason::Unreachable | Reason::AutoReply => 0,
            r if r.default_type() == BounceType::Hard => 1,
            _ => 3,
        };
        let release_after = match reason {
            Reason::MailboxFull => Some(Duration::from_secs(30 * 86_400)),
            _ => None,
        };
        ReasonPolicy {
            quarantine_after,
            release_after,
        }
    }
}

/// Result of classifying one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// hard / soft / ignored.
    pub bounce_type: BounceType,
    /// The reason.
    pub reason: Reason,
    /// Name of the text rule that matched; `None` when the codes decided.
    pub rule: Option<String>,
}

/// The loaded bounce rules.
#[derive(Debug, Clone, Default)]
pub struct BounceRules {
    rules: Vec<Rule>,
    policies: HashMap<Reason, ReasonPolicy>,
}

impl BounceRules {
    /// Loads a rules file.
    pub fn load(path: impl AsRef<Path>) -> Result<BounceRules, BounceRulesError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BounceRulesError::Io {
            path: shown.clone(),
            source,
        })?;
        BounceRules::from_str_at(&text, &shown)
    }

    /// The shipped rules (`rules/bounce-rules.toml`, compiled in). Should they not parse
    /// (a unit test checks they do), the code fallbacks alone are used.
    pub fn builtin() -> BounceRules {
        match BounceRules::from_str_at(BUILTIN_RULES, BUILTIN_PATH) {
            Ok(rules) => rules,
            Err(e) => {
                tracing::error!("builtin bounce rules: {e}");
                BounceRules::default()
            }
        }
    }

    /// Parses rules from `text`; `path` is only used in error messages.
    pub fn from_str_at(text: &str, path: &str) -> Result<BounceRules, BounceRulesError> {
        let invalid = |line: usize, key: String, message: String| BounceRulesError::Invalid {
            path: path.to_string(),
            line,
            key,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate_span(text, span.start, e.message()),
                None => (1, "toml".to_string()),
            };
            invalid(line, key, e.message().trim().to_string())
        })?;

        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, r) in raw.rule.into_iter().enumerate() {
            let at = |key: &str| (key_line(text, "rule", i, key), format!("rule[{i}].{key}"));
            let _ = &r.comment;
            if r.name.trim().is_empty() {
                let (l, k) = at("name");
                return Err(invalid(l, k, "empty name".into()));
            }
            if let Some(first) = seen.insert(r.name.clone(), i) {
                let (l, k) = at("name");
                return Err(invalid(
                    l,
                    k,
                    format!("duplicate rule name `{}` (also rule[{first}])", r.name),
                ));
            }
            let pattern = RegexBuilder::new(&r.pattern)
                .case_insensitive(!r.case_sensitive)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| {
                    let (l, k) = at("pattern");
                    invalid(l, k, format!("invalid regex: {e}"))
                })?;
            for c in &r.codes {
                if !valid_code_mask(c) {
                    let (l, k) = at("codes");
                    return Err(invalid(l, k, format!("invalid code mask `{c}`")));
                }
            }
            for c in &r.enhanced {
                if !valid_enhanced_mask(c) {
                    let (l, k) = at("enhanced");
                    return Err(invalid(l, k, format!("invalid enhanced-status mask `{c}`")));
                }
            }
            let bounce_type: BounceType = r.bounce_type.parse().map_err(|m| {
                let (l, k) = at("type");
                invalid(l, k, m)
            })?;
            let reason: Reason = r.reason.parse().map_err(|m| {
                let (l, k) = at("reason");
                invalid(l, k, m)
            })?;
            rules.push(Rule {
                name: r.name,
                pattern,
                codes: r.codes,
                enhanced: r.enhanced,
                bounce_type,
                reason,
            });
        }

        let mut policies = HashMap::new();
        for (i, r) in raw.reason.into_iter().enumerate() {
            let at = |key: &str| {
                (
                    key_line(text, "reason", i, key),
                    format!("reason[{i}].{key}"),
                )
            };
            let reason: Reason = r.name.parse().map_err(|m| {
                let (l, k) = at("name");
                invalid(l, k, m)
            })?;
            if policies.contains_key(&reason) {
                let (l, k) = at("name");
                return Err(invalid(l, k, format!("duplicate reason `{}`", r.name)));
            }
            let mut policy = ReasonPolicy::default_for(reason);
            if let Some(q) = r.quarantine_after {
                policy.quarantine_after = q;
            }
            if let Some(d) = &r.release_after {
                policy.release_after = Some(parse_duration(d).map_err(|m| {
                    let (l, k) = at("release_after");
                    invalid(l, k, m)
                })?);
            }
            policies.insert(reason, policy);
        }
        Ok(BounceRules { rules, policies })
    }

    /// The text rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The policy of a reason (from `[[reason]]`, else the defaults).
    pub fn policy(&self, reason: Reason) -> ReasonPolicy {
        self.policies
            .get(&reason)
            .copied()
            .unwrap_or_else(|| ReasonPolicy::default_for(reason))
    }

    /// The first text rule matching, if any (no code fallback).
    pub fn match_rule(
        &self,
        code: Option<u16>,
        enhanced: Option<&str>,
        text: &str,
    ) -> Option<&Rule> {
        let text = normalize(text);
        self.rules.iter().find(|r| {
            (r.codes.is_empty() || r.codes.iter().any(|m| code_mask_matches(m, code, enhanced)))
                && (r.enhanced.is_empty()
                    || r.enhanced
                        .iter()
                        .any(|m| enhanced_mask_matches(m, enhanced, code)))
                && r.pattern.is_match(&text)
        })
    }

    /// The first text rule matching a diagnostic of mail whose delivery has *finally*
    /// failed (a returned DSN, a plain bounce): a 4xx code there only says the last attempt
    /// was temporary, so the codes are promoted to their 5xx / 5.x.x counterparts and the
    /// text decides the cause (reputation → refused, user unknown → user_unknown, ...).
    pub fn match_rule_final(
        &self,
        code: Option<u16>,
        enhanced: Option<&str>,
        text: &str,
    ) -> Option<&Rule> {
        let status = enhanced.map(final_status);
        self.match_rule(code.map(final_code), status.as_deref(), text)
    }

    /// Classifies one SMTP reply / diagnostic: text rules, then the enhanced status, then
    /// the basic code class.
    pub fn classify_reply(
        &self,
        code: Option<u16>,
        enhanced: Option<&str>,
        text: &str,
    ) -> Classification {
        if let Some(rule) = self.match_rule(code, enhanced, text) {
            return Classification {
                bounce_type: rule.bounce_type,
                reason: rule.reason,
                rule: Some(rule.name.clone()),
            };
        }
        let reason = fallback_reason(code, enhanced);
        Classification {
            bounce_type: reason.default_type(),
            reason,
            rule: None,
        }
    }
}

/// A 4xx basic code promoted to its permanent 5xx counterpart (others unchanged).
pub fn final_code(code: u16) -> u16 {
    if code / 100 == 4 {
        code + 100
    } else {
        code
    }
}

/// A 4.x.x enhanced status promoted to 5.x.x (others unchanged).
pub fn final_status(status: &str) -> String {
    let s = status.trim();
    match s.strip_prefix("4.") {
        Some(rest) => format!("5.{rest}"),
        None => s.to_string(),
    }
}

/// The reason the codes alone give: enhanced status first, then the code class.
pub fn fallback_reason(code: Option<u16>, enhanced: Option<&str>) -> Reason {
    if let Some(r) = enhanced.and_then(enhanced_reason) {
        return r;
    }
    match code {
        Some(400..=504) => Reason::Unreachable,
        _ => Reason::Unknown,
    }
}

/// The reason an RFC 3463 status implies, `None` when it says nothing specific.
pub fn enhanced_reason(status: &str) -> Option<Reason> {
    let mut it = status.trim().split('.');
    let class = it.next()?;
    let subject: u32 = it.next()?.parse().ok()?;
    let detail: u32 = it.next()?.parse().ok()?;
    let r = match (class, subject, detail) {
        ("5", 1, 0 | 1 | 3 | 6) => Reason::UserUnknown,
        ("5" | "4", 2, 2) => Reason::MailboxFull,
        ("5", 2, 1) => Reason::InactiveMailbox,
        ("5" | "4", 1, 2 | 10) | ("5", 4, 4) => Reason::InvalidDomain,
        ("5", 1, 7 | 8) | ("5", 7, _) | ("5", 6, _) => Reason::Refused,
        ("4", _, _) => Reason::Unreachable,
        ("5", 3, _) | ("5", 2, 3) | ("5", 4, _) => Reason::Unreachable,
        _ => return None,
    };
    Some(r)
}

fn valid_code_mask(m: &str) -> bool {
    let b = m.as_bytes();
    b.len() == 3
        && matches!(b[0], b'2'..=b'5')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'x' | b'X' | b'*'))
}

fn valid_enhanced_mask(m: &str) -> bool {
    let parts: Vec<&str> = m.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..].iter().all(|p| {
            matches!(*p, "*" | "x" | "X")
                || (!p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
        })
}

fn is_wild(s: &str) -> bool {
    matches!(s, "*" | "x" | "X")
}

fn code_mask_matches(mask: &str, code: Option<u16>, enhanced: Option<&str>) -> bool {
    let m = mask.as_bytes();
    match code {
        Some(c) => {
            let s = c.to_string();
            s.len() == 3
                && m.iter()
                    .zip(s.as_bytes())
                    .all(|(a, b)| a == b || matches!(a, b'x' | b'X' | b'*'))
        }
        None => {
            let class_only = m[1..].iter().all(|c| matches!(c, b'x' | b'X' | b'*'));
            class_only && enhanced.and_then(|e| e.as_bytes().first().copied()) == Some(m[0])
        }
    }
}

fn enhanced_mask_matches(mask: &str, enhanced: Option<&str>, code: Option<u16>) -> bool {
    let mparts: Vec<&str> = mask.split('.').collect();
    match enhanced {
        Some(e) => {
            let eparts: Vec<&str> = e.trim().split('.').collect();
            eparts.len() == 3
                && mparts
                    .iter()
                    .zip(&eparts)
                    .all(|(m, p)| is_wild(m) || m.parse::<u32>().ok() == p.parse::<u32>().ok())
        }
        None => {
            mparts.len() == 3
                && is_wild(mparts[1])
                && is_wild(mparts[2])
                && code.map(|c| (c / 100).to_string()).as_deref() == Some(mparts[0])
        }
    }
}

/// Line and key path of a TOML error span.
fn locate_span(text: &str, pos: usize, message: &str) -> (usize, String) {
    let line = line_of(text, pos);
    let mut table = None;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in text.lines().take(line) {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        }
    }
    let field = message
        .split("unknown field `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .or_else(|| {
            message
                .split("missing field `")
                .nth(1)
                .and_then(|r| r.split('`').next())
        })
        .map(str::to_string)
        .or_else(|| {
            let l = text.lines().nth(line.saturating_sub(1))?;
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            (!k.is_empty() && !k.starts_with('[')).then(|| k.to_string())
        });
    let key = match (table, field) {
        (Some(t), Some(f)) => format!("{t}.{f}"),
        (Some(t), None) => t,
        (None, Some(f)) => f,
        (None, None) => "toml".to_string(),
    };
    (line, key)
}

/// Line of `key` inside the `index`-th `[[table]]`, else of the table header, else 1.
fn key_line(text: &str, table: &str, index: usize, key: &str) -> usize {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_table = false;
    let mut header_line = 1;
    for (n, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            if in_table {
                break;
            }
            if t.replace(' ', "").starts_with(&header) {
                if seen == index {
                    in_table = true;
                    header_line = n + 1;
                }
                seen += 1;
            }
            continue;
        }
        if in_table {
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return n + 1;
                }
            }
        }
    }
    header_line
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
