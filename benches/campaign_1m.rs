//! `campaign_1m`: REQUESTS (10) requests of PER_REQUEST (100,000) recipients sharing one body
//! over DOMAINS (10,000), injected with delivery paused: injection time, spool bytes per
//! recipient beyond the body, RSS per queued recipient; then resume and report drain rate.

#[path = "util.rs"]
mod util;

use std::time::{Duration, Instant};

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let requests = util::env("REQUESTS", 10);
    let per = util::env("PER_REQUEST", 100_000);
    let domains = util::env("DOMAINS", 10_000);
    let n = requests * per;
    let env = util::start(
        203,
        domains,
        4,
        Default::default(),
        &util::catch_all(20, 1000),
    )
    .await;
    let addr = env.engine.http_addr();
    assert_eq!(util::post(addr, "/api/v1/pause", b"").await, 200);
    let content = util::body(5120);
    let spool0 = env.spool_bytes();
    let rss0 = util::rss_bytes();
    let heap0 = util::heap_in_use();
    let t0 = Instant::now();
    for r in 0..requests {
        let rcpts: Vec<String> = (r * per..(r + 1) * per)
            .map(|k| format!("u{k}@d{}.test", k % domains))
            .collect();
        // one body per request, stored once
        let req =
            serde_json::json!({"campaign": "million", "recipients": rcpts, "content": content});
        assert_eq!(
            util::post(addr, "/api/v1/messages", req.to_string().as_bytes()).await,
            202
        );
    }
    let inject = t0.elapsed().as_secs_f64();
    // let the event log writer catch up (its backlog is transient, not queued deliveries)
    let log = env.dir.join("events.jsonl");
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if now == last {
            break;
        }
        last = now;
    }
    // and every delivery sit in its queue (DNS answered: none waits in the resolver's list)
    loop {
        let t = env.engine.scheduler().totals();
        if t.resolving == 0 && t.ready >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the engine gives freed intake buffers back once intake is quiet (within two looks
    // of its reclaim task): measure the steady state, not the tail of the last request
    tokio::time::sleep(sluice::memory::INTERVAL * 2 + Duration::from_millis(500)).await;
    let spool = env.spool_bytes().saturating_sub(spool0);
    let rss = util::rss_bytes().saturating_sub(rss0);
    // glibc keeps freed request buffers (JSON parsing) mapped; give them back to see what
    // the queued deliveries themselves hold
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let rss_trimmed = util::rss_bytes().saturating_sub(rss0);
    let heap = util::heap_in_use().saturating_sub(heap0);
    let bodies = requests as u64 * content.len() as u64;
    let t1 = Instant::now();
    assert_eq!(util::post(addr, "/api/v1/resume", b"").await, 200);
    let ok = env
        .wait_delivered(n as u64, Duration::from_secs(1800))
        .await;
    let drain = t1.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bench": "campaign_1m", "recipients": n, "domains": domains, "complete": ok,
            "inject_seconds": (inject * 1000.0).round() / 1000.0,
            "inject_per_second": (n as f64 / inject).round(),
            "spool_bytes_per_recipient": ((spool.saturating_sub(bodies)) as f64 / n as f64).round(),
            "rss_bytes_per_queued_recipient": (rss as f64 / n as f64).round(),
            "rss_bytes_per_queued_recipient_after_trim": (rss_trimmed as f64 / n as f64).round(),
            "heap_bytes_per_queued_recipient": (heap as f64 / n as f64).round(),
            "drain_per_second": (env.delivered() as f64 / drain).round(),
            "peak_rss_mb": util::peak_rss_bytes() / 1_048_576,
        })
    );
    env.stop().await;
}
