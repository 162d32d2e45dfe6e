//! Remote rules sync: `[rules] sync_url` (MX rules) and `bounce_sync_url` (bounce rules) are
//! fetched at start and then every `sync_interval` (default daily), as Adobe Campaign updates
//! both rule sets from its deliverability instance. A fetched file that does not validate is
//! refused — the running rules stay — and the failure is logged, counted in
//! `sluice_rule_sync_failures_total` and reported as a `rules_sync_failed` event. A valid one
//! replaces the local file (atomically) and is loaded like a reload. The `custom` level turns
//! syncing off: the operator's own file is used exactly as written.

use crate::bounce::BounceRules;
use crate::clock::Clock;
use crate::config::Config;
use crate::events::http::{parse_url, tls_connector};
use crate::events::{Event, Events};
use crate::metrics::Metrics;
use crate::quarantine::Quarantine;
use crate::queue::Scheduler;
use crate::rules::{Level, RuleSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const MAX_RULES_BYTES: usize = 8 * 1024 * 1024;

/// GET a URL (HTTP/1.0, so no chunked encoding); returns the body of a 200.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let t = parse_url(url)?;
    let work = async {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: sluice/{}\r\n\r\n",
            t.path,
            t.authority,
            env!("CARGO_PKG_VERSION")
        );
        if t.https {
            let tls = tls_connector(Path::new("/etc/ssl/certs/ca-certificates.crt"))?;
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| format!("invalid TLS name {:?}: {e}", t.host))?;
            let s = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", t.host))?;
            exchange(s, req.as_bytes()).await
        } else {
            exchange(tcp, req.as_bytes()).await
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<Vec<u8>, String> {
    s.write_all(req).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > MAX_RULES_BYTES {
            return Err("rules file too large".into());
        }
    }
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response head")?;
    let head = String::from_utf8_lossy(&out[..end]);
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("HTTP {code}"));
    }
    Ok(out[end + 4..].to_vec())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("sync.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

pub struct Sync {
    pub cfg: Arc<Config>,
    pub sched: Arc<Scheduler>,
    pub quarantine: Arc<Quarantine>,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    pub clock: Clock,
}

impl Sync {
    fn event(&self, kind: &str, message: String) {
        self.events.emit(Event {
            ts: crate::clock::rfc3339(self.clock.now_ms()),
            event: kind.into(),
            message: Some(message),
            ..Event::default()
        });
    }

    /// Fetch, validate, store and load one rule set.
    async fn sync_one(&self, kind: &'static str, url: &str, path: &Path) -> Result<usize, String> {
        let body = fetch(url, Duration::from_secs(30)).await?;
        let text = String::from_utf8(body).map_err(|_| "rules file is not UTF-8".to_string())?;
        let n = if kind == "mx" {
            let rules = RuleSet::parse(&text, Path::new(url)).map_err(|e| e.to_string())?;
            write_atomically(path, text.as_bytes())?;
            let n = rules.rules.len();
            self.sched.set_rules(Arc::new(rules));
            n
        } else {
            let rules = BounceRules::from_str_at(&text, url).map_err(|e| e.to_string())?;
            write_atomically(path, text.as_bytes())?;
            let n = rules.rules().len();
            self.quarantine.set_rules(Arc::new(rules));
            n
        };
        Ok(n)
    }

    pub async fn sync_all(&self) {
        if self.sched.levels().0 == Level::Custom {
            return;
        }
        let r = &self.cfg.rules;
        let jobs = [
            ("mx", r.sync_url.as_deref(), r.mx.as_deref()),
            ("bounce", r.bounce_sync_url.as_deref(), r.bounce.as_deref()),
        ];
        for (kind, url, path) in jobs {
            let (Some(url), Some(path)) = (url, path) else {
                continue;
            };
            match self.sync_one(kind, url, path).await {
                Ok(n) => {
                    self.metrics.reloads.with_label_values(&[kind, "ok"]).inc();
                    tracing::info!(rules = kind, count = n, url, "rules synced");
                    self.event(
                        "rules_synced",
                        format!("{kind} rules from {url}: {n} rules"),
                    );
                }
                Err(e) => {
                    self.metrics.sync_failures.with_label_values(&[kind]).inc();
                    tracing::error!(rules = kind, url, error = %e, "rules sync refused; the running rules stay");
                    self.event("rules_sync_failed", format!("{kind} rules from {url}: {e}"));
                }
            }
        }
    }

    /// Sync now, then every `sync_interval`, until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let every = self.cfg.rules.sync_interval.0;
        loop {
            self.sync_all().await;
            tokio::select! {
                _ = self.clock.sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
