//! `rtt`: one destination limited to 2 connections, with a simulated round-trip time (the sink
//! waits RTT_MS before handling each read). Reports messages per second per connection and
//! messages per round trip, with PIPELINING + CHUNKING and with PIPELINING alone.

#[path = "util.rs"]
mod util;

use sluice::sink::SinkOptions;
use std::time::{Duration, Instant};

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        run(true).await;
        run(false).await;
    });
}

async fn run(chunking: bool) {
    let n = util::env("MESSAGES", 400);
    let rtt = util::env("RTT_MS", 20) as u64;
    let opts = SinkOptions {
        delay: Some(Duration::from_millis(rtt)),
        chunking,
        ..Default::default()
    };
    let net = if chunking { 204 } else { 205 };
    let env = util::start(net, 1, 1, opts, &util::catch_all(2, 10_000)).await;
    let content = util::body(5120);
    util::inject_http(env.engine.http_addr(), n, 1, 1000, 1, &content, "rtt").await;
    // steady state: from the 10th delivered message to the last (connection setup excluded)
    env.wait_delivered(10, Duration::from_secs(60)).await;
    let (t0, start) = (Instant::now(), env.delivered());
    let ok = env.wait_delivered(n as u64, Duration::from_secs(600)).await;
    let secs = t0.elapsed().as_secs_f64();
    let per_conn = (env.delivered() - start) as f64 / secs / 2.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "rtt", "chunking": chunking, "pipelining": true, "rtt_ms": rtt,
            "messages": n, "connections": 2, "complete": ok,
            "messages_per_second_per_connection": (per_conn * 100.0).round() / 100.0,
            "messages_per_round_trip": (per_conn * rtt as f64 / 1000.0 * 100.0).round() / 100.0,
        })
    );
    env.stop().await;
}
