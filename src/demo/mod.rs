//! `sluice demo`: a self-contained tour of what sluice does, entirely on loopback.
//!
//! [`run`] starts, inside the process and on the private range 127.222.0.0/24, an
//! authoritative DNS server and fake MX hosts ([`crate::testkit`]), writes a config and an MX
//! rules file into a fresh temporary directory, starts the real [`Engine`], submits a sample
//! campaign through the HTTP API, follows the delivery events (optionally with live progress
//! bars), and returns a [`DemoSummary`] that compares the engine's outcomes with what the fake
//! MX hosts recorded. It then shuts the engine down and removes the temporary directory.
//!
//! The scenario shows: a strict provider rule (connections, messages per connection, hourly
//! rate) that the receiving host observes being respected; a primary MX that refuses
//! connections so the backup MX takes over; addresses that hard-bounce and get quarantined;
//! and a provider answering `421 [TS01]` deferrals, on which the whole path backs off while the
//! messages stay queued.

mod report;

pub use report::*;

use crate::events::Event;
use crate::rules::RuleSet;
use crate::testkit::dns::DnsBuilder;
use crate::testkit::mx::{Behaviour, FakeMx, MxScript};
use crate::{Clock, Config, Engine};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Port every fake MX host listens on (the engine's `[delivery] port`).
pub const MX_PORT: u16 = 2525;
/// The demo stops waiting for outcomes after this long.
pub const TIMEOUT: Duration = Duration::from_secs(50);
/// Fewest recipients that still cover every scenario.
pub const MIN_RECIPIENTS: usize = 10;

const BATCH: usize = 500;
const CAMPAIGN: &str = "demo";

const STRICT_DOMAIN: &str = "bigmail.demo";
const BACKUP_DOMAIN: &str = "backup.demo";
const TS01_DOMAIN: &str = "yahoo-like.demo";
const BOUNCE_DOMAIN: &str = "corp-a.demo";
const BOUNCE_LOCAL_PREFIX: &str = "former.";
const TS01_REPLY: &str =
    "4.7.0 [TS01] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints";
const BOUNCE_REPLY: &str = "5.1.1 The email account that you tried to reach does not exist";

fn demo_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 222, 0, host)
}

/// One fake MX host of the scenario.
struct HostSpec {
    name: &'static str,
    ip: u8,
    domains: &'static [&'static str],
    rule: &'static str,
}

const DNS_IP: u8 = 1;
/// The backup domain's primary MX: nothing listens there (connection refused).
const DEAD_PRIMARY: (&str, u8) = ("mx1.backup.demo", 20);
const BACKUP_MX: &str = "mx2.backup.demo";
const TS01_MX: &str = "mta1.yahoo-like.demo";
const BOUNCE_MX: &str = "mx.hosting.demo";
#[rustfmt::skip]
const HOSTS: &[HostSpec] = &[
    HostSpec { name: "mx1.bigmail.demo", ip: 10, domains: &[STRICT_DOMAIN], rule: "bigmail" },
    HostSpec { name: BACKUP_MX, ip: 21, domains: &[BACKUP_DOMAIN], rule: "default" },
    HostSpec { name: TS01_MX, ip: 30, domains: &[TS01_DOMAIN], rule: "yahoo-like" },
    HostSpec { name: "mx.isp.demo", ip: 40, domains: &["isp.demo"], rule: "default" },
    HostSpec { name: BOUNCE_MX, ip: 41, domains: &[BOUNCE_DOMAIN, "corp-b.demo", "uni.demo"], rule: "default" },
];

/// Destination domain of recipient `i` (ten slots: 20 % bigmail, 30 % isp, 10 % each other).
fn domain_of(i: usize) -> &'static str {
    match i % 10 {
        0 | 1 => STRICT_DOMAIN,
        2 => TS01_DOMAIN,
        3 => BACKUP_DOMAIN,
        4..=6 => "isp.demo",
        7 => BOUNCE_DOMAIN,
        8 => "corp-b.demo",
        _ => "uni.demo",
    }
}

const FIRST_NAMES: [&str; 12] = [
    "alice", "bruno", "chloe", "dmitri", "elena", "farid", "grace", "hugo", "ines", "jonas",
    "keiko", "liam",
];

/// The sample campaign's recipients, in submission order. 1 % are addresses that no longer
/// exist (`former.*@corp-a.demo`).
pub fn recipients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let domain = domain_of(i);
            if i % 100 == 7 {
                format!("{BOUNCE_LOCAL_PREFIX}{}{i}@{domain}", FIRST_NAMES[i % 12])
            } else {
                format!("{}.{i}@{domain}", FIRST_NAMES[i % 12])
            }
        })
        .collect()
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Size of the sample campaign (default 3000, at least [`MIN_RECIPIENTS`]).
    pub recipients: usize,
    /// Live progress bars per destination domain (only drawn when stdout is a terminal).
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            recipients: 3000,
            progress: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo needs at least {MIN_RECIPIENTS} recipients (got {0})")]
    TooFewRecipients(usize),
    /// Preparing the temporary directory, or binding the DNS server or a fake MX on
    /// 127.222.0.0/24 (is another `sluice demo` running?).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("HTTP API {request}: {detail}")]
    Api { request: String, detail: String },
    #[error("the engine's event stream closed")]
    EventsClosed,
}

/// Run the demo (see the module documentation) inside a tokio runtime (multi-threaded
/// preferred: the engine, the DNS server and the fake MX hosts all run as tasks).
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    if opts.recipients < MIN_RECIPIENTS {
        return Err(DemoError::TooFewRecipients(opts.recipients));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules")).map_err(|source| DemoError::Io {
        what: format!("cannot create {}", dir.display()),
        source,
    })?;
    let result = run_in(&dir, &opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, opts: &DemoOptions) -> Result<DemoSummary, DemoError> {
    let dns = start_dns().await?;
    let mut hosts = Vec::new();
    for spec in HOSTS {
        let ip = IpAddr::V4(demo_ip(spec.ip));
        let mx = FakeMx::try_start(ip, MX_PORT, script_for(spec.name))
            .await
            .map_err(|source| {
                bind_error(
                    &format!("the fake MX {} on {ip}:{MX_PORT}", spec.name),
                    source,
                )
            })?;
        hosts.push((spec, mx));
    }

    let config_path = dir.join("sluice.toml");
    write(&config_path, &config_text(dns.addr))?;
    write(&dir.join("rules/mx-rules.toml"), RULES)?;
    let cfg = Config::load(&config_path)?;
    let engine = Engine::start(cfg, Clock::System).await?;
    let events = engine.subscribe();

    let rules = engine.scheduler().rules();
    let outcome = drive(&engine, events, opts).await;
    let state = match &outcome {
        Ok(_) => engine_state(engine.http_addr()).await,
        Err(_) => Ok(EngineState::default()),
    };
    engine.shutdown().await;
    dns.stop().await;
    Ok(summarize(opts.recipients, outcome?, &hosts, &rules, state?))
}

async fn start_dns() -> Result<crate::testkit::dns::DnsServer, DemoError> {
    let mut b = DnsBuilder::with_origin("demo").a(DEAD_PRIMARY.0, demo_ip(DEAD_PRIMARY.1));
    b = b.mx(BACKUP_DOMAIN, 10, DEAD_PRIMARY.0);
    for spec in HOSTS {
        b = b.a(spec.name, demo_ip(spec.ip));
        let pref = if spec.name == BACKUP_MX { 20 } else { 10 };
        for d in spec.domains {
            b = b.mx(d, pref, spec.name);
        }
    }
    let ip = IpAddr::V4(demo_ip(DNS_IP));
    b.try_start(ip)
        .await
        .map_err(|source| bind_error(&format!("the DNS authority on {ip}"), source))
}

fn bind_error(what: &str, source: std::io::Error) -> DemoError {
    DemoError::Io {
        what: format!("cannot start {what} (is another `sluice demo` running?)"),
        source,
    }
}

fn script_for(host: &str) -> MxScript {
    let mut script = MxScript {
        delay: Some(Duration::from_millis(2)), // a little round-trip time
        ..MxScript::default()
    };
    match host {
        TS01_MX => script.behaviour = Behaviour::RefuseRcpt(421, TS01_REPLY.into()),
        BOUNCE_MX => {
            script.rcpt_replies = vec![(BOUNCE_LOCAL_PREFIX.into(), 550, BOUNCE_REPLY.into())]
        }
        _ => {}
    }
    script
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })
}

fn config_text(dns: SocketAddr) -> String {
    format!(
        r#"# Written by `sluice demo`: everything on loopback, removed when the demo ends.
hostname = "sluice.demo"
[listen]
http = "127.0.0.1:0"
smtp = "127.0.0.1:0"
[spool]
path = "spool/sluice.redb"
[dns]
nameservers = ["{dns}"]
timeout = "1s"
[delivery]
port = {MX_PORT}
connect_timeout = "2s"
command_timeout = "5s"
retry = ["1m", "5m"]
[verp]
domain = "bounces.sluice.demo"
prefix = "b"
secret = "sluice-demo-secret-not-for-production"
[events]
path = "events.jsonl"
[rules]
mx = "rules/mx-rules.toml"
"#
    )
}

/// The demo's MX rules (first match wins; the catch-all is last).
pub const RULES: &str = r#"# A large provider: few connections, few messages per connection, an hourly cap.
[[rule]]
name = "bigmail"
mx = ["*.bigmail.demo"]
max_connections = 2
messages_per_connection = 20
messages_per_hour = 108000

# A provider that defers with 421 [TS01]: all its MX hosts share one reputation, so a 421 is
# not retried on another MX; the whole path waits (first retry interval), then resumes slower.
[[rule]]
name = "yahoo-like"
mx = ["*.yahoo-like.demo"]
max_connections = 4
messages_per_connection = 20
fallback_on_421 = false
retry = ["5s", "1m"]

[[rule]]
name = "default"
mx = ["*"]
max_connections = 10
messages_per_connection = 100

[[backoff]]
name = "ts01-deferral"
pattern = '\[TS0[1-3]\]'
action = "backoff"
factor = 0.25
duration = "30m"
"#;

/// Everything learned from the event stream.
#[derive(Default)]
struct Tally {
    domains: BTreeMap<String, DomainReport>,
    /// Recipient -> has a final outcome (false: deferred so far).
    finished: HashMap<String, bool>,
    deferral_events: usize,
    missed: u64,
    paused: Vec<String>,
    bounced: Vec<QuarantineEntry>,
    ts01_sample: Option<String>,
}

impl Tally {
    fn new(rcpts: &[String]) -> Tally {
        let mut t = Tally::default();
        for r in rcpts {
            let d = domain_part(r).to_string();
            let e = t.domains.entry(d.clone()).or_default();
            e.domain = d;
            e.recipients += 1;
        }
        t
    }

    /// Apply one event; returns the domain it changed.
    fn apply(&mut self, e: &Event) -> Option<String> {
        if e.event == "campaign_paused" {
            self.paused.push(e.message.clone().unwrap_or_default());
            return None;
        }
        let rcpt = e.recipient.as_deref()?.to_ascii_lowercase();
        let domain = domain_part(&rcpt).to_string();
        let d = self.domains.get_mut(&domain)?;
        let was_deferred = match self.finished.get(&rcpt) {
            Some(true) => return None,
            Some(false) => true,
            None => false,
        };
        match e.event.as_str() {
            "deferred" => {
                self.deferral_events += 1;
                if domain == TS01_DOMAIN && self.ts01_sample.is_none() {
                    self.ts01_sample = e.response.clone();
                }
                if !was_deferred {
                    d.deferred += 1;
                    self.finished.insert(rcpt, false);
                }
                return Some(domain);
            }
            "delivered" => {
                d.delivered += 1;
                if let Some(mx) = &e.mx {
                    *d.via.entry(mx.clone()).or_default() += 1;
                }
            }
            "bounced" => {
                d.bounced += 1;
                let reason = e.bounce_reason.clone().unwrap_or_default();
                self.bounced.push(QuarantineEntry {
                    address: rcpt.clone(),
                    reason,
                });
            }
            "expired" | "suppressed" | "cancelled" => d.other += 1,
            _ => return None,
        }
        if was_deferred {
            d.deferred -= 1;
        }
        self.finished.insert(rcpt, true);
        Some(domain)
    }

    /// Every recipient has a final outcome, except the TS01 provider's, which only need to
    /// have been deferred once.
    fn complete(&self) -> bool {
        self.domains.values().all(|d| d.settled() >= d.recipients)
    }
}

fn domain_part(rcpt: &str) -> &str {
    rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Live progress bars (or nothing).
struct Bars {
    _multi: MultiProgress,
    submitted: ProgressBar,
    domains: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(tally: &Tally, total: usize) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{prefix:>16} [{bar:30.cyan/blue}] {pos:>5}/{len:<5} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let _ = multi.println(format!(
            "sluice demo: {total} recipients, {} destination domains, all on loopback (127.222.0.0/24)",
            tally.domains.len()
        ));
        let submitted = multi.add(ProgressBar::new(total as u64));
        submitted.set_style(style.clone());
        submitted.set_prefix("submitted (API)");
        let mut domains = HashMap::new();
        for spec in HOSTS {
            for d in spec.domains {
                let Some(r) = tally.domains.get(*d) else {
                    continue;
                };
                let bar = multi.add(ProgressBar::new(r.recipients as u64));
                bar.set_style(style.clone());
                bar.set_prefix(d.to_string());
                domains.insert(d.to_string(), bar);
            }
        }
        Bars {
            _multi: multi,
            submitted,
            domains,
        }
    }

    fn update(&self, d: &DomainReport) {
        if let Some(bar) = self.domains.get(&d.domain) {
            bar.set_position(d.settled() as u64);
            bar.set_message(format!(
                "delivered {}  bounced {}  deferred {}",
                d.delivered, d.bounced, d.deferred
            ));
        }
    }

    /// Leave the final bars on screen, and the cursor on the line after them.
    fn finish(self) {
        self.submitted.finish();
        for b in self.domains.values() {
            b.finish();
        }
        drop(self);
        println!();
    }
}

type Driven = (Tally, Duration, bool);

/// Submit the campaign and follow the events until done or [`TIMEOUT`].
async fn drive(
    engine: &Engine,
    mut events: broadcast::Receiver<Arc<Event>>,
    opts: &DemoOptions,
) -> Result<Driven, DemoError> {
    let rcpts = recipients(opts.recipients);
    let mut tally = Tally::new(&rcpts);
    let bars =
        (opts.progress && std::io::stdout().is_terminal()).then(|| Bars::new(&tally, rcpts.len()));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let http = engine.http_addr();
    let bar = bars.as_ref().map(|b| b.submitted.clone());
    let mut submit = tokio::spawn(async move {
        for chunk in rcpts.chunks(BATCH) {
            submit_batch(http, chunk).await?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        Ok::<(), DemoError>(())
    });
    let mut submitted = false;
    let mut timed_out = false;
    while !(submitted && tally.complete()) {
        tokio::select! {
            r = &mut submit, if !submitted => {
                submitted = true;
                r.map_err(|e| DemoError::Api {
                    request: "POST /api/v1/messages".into(),
                    detail: format!("submission task failed: {e}"),
                })??;
            }
            ev = events.recv() => match ev {
                Ok(e) => {
                    if let Some(d) = tally.apply(&e) {
                        if let (Some(b), Some(r)) = (&bars, tally.domains.get(&d)) {
                            b.update(r);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tally.missed += n,
                Err(broadcast::error::RecvError::Closed) => return Err(DemoError::EventsClosed),
            },
            _ = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                break;
            }
        }
    }
    submit.abort();
    if let Some(b) = bars {
        b.finish();
    }
    Ok((tally, started.elapsed(), timed_out))
}

async fn submit_batch(http: SocketAddr, chunk: &[String]) -> Result<(), DemoError> {
    let body = serde_json::json!({
        "campaign": CAMPAIGN,
        "recipients": chunk,
        "content": MESSAGE,
    });
    let (code, v) = request(http, "POST", "/api/v1/messages", Some(&body.to_string())).await?;
    if code != 202 {
        return Err(DemoError::Api {
            request: "POST /api/v1/messages".into(),
            detail: format!("HTTP {code}: {v}"),
        });
    }
    Ok(())
}

const MESSAGE: &str = "From: Demo Shop <news@shop.demo>\r\n\
To: customers@shop.demo\r\n\
Subject: Our spring collection is here\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello,\r\n\
\r\n\
The spring collection is in store. This message was sent by `sluice demo`\r\n\
to a fake mail host on your own machine.\r\n";

/// One API call; an error names the request.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Value), DemoError> {
    crate::testkit::api_request(addr, method, path, body)
        .await
        .map_err(|e| DemoError::Api {
            request: format!("{method} {path}"),
            detail: e.to_string(),
        })
}

/// What the API says at the end: the quarantine and the TS01 path's state.
#[derive(Default)]
struct EngineState {
    quarantined: Vec<QuarantineEntry>,
    ts01_path: Option<String>,
}

async fn engine_state(http: SocketAddr) -> Result<EngineState, DemoError> {
    let (_, q) = request(http, "GET", "/api/v1/quarantine?limit=10000", None).await?;
    let entries = q["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let quarantined = entries
        .iter()
        .map(|e| QuarantineEntry {
            address: text(&e["address"]),
            reason: text(&e["reason"]),
        })
        .collect();
    let (_, queues) = request(http, "GET", "/api/v1/queues", None).await?;
    let paths = queues["paths"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ts01_path = paths
        .iter()
        .find(|p| p["rule"] == "yahoo-like")
        .and_then(|p| p["state"].as_str().map(str::to_string));
    Ok(EngineState {
        quarantined,
        ts01_path,
    })
}

/// Messages per hour from the first to the last transaction, not counting the first `burst`
/// (an hourly cap lets a burst through on top of the rate: GCRA, see `throttle`).
fn observed_rate(times: &[Instant], burst: usize) -> Option<f64> {
    let (first, last) = (times.iter().min()?, times.iter().max()?);
    let span = last.duration_since(*first).as_secs_f64();
    let counted = times.len().saturating_sub(burst.max(1));
    (counted > 0 && span > 0.001).then(|| counted as f64 / span * 3600.0)
}

fn summarize(
    recipients: usize,
    (tally, elapsed, timed_out): Driven,
    hosts: &[(&HostSpec, FakeMx)],
    rules: &RuleSet,
    state: EngineState,
) -> DemoSummary {
    let host_reports: Vec<HostReport> = hosts
        .iter()
        .map(|(spec, mx)| {
            let rule = rules.rule(spec.rule);
            let cap = rule.and_then(|r| r.messages_per_hour);
            let burst = cap.map_or(0, |c| crate::throttle::hourly_burst(c as f64) as usize);
            HostReport {
                host: spec.name.to_string(),
                addr: mx.addr,
                domains: spec.domains.iter().map(|d| d.to_string()).collect(),
                rule: spec.rule.to_string(),
                transactions: mx.transactions().len(),
                connections: mx.connections().len(),
                rcpt_attempts: mx.rcpt_attempts().len(),
                peak_connections: mx.peak_connections(),
                max_connections: rule.map_or(0, |r| r.max_connections),
                max_transactions_per_connection: mx.max_transactions_per_connection(),
                messages_per_connection: rule.map_or(0, |r| r.messages_per_connection),
                rate_per_hour: observed_rate(&mx.transaction_times(), burst),
                messages_per_hour: cap,
            }
        })
        .collect();
    let domain = |name: &str| tally.domains.get(name).cloned().unwrap_or_default();
    let b = domain(BACKUP_DOMAIN);
    let backup = BackupReport {
        domain: BACKUP_DOMAIN.into(),
        primary: format!("{} ({}:{MX_PORT})", DEAD_PRIMARY.0, demo_ip(DEAD_PRIMARY.1)),
        backup: BACKUP_MX.into(),
        recipients: b.recipients,
        delivered_via_backup: b.via.get(BACKUP_MX).copied().unwrap_or(0),
        delivered_via_primary: b.via.get(DEAD_PRIMARY.0).copied().unwrap_or(0),
    };
    let y = domain(TS01_DOMAIN);
    let ts01 = DeferralReport {
        domain: TS01_DOMAIN.into(),
        recipients: y.recipients,
        deferred: y.deferred,
        sample_reply: tally.ts01_sample.clone(),
        rcpt_attempts_at_host: host_reports
            .iter()
            .find(|h| h.host == TS01_MX)
            .map_or(0, |h| h.rcpt_attempts),
        path_state: state.ts01_path,
    };
    let order: Vec<&str> = HOSTS
        .iter()
        .flat_map(|h| h.domains.iter().copied())
        .collect();
    let mut domains: Vec<DomainReport> = tally.domains.into_values().collect();
    domains.sort_by_key(|d| order.iter().position(|o| *o == d.domain));
    let sum = |f: fn(&DomainReport) -> usize| domains.iter().map(f).sum::<usize>();
    DemoSummary {
        recipients,
        elapsed,
        timed_out,
        delivered: sum(|d| d.delivered),
        bounced: sum(|d| d.bounced),
        deferred: sum(|d| d.deferred),
        deferral_events: tally.deferral_events,
        other: sum(|d| d.other),
        missed_events: tally.missed,
        campaign_paused: tally.paused,
        hosts: host_reports,
        backup,
        hard_bounced: tally.bounced,
        quarantined: state.quarantined,
        ts01,
        domains,
    }
}
