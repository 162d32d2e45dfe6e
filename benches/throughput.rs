//! `throughput`: RECIPIENTS (100,000) over DOMAINS (1,000), ~5 KiB messages, durable spool on,
//! limits out of the way, injected (a) over HTTP in batches and (b) over SMTP submission by
//! concurrent sessions. Reports injection rate, delivery rate (first accepted to last
//! delivered), CPU seconds per 1,000 messages (engine + sinks, one process) and peak RSS.

#[path = "util.rs"]
mod util;

use std::time::{Duration, Instant};

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        for mode in ["http", "smtp"] {
            if std::env::var("MODE").is_ok_and(|m| m != mode) {
                continue;
            }
            run(mode).await;
        }
    });
}

async fn run(mode: &str) {
    let n = util::env("RECIPIENTS", 100_000);
    let domains = util::env("DOMAINS", 1000);
    let size = util::env("SIZE", 5120);
    let net = if mode == "http" { 201 } else { 202 };
    let env = util::start(
        net,
        domains,
        4,
        Default::default(),
        &util::catch_all(20, 1000),
    )
    .await;
    let content = util::body(size);
    let cpu0 = util::cpu_seconds();
    let t0 = Instant::now();
    match mode {
        "http" => {
            util::inject_http(
                env.engine.http_addr(),
                n,
                domains,
                1000,
                4,
                &content,
                "bench",
            )
            .await
        }
        _ => {
            let addr = env.engine.smtp_addr().expect("smtp");
            util::inject_smtp(addr, n, domains, 100, 20, &content).await
        }
    }
    let inject = t0.elapsed().as_secs_f64();
    let ok = env.wait_delivered(n as u64, Duration::from_secs(900)).await;
    let total = t0.elapsed().as_secs_f64();
    let cpu = util::cpu_seconds() - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "throughput", "mode": mode, "recipients": n, "domains": domains,
            "message_bytes": content.len(), "complete": ok,
            "inject_seconds": round(inject), "inject_per_second": (n as f64 / inject).round(),
            "end_to_end_seconds": round(total), "delivered_per_second": (env.delivered() as f64 / total).round(),
            "cpu_seconds_per_1000": round(cpu * 1000.0 / n as f64),
            "peak_rss_mb": util::peak_rss_bytes() / 1_048_576,
        })
    );
    env.stop().await;
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
