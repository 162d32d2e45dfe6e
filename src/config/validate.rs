//! Semantic checks of a parsed config, each located by file, line and key.

use super::{locate, Cidr, Config, ConfigIssue};

impl Config {
    pub(super) fn validate(&self, text: &str) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut issue = |section: &str, key: &str, message: String| {
            out.push(ConfigIssue {
                file: self.file.clone(),
                line: locate(text, section, key),
                key: if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                },
                message,
            });
        };
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            issue("", "hostname", "must be a host name without spaces".into());
        }
        if self.verp.domain.trim().is_empty() || !self.verp.domain.contains('.') {
            issue("verp", "domain", "must be a fully qualified domain".into());
        }
        if self.verp.prefix.is_empty()
            || !self
                .verp
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.')
        {
            issue(
                "verp",
                "prefix",
                "must be lowercase letters, digits or dots".into(),
            );
        }
        if self.verp.secret.len() < 16 {
            issue(
                "verp",
                "secret",
                "must be at least 16 characters (it signs every VERP address)".into(),
            );
        }
        if self.delivery.retry.is_empty() {
            issue("delivery", "retry", "needs at least one interval".into());
        }
        if self.delivery.retry.iter().any(|d| d.0.is_zero()) {
            issue("delivery", "retry", "intervals must be above zero".into());
        }
        if self.delivery.max_age.0.is_zero() {
            issue("delivery", "max_age", "must be above zero".into());
        }
        if self.delivery.max_connections == 0 {
            issue("delivery", "max_connections", "must be at least 1".into());
        }
        if self.spool.max_disk_percent == 0 || self.spool.max_disk_percent > 100 {
            issue(
                "spool",
                "max_disk_percent",
                "must be between 1 and 100".into(),
            );
        }
        if self.intake.max_message_size == 0 {
            issue("intake", "max_message_size", "must be above zero".into());
        }
        if self.intake.max_request_size < 1024 {
            issue("intake", "max_request_size", "must be at least 1024".into());
        }
        if let Some(t) = &self.api.token {
            if t.len() < 16 {
                issue("api", "token", "must be at least 16 characters".into());
            }
        }
        if !self.listen.http.ip().is_loopback() && self.api.token.is_none() {
            issue(
                "listen",
                "http",
                format!(
                    "{} is reachable beyond loopback: set [api] token first",
                    self.listen.http
                ),
            );
        }
        if let Some(u) = &self.unsubscribe {
            if u.secret.len() < 16 {
                issue(
                    "unsubscribe",
                    "secret",
                    "must be at least 16 characters".into(),
                );
            }
            if !u.url.contains("{token}") {
                issue("unsubscribe", "url", "must contain {token}".into());
            }
        }
        if self.rules.sync_url.is_some() && self.rules.mx.is_none() {
            issue(
                "rules",
                "sync_url",
                "needs [rules] mx: the synced file is stored there".into(),
            );
        }
        if self.rules.bounce_sync_url.is_some() && self.rules.bounce.is_none() {
            issue(
                "rules",
                "bounce_sync_url",
                "needs [rules] bounce: the synced file is stored there".into(),
            );
        }
        for (key, url) in [
            ("sync_url", &self.rules.sync_url),
            ("bounce_sync_url", &self.rules.bounce_sync_url),
        ] {
            if let Some(u) = url {
                if let Err(e) = crate::events::http::parse_url(u) {
                    issue("rules", key, e);
                }
            }
        }
        if crate::rules::Level::parse(&self.rules.level).is_none() {
            issue(
                "rules",
                "level",
                format!(
                    "unknown level {:?} (slow, normal, fast, very_fast, boost, custom)",
                    self.rules.level
                ),
            );
        }
        let mut names = std::collections::HashSet::new();
        for src in &self.sources {
            if src.name.is_empty() || !names.insert(src.name.as_str()) {
                issue(
                    "sources",
                    "name",
                    format!("source name {:?} is empty or used twice", src.name),
                );
            }
            if src.weight == 0 {
                issue(
                    "sources",
                    "weight",
                    format!("source {:?}: weight must be at least 1", src.name),
                );
            }
            for w in &src.warmup {
                if crate::rules::Level::parse(&w.level).is_none() {
                    issue(
                        "sources",
                        "warmup",
                        format!("source {:?}: unknown level {:?}", src.name, w.level),
                    );
                }
            }
            if let Some(l) = &src.level {
                if crate::rules::Level::parse(l).is_none() {
                    issue(
                        "sources",
                        "level",
                        format!("source {:?}: unknown level {l:?}", src.name),
                    );
                }
            }
        }
        for p in &self.pools {
            if p.sources.is_empty() {
                issue(
                    "pools",
                    "sources",
                    format!("pool {:?} has no sources", p.name),
                );
            }
            for s in &p.sources {
                if !self.sources.iter().any(|x| &x.name == s) {
                    issue(
                        "pools",
                        "sources",
                        format!("pool {:?}: no source named {s:?}", p.name),
                    );
                }
            }
        }
        for c in &self.listen.smtp_allow {
            match Cidr::parse(c) {
                Err(e) => issue("listen", "smtp_allow", e),
                Ok(n) if n.is_everything() => issue(
                    "listen",
                    "smtp_allow",
                    format!("{c:?} lets the whole internet relay: list your injectors' networks"),
                ),
                Ok(_) => {}
            }
        }
        out
    }
}
