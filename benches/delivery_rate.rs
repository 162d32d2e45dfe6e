//! End-to-end delivery rate over loopback: N recipients over D domains, injected through the
//! HTTP API in batches, delivered to fake MX hosts. Prints one JSON line.
//!
//! `cargo bench --bench delivery_rate` (env: RECIPIENTS=20000 DOMAINS=100 BATCH=1000 SIZE=5120)

#[path = "../tests/common/mod.rs"]
mod common;

use common::dns::DnsBuilder;
use common::harness::{config_text, http, ip, ipa, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use sluice::{Clock, Config, Engine};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let n = env("RECIPIENTS", 20_000);
    let domains = env("DOMAINS", 100);
    let batch = env("BATCH", 1000);
    let size = env("SIZE", 5120);
    let net = 200;
    // 4 MX hosts shared by all domains (like a provider hosting many domains)
    let mut dns = DnsBuilder::new();
    for h in 0..4u8 {
        dns = dns.a(&format!("mx{h}.sink.test"), ip(net, 10 + h));
    }
    for d in 0..domains {
        dns = dns.mx(&format!("d{d}.test"), 10, &format!("mx{}.sink.test", d % 4));
    }
    let dns = dns.start(ipa(net, 1)).await;
    let mut sinks = Vec::new();
    for h in 0..4u8 {
        sinks.push(FakeMx::start(ipa(net, 10 + h), MX_PORT, MxScript::default()).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("sluice.toml");
    let mut o = Opts::new(net);
    o.rules = Some(common::harness::catch_all(4, 1000, "idle_timeout = \"1s\""));
    std::fs::create_dir_all(dir.path().join("rules")).expect("rules dir");
    std::fs::write(
        dir.path().join("rules/mx-rules.toml"),
        o.rules.clone().unwrap_or_default(),
    )
    .expect("rules");
    let text = config_text(dns.addr, &o) + "[rules]\nmx = \"rules/mx-rules.toml\"\n";
    std::fs::write(&cfg_path, text).expect("config");
    let cfg = Config::load(&cfg_path).expect("config");
    let engine = Engine::start(cfg, Clock::System).await.expect("engine");
    let mut events = engine.subscribe();
    let addr = engine.http_addr();

    let body = format!(
        "From: Shop <news@shop.test>\r\nSubject: bench\r\n\r\n{}\r\n",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(size / 58)
    );
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let counter = tokio::spawn(async move {
        let mut delivered = 0usize;
        let mut first: Option<Instant> = None;
        while delivered < n {
            match events.recv().await {
                Ok(e) if e.event == "delivered" => {
                    first.get_or_insert_with(Instant::now);
                    delivered += 1;
                }
                Ok(e) if e.event == "bounced" || e.event == "deferred" => {
                    eprintln!("unexpected {}: {:?}", e.event, e.response);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    eprintln!("lagged {k}");
                }
                Err(_) => break,
            }
        }
        (delivered, first, Instant::now())
    });
    let mut injected = 0;
    let mut tasks = Vec::new();
    let conc = 4;
    let per_task = n / conc;
    for c in 0..conc {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c * per_task;
            let end = if c == conc - 1 { n } else { i + per_task };
            while i < end {
                let hi = (i + batch).min(end);
                let rcpts: Vec<String> = (i..hi)
                    .map(|k| format!("u{k}@d{}.test", k % domains))
                    .collect();
                let req =
                    serde_json::json!({"campaign": "bench", "recipients": rcpts, "content": body});
                let (code, v) = http(
                    addr,
                    "POST",
                    "/api/v1/messages",
                    Some(&req.to_string()),
                    None,
                )
                .await;
                assert_eq!(code, 202, "{v}");
                i = hi;
            }
        }));
    }
    for t in tasks {
        t.await.expect("inject task");
        injected += 1;
    }
    let inject_secs = t0.elapsed().as_secs_f64();
    let (delivered, _first, last) = counter.await.expect("counter");
    let total_secs = (last - t0).as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let received: usize = sinks.iter().map(|s| s.transactions().len()).sum();
    let _ = injected;
    println!(
        "{}",
        serde_json::json!({
            "bench": "delivery_rate",
            "recipients": n, "domains": domains, "message_bytes": body.len(),
            "inject_seconds": (inject_secs * 1000.0).round() / 1000.0,
            "inject_per_second": (n as f64 / inject_secs).round(),
            "end_to_end_seconds": (total_secs * 1000.0).round() / 1000.0,
            "delivered_per_second_end_to_end": (delivered as f64 / total_secs).round(),
            "delivered": delivered, "received_by_sinks": received,
            "cpu_ms_per_message_incl_sinks": (cpu * 1000.0 / n as f64 * 1000.0).round() / 1000.0,
        })
    );
    engine.shutdown().await;
}
