//! MX rules: which limits apply to a destination, and how provider replies back a path off.
//!
//! `rules/mx-rules.toml` holds an ordered list of `[[rule]]` tables (first match wins; a
//! catch-all is required) and `[[backoff]]` tables. Rules match a destination by its resolved
//! MX host names (`mx` masks like `*.google.com`) and/or its recipient domain (`domains`).
//! Limits count per *path* = (source, destination group); `per` chooses the group and
//! `shared = true` pools a rule's limits across all sources.

use crate::config::{line_of, parse_duration};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped rules, used when `[rules] mx` is not set.
pub const BUILTIN: &str = include_str!("../rules/mx-rules.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Slow,
    Normal,
    Fast,
    VeryFast,
    #[default]
    Boost,
    Custom,
}

impl Level {
    /// Fraction of the published limits this level allows.
    pub fn factor(&self) -> f64 {
        match self {
            Level::Slow => 0.10,
            Level::Normal => 0.25,
            Level::Fast => 0.50,
            Level::VeryFast => 0.75,
            Level::Boost | Level::Custom => 1.0,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Slow => "slow",
            Level::Normal => "normal",
            Level::Fast => "fast",
            Level::VeryFast => "very_fast",
            Level::Boost => "boost",
            Level::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "slow" => Level::Slow,
            "normal" => Level::Normal,
            "fast" => Level::Fast,
            "very_fast" => Level::VeryFast,
            "boost" => Level::Boost,
            "custom" => Level::Custom,
            _ => return None,
        })
    }

    pub const ALL: [Level; 6] = [
        Level::Slow,
        Level::Normal,
        Level::Fast,
        Level::VeryFast,
        Level::Boost,
        Level::Custom,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Rule,
    #[default]
    Mx,
    Domain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleTls {
    #[default]
    Opportunistic,
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackoffAction {
    /// Lower the path's limits by `factor` for `duration`, then recover step by step.
    #[default]
    Backoff,
    /// Stop the path for `duration`.
    Suspend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Path,
    Rule,
    SendingDomain,
    Campaign,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    backoff: Vec<RawBackoff>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    mx: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    per: Per,
    #[serde(default)]
    shared: bool,
    max_connections: i64,
    messages_per_connection: i64,
    #[serde(default)]
    messages_per_hour: Option<i64>,
    #[serde(default)]
    max_new_connections_per_minute: Option<i64>,
    #[serde(default)]
    idle_timeout: Option<String>,
    #[serde(default)]
    tls: RuleTls,
    #[serde(default = "yes")]
    fallback_on_421: bool,
    #[serde(default)]
    retry: Option<Vec<String>>,
    #[serde(default)]
    ipv4_only: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    name: String,
    pattern: String,
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    action: BackoffAction,
    #[serde(default)]
    factor: Option<f64>,
    duration: String,
    #[serde(default)]
    scope: Scope,
}

/// One destination rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub mx: Vec<String>,
    pub domains: Vec<String>,
    pub per: Per,
    pub shared: bool,
    pub max_connections: u32,
    pub messages_per_connection: u32,
    pub messages_per_hour: Option<u64>,
    pub max_new_connections_per_minute: Option<u32>,
    pub idle_timeout: Duration,
    pub tls: RuleTls,
    pub fallback_on_421: bool,
    pub retry: Option<Vec<Duration>>,
    /// Connect to IPv4 MX addresses only.
    pub ipv4_only: bool,
}

impl Rule {
    pub fn is_catch_all(&self) -> bool {
        self.mx.iter().any(|m| m == "*") || self.domains.iter().any(|d| d == "*")
    }

    /// Does this rule cover a domain with these MX hosts?
    pub fn matches(&self, domain: &str, mx_hosts: &[String]) -> bool {
        self.domains.iter().any(|m| glob(m, domain))
            || self.mx.iter().any(|m| mx_hosts.iter().any(|h| glob(m, h)))
    }
}

#[derive(Debug, Clone)]
pub struct BackoffRule {
    pub name: String,
    pub pattern: Regex,
    pub codes: Vec<String>,
    pub rules: Vec<String>,
    pub action: BackoffAction,
    pub factor: f64,
    pub duration: Duration,
    pub scope: Scope,
}

impl BackoffRule {
    pub fn matches(&self, rule: &str, code: u16, text: &str) -> bool {
        (self.rules.is_empty() || self.rules.iter().any(|r| r == rule))
            && (self.codes.is_empty() || self.codes.iter().any(|c| code_mask(c, code)))
            && self.pattern.is_match(text)
    }
}

/// A validated rules file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub backoffs: Vec<BackoffRule>,
    pub source: PathBuf,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct RulesError(pub Vec<String>);

impl RuleSet {
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RulesError(vec![format!("{}: cannot read: {e}", path.display())]))?;
        RuleSet::parse(&text, path)
    }

    pub fn builtin() -> Result<RuleSet, RulesError> {
        RuleSet::parse(BUILTIN, Path::new("(built-in)/mx-rules.toml"))
    }

    pub fn parse(text: &str, path: &Path) -> Result<RuleSet, RulesError> {
        let file = path.display().to_string();
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            RulesError(vec![format!("{file}:{line}: {}", e.message().trim())])
        })?;
        let mut errors = Vec::new();
        let mut err = |table: &str, i: usize, key: &str, msg: String| {
            let line = locate_table_key(text, table, i, key);
            errors.push(format!("{file}:{line}: {table}[{i}].{key}: {msg}"));
        };
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in raw.rule.into_iter().enumerate() {
            if r.name.trim().is_empty() || !names.insert(r.name.clone()) {
                err(
                    "rule",
                    i,
                    "name",
                    format!("{:?} is empty or used twice", r.name),
                );
            }
            if r.mx.is_empty() && r.domains.is_empty() {
                err(
                    "rule",
                    i,
                    "mx",
                    "a rule needs `mx` or `domains` masks".into(),
                );
            }
            for m in &r.mx {
                if !valid_mask(m) {
                    err(
                        "rule",
                        i,
                        "mx",
                        format!("invalid mask {m:?} (letters, digits, . - * ?)"),
                    );
                }
            }
            for m in &r.domains {
                if !valid_mask(m) {
                    err(
                        "rule",
                        i,
                        "domains",
                        format!("invalid mask {m:?} (letters, digits, . - * ?)"),
                    );
                }
            }
            let pos = |key: &str, v: i64, err: &mut dyn FnMut(&str, usize, &str, String)| -> u32 {
                if v < 1 || v > u32::MAX as i64 {
                    err(
                        "rule",
                        i,
                        key,
                        format!("must be a positive number, not {v}"),
                    );
                    1
                } else {
                    v as u32
                }
            };
            let max_connections = pos("max_connections", r.max_connections, &mut err);
            let messages_per_connection = pos(
                "messages_per_connection",
                r.messages_per_connection,
                &mut err,
            );
            let messages_per_hour = r
                .messages_per_hour
                .map(|v| pos("messages_per_hour", v, &mut err) as u64);
            let max_new_connections_per_minute = r
                .max_new_connections_per_minute
                .map(|v| pos("max_new_connections_per_minute", v, &mut err));
            let idle_timeout = match r.idle_timeout.as_deref().map(parse_duration) {
                None => Duration::from_secs(2),
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    err("rule", i, "idle_timeout", e);
                    Duration::from_secs(2)
                }
            };
            let retry = match r.retry {
                None => None,
                Some(list) if list.is_empty() => {
                    err("rule", i, "retry", "needs at least one interval".into());
                    None
                }
                Some(list) => {
                    let mut out = Vec::new();
                    for s in list {
                        match parse_duration(&s) {
                            Ok(d) if !d.is_zero() => out.push(d),
                            Ok(_) => err("rule", i, "retry", "intervals must be above zero".into()),
                            Err(e) => err("rule", i, "retry", e),
                        }
                    }
                    Some(out)
                }
            };
            rules.push(Rule {
                name: r.name,
                mx: r.mx.iter().map(|m| m.to_ascii_lowercase()).collect(),
                domains: r.domains.iter().map(|m| m.to_ascii_lowercase()).collect(),
                per: r.per,
                shared: r.shared,
                max_connections,
                messages_per_connection,
                messages_per_hour,
                max_new_connections_per_minute,
                idle_timeout,
                tls: r.tls,
                fallback_on_421: r.fallback_on_421,
                retry,
                ipv4_only: r.ipv4_only,
            });
        }
        let missing_catch_all = !rules.iter().any(Rule::is_catch_all);
        let mut backoffs = Vec::new();
        for (i, b) in raw.backoff.into_iter().enumerate() {
            let pattern = match Regex::new(&format!("(?i){}", b.pattern)) {
                Ok(p) => Some(p),
                Err(e) => {
                    err("backoff", i, "pattern", format!("invalid regex: {e}"));
                    None
                }
            };
            for c in &b.codes {
                if !valid_code_mask(c) {
                    err(
                        "backoff",
                        i,
                        "codes",
                        format!("invalid code mask {c:?} (e.g. \"421\", \"4xx\")"),
                    );
                }
            }
            for r in &b.rules {
                if !rules.iter().any(|x| &x.name == r) {
                    err("backoff", i, "rules", format!("no rule named {r:?}"));
                }
            }
            let factor = b.factor.unwrap_or(0.5);
            if !(factor > 0.0 && factor <= 1.0) {
                err(
                    "backoff",
                    i,
                    "factor",
                    "must be above 0 and at most 1".into(),
                );
            }
            let duration = match parse_duration(&b.duration) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    err("backoff", i, "duration", "must be above zero".into());
                    Duration::from_secs(60)
                }
                Err(e) => {
                    err("backoff", i, "duration", e);
                    Duration::from_secs(60)
                }
            };
            if let Some(pattern) = pattern {
                backoffs.push(BackoffRule {
                    name: b.name,
                    pattern,
                    codes: b.codes,
                    rules: b.rules,
                    action: b.action,
                    factor,
                    duration,
                    scope: b.scope,
                });
            }
        }
        if missing_catch_all {
            errors.push(format!(
                "{file}:{}: rule: a catch-all rule (mx = [\"*\"] or domains = [\"*\"]) is required",
                text.lines().count().max(1)
            ));
        }
        if !errors.is_empty() {
            return Err(RulesError(errors));
        }
        Ok(RuleSet {
            rules,
            backoffs,
            source: path.to_path_buf(),
        })
    }

    /// Index of the first rule that covers this destination (the catch-all at worst).
    pub fn match_rule(&self, domain: &str, mx_hosts: &[String]) -> usize {
        self.rules
            .iter()
            .position(|r| r.matches(domain, mx_hosts))
            .unwrap_or(self.rules.len().saturating_sub(1))
    }

    /// The first backoff rule that matches a reply on `rule`.
    pub fn backoff_for(&self, rule: &str, code: u16, text: &str) -> Option<&BackoffRule> {
        self.backoffs.iter().find(|b| b.matches(rule, code, text))
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// Line of `key` inside the `i`-th `[[table]]` (or of the table header).
fn locate_table_key(text: &str, table: &str, i: usize, key: &str) -> usize {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut inside = false;
    let mut header_line = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            if line == header {
                inside = seen == i;
                if inside {
                    header_line = n + 1;
                }
                seen += 1;
            } else {
                inside = false;
            }
            continue;
        }
        if inside {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim() == key {
                    return n + 1;
                }
            }
        }
    }
    header_line
}

fn valid_mask(m: &str) -> bool {
    !m.is_empty()
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '?' | '_'))
}

fn valid_code_mask(c: &str) -> bool {
    c.len() == 3
        && c.chars()
            .all(|ch| ch.is_ascii_digit() || ch == 'x' || ch == 'X')
}

fn code_mask(mask: &str, code: u16) -> bool {
    let code = code.to_string();
    mask.len() == 3
        && mask
            .chars()
            .zip(code.chars())
            .all(|(m, c)| m == 'x' || m == 'X' || m == c)
}

/// Case-insensitive glob match with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .chars()
        .collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob("*.google.com", "aspmx.l.google.com"));
        assert!(glob("*.google.com", "ASPMX.L.GOOGLE.COM."));
        assert!(!glob("*.google.com", "google.com.evil.test"));
        assert!(glob("mx?.a.test", "mx1.a.test"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn builtin_rules_parse_and_match_providers() {
        let rs = RuleSet::builtin().unwrap();
        let name = |d: &str, mx: &[&str]| {
            let hosts: Vec<String> = mx.iter().map(|s| s.to_string()).collect();
            rs.rules[rs.match_rule(d, &hosts)].name.clone()
        };
        assert_eq!(name("brand.example", &["aspmx.l.google.com"]), "google");
        assert_eq!(name("gmail.com", &[]), "google");
        assert_eq!(
            name("x.example", &["x-example.mail.protection.outlook.com"]),
            "microsoft"
        );
        assert_eq!(name("yahoo.fr", &["mta5.am0.yahoodns.net"]), "yahoo");
        assert_eq!(name("a.test", &["mx1.a.test"]), "default");
        assert!(rs.rules.last().unwrap().is_catch_all());
        assert!(rs
            .backoff_for(
                "yahoo",
                421,
                "4.7.0 [TS01] Messages from 1.2.3.4 temporarily deferred"
            )
            .is_some());
    }

    #[test]
    fn bad_rules_name_file_line_and_key() {
        let text = "[[rule]]\nname = \"a\"\nmx = [\"*\"]\nmax_connections = -2\nmessages_per_connection = 10\n";
        let e = RuleSet::parse(text, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:4: rule[0].max_connections"), "{e}");

        let text = "[[rule]]\nname = \"a\"\nmx = [\"*\"]\nmax_connections = 2\nmessages_per_connection = 10\nspeed = 3\n";
        let e = RuleSet::parse(text, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:") && e.contains("speed"), "{e}");

        let text = "[[rule]]\nname = \"a\"\nmx = [\"*.x.com\"]\nmax_connections = 2\nmessages_per_connection = 10\n";
        let e = RuleSet::parse(text, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("catch-all"), "{e}");

        let text = "[[rule]]\nname = \"a\"\nmx = [\"*\", \"bad mask!\"]\nmax_connections = 2\nmessages_per_connection = 10\n[[backoff]]\nname = \"b\"\npattern = \"(unclosed\"\nduration = \"5m\"\n";
        let e = RuleSet::parse(text, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml:3: rule[0].mx: invalid mask"), "{e}");
        assert!(
            e.contains("r.toml:8: backoff[0].pattern: invalid regex"),
            "{e}"
        );
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse("very_fast"), Some(Level::VeryFast));
        assert_eq!(Level::parse("warp"), None);
        assert_eq!(Level::Boost.factor(), 1.0);
    }
}
