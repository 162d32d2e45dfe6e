//! Command-line helpers that talk to a running engine through its HTTP API (the embedded
//! store is locked while the engine runs, so the CLI never opens the spool).

use crate::config::Config;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach sluice at {0}: {1} (is `sluice run` running with this config?)")]
    Connect(SocketAddr, std::io::Error),
    #[error("HTTP error talking to sluice: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer from sluice: {0}")]
    Protocol(String),
    #[error("sluice answered {0}: {1}")]
    Status(u16, String),
}

/// A minimal HTTP/1.1 client for the engine's own API.
pub struct ApiClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl ApiClient {
    pub fn from_config(cfg: &Config) -> ApiClient {
        let mut addr = cfg.listen.http;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
        }
        ApiClient {
            addr,
            token: cfg.api.token.clone(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let text = self.call_text(method, path, body.as_bytes()).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Send a raw body and return the raw answer (for CSV import/export).
    pub async fn call_text(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<String, CliError> {
        let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.addr))
            .await
            .map_err(|_| CliError::Connect(self.addr, std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| CliError::Connect(self.addr, e))?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .map_err(|_| CliError::Protocol("timed out".into()))??;
        let text = String::from_utf8_lossy(&out);
        let code: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| CliError::Protocol(text.chars().take(80).collect()))?;
        let start = text.find("\r\n\r\n").map(|p| p + 4).unwrap_or(text.len());
        let mut payload = text[start..].to_string();
        if text[..start]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            payload = dechunk(&payload);
        }
        if code >= 400 {
            let v: Value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(CliError::Status(code, msg));
        }
        Ok(payload)
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some(nl) = s.find("\r\n") {
        let n = usize::from_str_radix(s[..nl].trim(), 16).unwrap_or(0);
        if n == 0 || s.len() < nl + 2 + n {
            break;
        }
        out.push_str(&s[nl + 2..nl + 2 + n]);
        s = s.get(nl + 2 + n + 2..).unwrap_or("");
    }
    out
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The status table: totals, then one row per path, then each path's state in words.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let t = &v["totals"];
    out.push_str(&format!(
        "queued {}  (waiting {}, resolving {}, ready {}, in flight {})  paths {}  level {}{}\n\n",
        num(&t["queued"]),
        num(&t["waiting"]),
        num(&t["resolving"]),
        num(&t["ready"]),
        num(&t["in_flight"]),
        num(&t["paths"]),
        num(&v["level"]),
        if t["paused"] == Value::Bool(true) {
            "  [PAUSED]"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "{:<12} {:<12} {:<10} {:<28} {:>7} {:>6} {:>9} {:>15}  {}\n",
        "PATH",
        "RULE",
        "SOURCE",
        "DESTINATION",
        "QUEUED",
        "FLIGHT",
        "CONN/MAX",
        "RATE/MAX (/h)",
        "LAST ERROR"
    ));
    let empty = Vec::new();
    let paths = v["paths"].as_array().unwrap_or(&empty);
    for p in paths {
        out.push_str(&format!(
            "{:<12} {:<12} {:<10} {:<28} {:>7} {:>6} {:>9} {:>15}  {}\n",
            cut(&num(&p["id"]), 12),
            cut(&num(&p["rule"]), 12),
            cut(p["source"].as_str().unwrap_or("(shared)"), 10),
            cut(&num(&p["destination"]), 28),
            num(&p["queued"]),
            num(&p["in_flight"]),
            format!("{}/{}", num(&p["connections"]), num(&p["max_connections"])),
            format!(
                "{}/{}",
                num(&p["rate_per_hour"]),
                p["max_per_hour"]
                    .as_u64()
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "∞".into())
            ),
            cut(p["last_error"].as_str().unwrap_or(""), 60),
        ));
    }
    if !paths.is_empty() {
        out.push('\n');
        for p in paths {
            out.push_str(&format!("  {}  {}\n", num(&p["id"]), num(&p["state"])));
        }
    }
    out
}

/// `sluice campaign list` table.
pub fn render_campaigns(v: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:<10} {:>9} {:>8} {:>10} {:>9} {:>8} {:>10}  {}\n",
        "CAMPAIGN",
        "TENANT",
        "STATE",
        "ACCEPTED",
        "QUEUED",
        "DELIVERED",
        "BOUNCED",
        "HARD",
        "COMPLAINTS",
        "REASON"
    );
    let empty = Vec::new();
    for c in v["campaigns"].as_array().unwrap_or(&empty) {
        let name = c["campaign"].as_str().unwrap_or("");
        out.push_str(&format!(
            "{:<24} {:<12} {:<10} {:>9} {:>8} {:>10} {:>9} {:>8} {:>10}  {}\n",
            cut(if name.is_empty() { "(none)" } else { name }, 24),
            cut(c["tenant"].as_str().unwrap_or("-"), 12),
            num(&c["state"]),
            num(&c["accepted"]),
            num(&c["queued"]),
            num(&c["delivered"]),
            num(&c["bounced"]),
            num(&c["hard_bounces"]),
            num(&c["complaints"]),
            c["reason"].as_str().unwrap_or(""),
        ));
    }
    out
}

/// `sluice quarantine list` table.
pub fn render_quarantine(v: &Value) -> String {
    let mut out = format!(
        "{:<40} {:<10} {:<18} {:>6}  {:<24} {}\n",
        "ADDRESS", "TENANT", "REASON", "ERRORS", "QUARANTINED", "RELEASE"
    );
    let empty = Vec::new();
    for e in v["entries"].as_array().unwrap_or(&empty) {
        out.push_str(&format!(
            "{:<40} {:<10} {:<18} {:>6}  {:<24} {}\n",
            cut(e["address"].as_str().unwrap_or(""), 40),
            cut(e["tenant"].as_str().unwrap_or("-"), 10),
            num(&e["reason"]),
            num(&e["error_count"]),
            e["quarantined_at"].as_str().unwrap_or("-"),
            e["release_at"].as_str().unwrap_or("never"),
        ));
    }
    if let Some(next) = v["next_after"].as_str() {
        out.push_str(&format!("(more: --after {next})\n"));
    }
    out
}
