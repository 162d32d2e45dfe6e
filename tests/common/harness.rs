//! Starts a real engine in-process on loopback, with its own temp spool, DNS authority and
//! config; plus a tiny HTTP client and event waiting (tests await events, never sleep).

use super::dns::{DnsBuilder, DnsServer};
use serde_json::Value;
use sluice::events::Event;
use sluice::{Clock, Config, Engine, ManualClock};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// Port every fake MX of a test listens on (each test has its own 127.N.0.0/24).
pub const MX_PORT: u16 = 2525;

pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net, 0, host)
}

pub fn ipa(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(ip(net, host))
}

pub struct Opts {
    pub net: u8,
    pub manual_clock: bool,
    /// Extra lines for the [delivery] section.
    pub delivery: String,
    /// Extra top-level sections appended at the end.
    pub extra: String,
    /// Extra lines for the [listen] section.
    pub listen: String,
    /// Contents of an MX rules file (written to rules/mx-rules.toml and configured).
    pub rules: Option<String>,
}

/// A rules file with only a catch-all rule with these limits (plus extra lines in it).
pub fn catch_all(max_connections: u32, messages_per_connection: u32, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"default\"\nmx = [\"*\"]\nmax_connections = {max_connections}\nmessages_per_connection = {messages_per_connection}\n{extra}\n"
    )
}

impl Opts {
    pub fn new(net: u8) -> Opts {
        Opts {
            net,
            manual_clock: false,
            delivery: String::new(),
            extra: String::new(),
            listen: String::new(),
            rules: None,
        }
    }
}

pub fn config_text(dns: SocketAddr, o: &Opts) -> String {
    format!(
        r#"hostname = "sluice.test"
[listen]
http = "127.0.0.1:0"
smtp = "127.0.0.1:0"
{listen}
[spool]
path = "spool/sluice.redb"
[dns]
nameservers = ["{dns}"]
timeout = "1s"
[delivery]
port = {MX_PORT}
connect_timeout = "2s"
command_timeout = "3s"
retry = ["1m", "5m"]
{delivery}
[verp]
domain = "fb.sluice.test"
prefix = "b"
secret = "test-secret-0123456789"
[events]
path = "events.jsonl"
{extra}
"#,
        listen = o.listen,
        delivery = o.delivery,
        extra = o.extra,
    )
}

pub struct Harness {
    pub engine: Option<Engine>,
    pub dir: tempfile::TempDir,
    pub dns: DnsServer,
    pub clock: Option<Arc<ManualClock>>,
    pub events: broadcast::Receiver<Arc<Event>>,
    /// Events received but not yet claimed by a wait.
    pub backlog: Vec<Arc<Event>>,
    pub config_path: PathBuf,
    pub opts: Opts,
}

impl Harness {
    pub async fn start(dns: DnsBuilder, opts: Opts) -> Harness {
        let dns = dns.start(ipa(opts.net, 1)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("sluice.toml");
        let mut text = config_text(dns.addr, &opts);
        if let Some(rules) = &opts.rules {
            std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
            std::fs::write(dir.path().join("rules/mx-rules.toml"), rules).expect("write rules");
            text.push_str("[rules]\nmx = \"rules/mx-rules.toml\"\n");
        }
        std::fs::write(&config_path, text).expect("write config");
        let (clock, manual) = if opts.manual_clock {
            let (c, m) = Clock::manual();
            (c, Some(m))
        } else {
            (Clock::System, None)
        };
        let engine = start_engine(&config_path, clock).await;
        let events = engine.subscribe();
        Harness {
            engine: Some(engine),
            dir,
            dns,
            clock: manual,
            events,
            backlog: Vec::new(),
            config_path,
            opts,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine running")
    }

    pub fn http(&self) -> SocketAddr {
        self.engine().http_addr()
    }

    /// Stop the engine and start a new one on the same spool (same clock).
    pub async fn restart(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
        let clock = match &self.clock {
            Some(m) => Clock::Manual(m.clone()),
            None => Clock::System,
        };
        let engine = start_engine(&self.config_path, clock).await;
        self.events = engine.subscribe();
        self.engine = Some(engine);
    }

    pub fn advance(&self, d: Duration) {
        self.clock.as_ref().expect("manual clock").advance(d);
    }

    /// POST /api/v1/messages with a simple message to `recipients`.
    pub async fn inject(&self, recipients: &[&str]) -> Value {
        let body = serde_json::json!({
            "campaign": "spring",
            "recipients": recipients,
            "content": message("Hello"),
        });
        let (code, v) = http(
            self.http(),
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(code, 202, "inject failed: {v}");
        v
    }

    /// Wait for the next event matching `pred`.
    /// Earlier events that did not match a previous wait are searched first.
    pub async fn wait_event(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Arc<Event> {
        if let Some(pos) = self.backlog.iter().position(|e| pred(e)) {
            return self.backlog.remove(pos);
        }
        let backlog = &mut self.backlog;
        let events = &mut self.events;
        let fut = async {
            loop {
                match events.recv().await {
                    Ok(e) if pred(&e) => return e,
                    Ok(e) => backlog.push(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen: {:#?}", self.backlog))
    }

    /// Wait for an event of `kind` about recipient `rcpt`.
    pub async fn wait_for(&mut self, kind: &str, rcpt: &str) -> Arc<Event> {
        let k = kind.to_string();
        let r = rcpt.to_string();
        self.wait_event(&format!("{kind} for {rcpt}"), move |e| {
            e.event == k && e.recipient.as_deref() == Some(r.as_str())
        })
        .await
    }

    /// Stop the engine but keep the harness (files stay for inspection or a restart).
    pub async fn shutdown_keep_config(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
    }
}

pub async fn start_engine(config_path: &Path, clock: Clock) -> Engine {
    let cfg = Config::load(config_path).unwrap_or_else(|e| panic!("config: {e}"));
    Engine::start(cfg, clock).await.expect("engine start")
}

pub async fn wait_event(
    rx: &mut broadcast::Receiver<Arc<Event>>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Arc<Event> {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub fn message(subject: &str) -> String {
    format!("From: Shop <news@shop.test>\r\nTo: you@example.test\r\nSubject: {subject}\r\n\r\nHi there.\r\n.leading dot line\r\n")
}

/// Minimal HTTP/1.1 client (Connection: close). Returns status and JSON body (or Null).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let (code, raw) = http_raw(addr, method, path, body.map(str::as_bytes), token).await;
    let v = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    (code, v)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let body = body.unwrap_or(b"");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading a big body; ignore write errors then.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let pos = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(out.len());
    let mut payload = out[pos..].to_vec();
    if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    (code, payload)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

/// A scripted SMTP client: sends each line and returns the replies' first lines.
pub struct SmtpClient {
    s: TcpStream,
    buf: Vec<u8>,
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> (SmtpClient, String) {
        let s = TcpStream::connect(addr).await.expect("connect smtp");
        let mut c = SmtpClient { s, buf: Vec::new() };
        let banner = c.reply().await;
        (c, banner)
    }

    pub async fn send(&mut self, data: &str) {
        self.s.write_all(data.as_bytes()).await.expect("smtp write");
    }

    /// One complete reply (all lines joined by '\n').
    pub async fn reply(&mut self) -> String {
        loop {
            if let Some(end) = reply_end(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&r).trim_end().to_string();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
                .await
                .expect("smtp reply timeout")
                .expect("smtp read");
            assert!(
                n > 0,
                "connection closed; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }
}

fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl + 1];
        start += nl + 1;
        if line.len() < 4 || line[3] != b'-' {
            return Some(start);
        }
    }
    None
}
