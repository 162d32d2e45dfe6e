//! Configuration: `sluice.toml`, parsed with serde + toml, validated with file/line/key errors.
//!
//! Durations are written as strings like `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"5d"`. Relative
//! paths resolve from the config file's folder. Unknown keys are errors.

mod validate;

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem found in a config file, located by file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                l,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// A duration written as `"30s"`, `"5m"`, `"2h"`, `"5d"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

/// Parse `"30s"`-style durations.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let mult_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m, h, d)"
            ))
        }
    };
    n.checked_mul(mult_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EHLO name of outgoing connections.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub spool: SpoolCfg,
    #[serde(default)]
    pub dns: DnsCfg,
    #[serde(default)]
    pub delivery: DeliveryCfg,
    pub verp: VerpCfg,
    #[serde(default)]
    pub events: EventsCfg,
    #[serde(default)]
    pub api: ApiCfg,
    #[serde(default)]
    pub intake: IntakeCfg,
    /// Sending IPs. Empty = one source `default` with the OS-chosen address and `hostname`.
    #[serde(default)]
    pub sources: Vec<SourceCfg>,
    /// Named groups of sources. Empty = one pool `default` holding every source.
    #[serde(default)]
    pub pools: Vec<PoolCfg>,
    #[serde(default)]
    pub rules: RulesCfg,
    /// Campaign circuit breaker.
    #[serde(default)]
    pub campaigns: crate::campaign::BreakerCfg,
    /// One-click unsubscribe (RFC 8058).
    #[serde(default)]
    pub unsubscribe: Option<crate::unsubscribe::UnsubscribeCfg>,
    /// DKIM signing keys.
    #[serde(default)]
    pub dkim: Vec<crate::dkim::DkimCfg>,
    /// Sender brand domains (aligned VERP).
    #[serde(default)]
    pub senders: Vec<SenderCfg>,
    /// Folder of the config file; relative paths were resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config came from (for messages).
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// SMTP submission listener; absent = no SMTP intake.
    #[serde(default = "default_smtp")]
    pub smtp: Option<SocketAddr>,
    /// CIDRs allowed to relay through the SMTP listener.
    #[serde(default = "default_allow")]
    pub smtp_allow: Vec<String>,
    /// Feedback MX: receives returned bounces and FBL reports for the VERP domain.
    #[serde(default)]
    pub bounce: Option<SocketAddr>,
    /// Public listener (one-click unsubscribe endpoint), separate from the admin API.
    #[serde(default)]
    pub public: Option<SocketAddr>,
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}
fn default_smtp() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 2525)))
}
fn default_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: default_http(),
            smtp: default_smtp(),
            smtp_allow: default_allow(),
            bounce: None,
            public: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolCfg {
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Intake stops (452/503) when the spool's filesystem is fuller than this.
    #[serde(default = "default_disk_pct")]
    pub max_disk_percent: u8,
    /// Intake stops when this many deliveries are queued.
    #[serde(default = "default_max_queued")]
    pub max_queued: u64,
    /// How long finished delivery records (without bodies) are kept, so the API can show
    /// them and bounces returned days later are still linked.
    #[serde(default = "default_keep_finished", alias = "keep_finished")]
    pub retention: Dur,
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("spool/sluice.redb")
}
fn default_disk_pct() -> u8 {
    90
}
fn default_max_queued() -> u64 {
    5_000_000
}
fn default_keep_finished() -> Dur {
    Dur::secs(7 * 86400)
}

impl Default for SpoolCfg {
    fn default() -> Self {
        SpoolCfg {
            path: default_spool_path(),
            max_disk_percent: default_disk_pct(),
            max_queued: default_max_queued(),
            retention: default_keep_finished(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsCfg {
    /// "ip:port" of recursive resolvers; empty = the system's resolver configuration.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout (default 5s).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when offered; a failed handshake falls back to plain text next attempt.
    #[default]
    Opportunistic,
    /// Never STARTTLS.
    Disabled,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryCfg {
    /// Remote SMTP port (25 in production; tests use another).
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Timeout for each SMTP command reply (banner, EHLO, MAIL, RCPT, DATA).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Dur,
    /// Timeout for the reply after the message data.
    #[serde(default = "default_data_timeout")]
    pub data_timeout: Dur,
    /// Retry intervals after each deferral; the last one repeats.
    #[serde(default = "default_retry")]
    pub retry: Vec<Dur>,
    /// A delivery older than this expires wherever it waits.
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    #[serde(default)]
    pub tls: TlsMode,
    /// How long a host whose STARTTLS failed is contacted without TLS.
    #[serde(default = "default_tls_broken")]
    pub tls_broken_for: Dur,
    /// Send everything to this address (a smarthost) instead of the recipients' MX hosts.
    #[serde(default)]
    pub relay_host: Option<IpAddr>,
    /// What to do when DKIM signing fails: "defer" (default) or "send_unsigned".
    #[serde(default)]
    pub dkim_on_error: crate::render::DkimOnError,
    /// Concurrent outgoing connections in total.
    #[serde(default = "default_total")]
    pub max_connections: u32,
}

fn default_port() -> u16 {
    25
}
fn default_connect_timeout() -> Dur {
    Dur::secs(30)
}
fn default_command_timeout() -> Dur {
    Dur::secs(300)
}
fn default_data_timeout() -> Dur {
    Dur::secs(600)
}
fn default_retry() -> Vec<Dur> {
    [300, 600, 1200, 3600, 7200, 14400]
        .into_iter()
        .map(Dur::secs)
        .collect()
}
fn default_max_age() -> Dur {
    Dur::secs(5 * 86400)
}
fn default_tls_broken() -> Dur {
    Dur::secs(3600)
}
fn default_total() -> u32 {
    1000
}

impl Default for DeliveryCfg {
    fn default() -> Self {
        DeliveryCfg {
            port: default_port(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            retry: default_retry(),
            max_age: default_max_age(),
            tls: TlsMode::default(),
            tls_broken_for: default_tls_broken(),
            dkim_on_error: Default::default(),
            relay_host: None,
            max_connections: default_total(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerpCfg {
    /// Feedback domain: MAIL FROM is `<prefix>-<code>@<domain>`.
    pub domain: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// HMAC key that signs every VERP code.
    pub secret: String,
    /// Address (local part or full address on `domain`) registered with providers'
    /// feedback loops; the feedback listener accepts ARF reports for it.
    #[serde(default)]
    pub fbl_address: Option<String>,
    /// Aligned VERP: mail from a `[[senders]]` domain uses `<subdomain>.<its domain>`.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// Host name of sluice's feedback MX (what the feedback subdomains' MX point to).
    #[serde(default)]
    pub bounce_host: Option<String>,
    /// A host that has that MX, for DNS providers that can only create a CNAME.
    #[serde(default)]
    pub cname_target: Option<String>,
}

/// A sender brand's domain (aligned VERP, DNS records).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderCfg {
    pub domain: String,
    /// DKIM selector used for this domain (informational, for `sluice domain records`).
    #[serde(default)]
    pub dkim_selector: Option<String>,
}

fn default_prefix() -> String {
    "b".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsCfg {
    /// JSON-lines event log.
    #[serde(default = "default_events_path")]
    pub path: PathBuf,
    /// `Feedback-ID` header template for Gmail's feedback loop, e.g.
    /// `"{campaign}:{tenant}:sluice"` (added when a message has none).
    #[serde(default)]
    pub feedback_id: Option<String>,
    /// Rotate the log once it passes this many bytes (0 = never).
    #[serde(default)]
    pub rotate_size: u64,
    /// Rotated files kept (`events.jsonl.1` … `.N`).
    #[serde(default = "default_rotate_keep")]
    pub rotate_keep: u32,
    /// PowerMTA-style accounting CSV (delivered / bounced / deferred records).
    #[serde(default)]
    pub csv_path: Option<PathBuf>,
    /// `http://` or `https://` endpoint receiving batched events (JSON arrays).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the `X-Sluice-Signature` header.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Maximum events per POST.
    #[serde(default = "default_webhook_batch")]
    pub webhook_batch: usize,
    /// Maximum wait before a partial batch is sent.
    #[serde(default = "default_webhook_interval")]
    pub webhook_interval: Dur,
    /// Timeout of one POST (connect, TLS, request and response head).
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout: Dur,
    /// PEM CA bundle for `https://` webhooks (default `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub webhook_ca_file: Option<PathBuf>,
}

fn default_events_path() -> PathBuf {
    PathBuf::from("events.jsonl")
}
fn default_rotate_keep() -> u32 {
    10
}
fn default_webhook_batch() -> usize {
    500
}
fn default_webhook_interval() -> Dur {
    Dur::secs(1)
}
fn default_webhook_timeout() -> Dur {
    Dur::secs(10)
}

impl Default for EventsCfg {
    fn default() -> Self {
        EventsCfg {
            path: default_events_path(),
            feedback_id: None,
            rotate_size: 0,
            rotate_keep: default_rotate_keep(),
            csv_path: None,
            webhook_url: None,
            webhook_secret: None,
            webhook_batch: default_webhook_batch(),
            webhook_interval: default_webhook_interval(),
            webhook_timeout: default_webhook_timeout(),
            webhook_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiCfg {
    /// When set, `/api/...` needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeCfg {
    #[serde(default = "default_msg_size")]
    pub max_message_size: usize,
    #[serde(default = "default_req_size")]
    pub max_request_size: usize,
    /// Recipients accepted in one request or SMTP transaction.
    #[serde(default = "default_max_rcpt")]
    pub max_recipients: usize,
}

fn default_msg_size() -> usize {
    26_214_400
}
fn default_req_size() -> usize {
    67_108_864
}
fn default_max_rcpt() -> usize {
    1_000_000
}

impl Default for IntakeCfg {
    fn default() -> Self {
        IntakeCfg {
            max_message_size: default_msg_size(),
            max_request_size: default_req_size(),
            max_recipients: default_max_rcpt(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCfg {
    pub name: String,
    /// Local address outgoing connections bind to.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// EHLO name (must match the IP's reverse DNS); default `hostname`.
    #[serde(default)]
    pub helo: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Throughput level of this source (warm-up); default `[rules] level`.
    #[serde(default)]
    pub level: Option<String>,
    /// Never deliver to IPv6 MX addresses from this source (unwarmed, unnamed IPv6).
    #[serde(default)]
    pub ipv4_only: bool,
    /// Warm-up schedule: one entry per day (`level`, `daily_cap`); the day advances after a
    /// clean day. Mail over the cap overflows to the pool's other sources.
    #[serde(default)]
    pub warmup: Vec<WarmupStepCfg>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupStepCfg {
    pub level: String,
    pub daily_cap: u64,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCfg {
    pub name: String,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesCfg {
    /// MX rules file; absent = the built-in rules.
    #[serde(default)]
    pub mx: Option<PathBuf>,
    /// Bounce qualification rules file; absent = the built-in rules.
    #[serde(default)]
    pub bounce: Option<PathBuf>,
    /// Throughput level: slow, normal, fast, very_fast, boost, custom.
    #[serde(default = "default_level")]
    pub level: String,
    /// Fetch the MX rules file from here periodically (stored at `mx`); off in `custom`.
    #[serde(default)]
    pub sync_url: Option<String>,
    /// Fetch the bounce rules file from here periodically (stored at `bounce`).
    #[serde(default)]
    pub bounce_sync_url: Option<String>,
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// A warm-up day counts as clean (the schedule advances) below these ratios.
    #[serde(default = "default_warm_bounce")]
    pub warmup_max_bounce_ratio: f64,
    #[serde(default = "default_warm_deferral")]
    pub warmup_max_deferral_ratio: f64,
}

fn default_warm_bounce() -> f64 {
    0.05
}
fn default_warm_deferral() -> f64 {
    0.20
}

fn default_sync_interval() -> Dur {
    Dur::secs(86_400)
}

fn default_level() -> String {
    "boost".into()
}

impl Default for RulesCfg {
    fn default() -> Self {
        RulesCfg {
            mx: None,
            bounce: None,
            level: default_level(),
            sync_url: None,
            bounce_sync_url: None,
            sync_interval: default_sync_interval(),
            warmup_max_bounce_ratio: default_warm_bounce(),
            warmup_max_deferral_ratio: default_warm_deferral(),
        }
    }
}

/// A parsed IPv4/IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, b) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network (e.g. \"10.0.0.0/8\")"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match b {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }

    pub fn is_everything(&self) -> bool {
        self.bits == 0
    }
}

impl Config {
    /// The VERP signer with aligned sender domains.
    pub fn verp(&self) -> crate::verp::Verp {
        let senders: Vec<String> = self.senders.iter().map(|s| s.domain.clone()).collect();
        crate::verp::Verp::new(&self.verp.domain, &self.verp.prefix, &self.verp.secret)
            .with_senders(self.verp.subdomain.as_deref(), &senders)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_str_at(&text, path)
    }

    /// Parse and validate config text as if read from `path`.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().to_string();
            let key = backticked(&msg).unwrap_or_else(|| "(syntax)".into());
            ConfigError::Invalid(vec![ConfigIssue {
                file: path.to_path_buf(),
                line,
                key,
                message: msg,
            }])
        })?;
        cfg.file = path.to_path_buf();
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if cfg.base_dir.as_os_str().is_empty() {
            cfg.base_dir = PathBuf::from(".");
        }
        let issues = cfg.validate(text);
        if !issues.is_empty() {
            return Err(ConfigError::Invalid(issues));
        }
        cfg.spool.path = cfg.resolve(&cfg.spool.path);
        cfg.rules.mx = cfg.rules.mx.as_ref().map(|p| cfg.resolve(p));
        cfg.rules.bounce = cfg.rules.bounce.as_ref().map(|p| cfg.resolve(p));
        cfg.events.path = cfg.resolve(&cfg.events.path);
        cfg.events.csv_path = cfg.events.csv_path.as_ref().map(|p| cfg.resolve(p));
        cfg.events.webhook_ca_file = cfg.events.webhook_ca_file.as_ref().map(|p| cfg.resolve(p));
        Ok(cfg)
    }

    /// Resolve a path relative to the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn smtp_allow(&self) -> Vec<Cidr> {
        self.listen
            .smtp_allow
            .iter()
            .filter_map(|s| Cidr::parse(s).ok())
            .collect()
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    // byte-based: an offset inside a multi-byte character must not panic
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

/// Find the line where `key` is set inside `[section]` (or at top level when section is "").
pub fn locate(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if (current == section || current == format!("[{section}]")) && key.is_empty() {
                return Some(i + 1);
            }
            continue;
        }
        if current == section {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    if !section.is_empty() {
        return locate(text, section, "");
    }
    None
}

#[cfg(test)]
mod tests;
