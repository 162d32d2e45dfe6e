//! Shared bench plumbing: an engine on loopback with its DNS authority and fast sinks,
//! HTTP and SMTP injection, CPU and memory readings. Benches print one JSON line each.
#![allow(dead_code)]

use sluice::sink::{Sink, SinkOptions};
use sluice::testkit::dns::{DnsBuilder, DnsServer};
use sluice::{Clock, Config, Engine};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub const PORT: u16 = 2525;

pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net, 0, host)
}

pub fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Current resident set size in bytes.
/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`), whatever RSS
/// the allocator keeps beyond them.
#[allow(dead_code)]
pub fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Peak resident set size in bytes.
pub fn peak_rss_bytes() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as u64 * 1024
}

pub struct Env {
    pub engine: Engine,
    pub sinks: Vec<Sink>,
    pub dns: DnsServer,
    pub dir: std::path::PathBuf,
}

/// Engine + `hosts` sinks + `domains` domains spread over them. `rules` is the MX rules file.
pub async fn start(net: u8, domains: usize, hosts: u8, sink: SinkOptions, rules: &str) -> Env {
    let mut dns = DnsBuilder::new();
    for h in 0..hosts {
        dns = dns.a(&format!("mx{h}.sink.test"), ip(net, 10 + h));
    }
    for d in 0..domains {
        dns = dns.mx(
            &format!("d{d}.test"),
            10,
            &format!("mx{}.sink.test", d % hosts as usize),
        );
    }
    let dns = dns.start(IpAddr::V4(ip(net, 1))).await;
    let mut sinks = Vec::new();
    for h in 0..hosts {
        let addr = SocketAddr::new(IpAddr::V4(ip(net, 10 + h)), PORT);
        sinks.push(Sink::start(addr, sink.clone()).await.expect("sink"));
    }
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{net}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rules")).expect("bench dir");
    std::fs::write(dir.join("rules/mx-rules.toml"), rules).expect("rules");
    let cfg = format!(
        r#"hostname = "bench.test"
[listen]
http = "127.0.0.1:0"
smtp = "127.0.0.1:0"
[spool]
path = "spool/sluice.redb"
max_queued = 100000000
[dns]
nameservers = ["{dns}"]
[delivery]
port = {PORT}
retry = ["1m"]
[verp]
domain = "fb.bench.test"
secret = "bench-secret-0123456789"
[events]
path = "events.jsonl"
[rules]
mx = "rules/mx-rules.toml"
"#,
        dns = dns.addr
    );
    std::fs::write(dir.join("sluice.toml"), cfg).expect("config");
    let cfg = Config::load(&dir.join("sluice.toml")).expect("config");
    let engine = Engine::start(cfg, Clock::System).await.expect("engine");
    Env {
        engine,
        sinks,
        dns,
        dir,
    }
}

impl Env {
    pub fn delivered(&self) -> u64 {
        self.sinks.iter().map(|s| s.messages()).sum()
    }

    /// Wait until the sinks have `n` messages (polling the counters every 10 ms).
    pub async fn wait_delivered(&self, n: u64, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        while self.delivered() < n {
            if tokio::time::Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn spool_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join("spool/sluice.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub async fn stop(self) {
        self.engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub use sluice::loadgen::body;

pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    sluice::loadgen::post(addr, path, body).await.expect("post")
}

pub async fn inject_http(
    addr: SocketAddr,
    total: usize,
    domains: usize,
    batch: usize,
    conc: usize,
    content: &str,
    campaign: &str,
) {
    sluice::loadgen::inject_http(addr, total, domains, batch, conc, content, campaign)
        .await
        .expect("http injection");
}

pub async fn inject_smtp(
    addr: SocketAddr,
    total: usize,
    domains: usize,
    per_txn: usize,
    sessions: usize,
    content: &str,
) {
    sluice::loadgen::inject_smtp(addr, total, domains, per_txn, sessions, content)
        .await
        .expect("smtp injection");
}

pub fn catch_all(max_connections: u32, mpc: u32) -> String {
    format!("[[rule]]\nname = \"default\"\nmx = [\"*\"]\nmax_connections = {max_connections}\nmessages_per_connection = {mpc}\nidle_timeout = \"1s\"\n")
}
