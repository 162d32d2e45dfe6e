//! MX rules enforcement: connection and per-connection limits, hourly rate (controlled clock),
//! source weights, backoff and path-wide deferral, levels, reload, no head-of-line blocking.

mod common;

use common::dns::DnsBuilder;
use common::harness::{catch_all, http, ip, ipa, message, Harness, Opts, MX_PORT};
use common::mx::{Behaviour, FakeMx, MxScript};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `n` domains all hosted on mx1.sink.test (one MX site).
fn hosted(net: u8, n: usize) -> DnsBuilder {
    let mut d = DnsBuilder::new().a("mx1.sink.test", ip(net, 2));
    for i in 0..n {
        d = d.mx(&format!("d{i}.test"), 10, "mx1.sink.test");
    }
    d
}

async fn inject_many(h: &Harness, rcpts: &[String]) {
    for chunk in rcpts.chunks(500) {
        let body = json!({"campaign": "c", "recipients": chunk, "content": message("x")});
        let (code, v) = http(
            h.http(),
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(code, 202, "{v}");
    }
}

#[tokio::test]
async fn connection_and_per_connection_limits_hold() {
    let net = 60;
    let mx = FakeMx::start(
        ipa(net, 2),
        MX_PORT,
        MxScript {
            delay: Some(Duration::from_millis(2)),
            ..Default::default()
        },
    )
    .await;
    let mut o = Opts::new(net);
    o.rules = Some(catch_all(3, 7, "idle_timeout = \"200ms\""));
    let h = Harness::start(hosted(net, 30), o).await;
    let rcpts: Vec<String> = (0..600).map(|i| format!("u{i}@d{}.test", i % 30)).collect();
    inject_many(&h, &rcpts).await;
    let txns = mx.wait_transactions(600, WAIT).await;
    assert_eq!(txns.len(), 600);
    assert_eq!(
        mx.peak_connections(),
        3,
        "peak connections must reach and never exceed the limit"
    );
    assert_eq!(mx.max_transactions_per_connection(), 7);
    assert!(mx.connections().len() >= 600 / 7);
    h.shutdown().await;
}

#[tokio::test]
async fn hourly_rate_is_smooth_and_follows_the_level() {
    let net = 61;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    // 3,600/h at boost; the level "slow" (10 %) makes it 360/h = one every 10 s
    o.rules = Some(catch_all(5, 100, "messages_per_hour = 3600"));
    let mut h = Harness::start(hosted(net, 5), o).await;
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/level",
        Some(r#"{"level": "slow"}"#),
        None,
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let rcpts: Vec<String> = (0..100).map(|i| format!("u{i}@d{}.test", i % 5)).collect();
    inject_many(&h, &rcpts).await;
    // the first message goes at once (burst of 1), then one per 10 s of clock time
    let mut delivered = 0;
    h.wait_event("first delivery", |e| e.event == "delivered")
        .await;
    delivered += 1;
    for _ in 0..30 {
        h.advance(Duration::from_secs(10));
        h.wait_event("a delivery", |e| e.event == "delivered").await;
        delivered += 1;
    }
    // 300 s of clock → 31 messages: exactly the configured rate (360/h) plus the burst of 1
    assert_eq!(delivered, 31);
    assert_eq!(mx.transactions().len(), 31);
    let (_, q) = http(h.http(), "GET", "/api/v1/queues", None, None).await;
    let path = &q["paths"][0];
    assert_eq!(path["max_per_hour"], 360, "{q}");
    assert_eq!(path["level"], "slow");
    // the level survives a restart
    h.restart().await;
    let (_, l) = http(h.http(), "GET", "/api/v1/level", None, None).await;
    assert_eq!(l["level"], "slow");
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/level",
        Some(r#"{"level": "warp"}"#),
        None,
    )
    .await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("unknown level"));
    h.shutdown().await;
}

/// Under an hourly cap whose next token is due within the idle timeout, a connection waits
/// for it instead of closing: the messages go over one connection, not one each.
#[tokio::test]
async fn a_connection_waits_for_a_near_token_instead_of_closing() {
    let net = 68;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    // 3,600/h: a burst of 10, then one message a second, within the 2 s idle timeout
    o.rules = Some(catch_all(
        1,
        100,
        "messages_per_hour = 3600\nidle_timeout = \"2s\"",
    ));
    let mut h = Harness::start(hosted(net, 1), o).await;
    let rcpts: Vec<String> = (0..30).map(|i| format!("u{i}@d0.test")).collect();
    inject_many(&h, &rcpts).await;
    // the burst goes at once; then one token per second of clock time
    for _ in 0..10 {
        h.wait_event("a burst delivery", |e| e.event == "delivered")
            .await;
    }
    for _ in 0..20 {
        h.advance(Duration::from_secs(1));
        h.wait_event("a paced delivery", |e| e.event == "delivered")
            .await;
    }
    assert_eq!(mx.transactions().len(), 30);
    assert_eq!(
        mx.connections().len(),
        1,
        "paced over one connection, not reconnecting for every token"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn source_weights_split_traffic() {
    let net = 62;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.rules = Some(catch_all(4, 100, "idle_timeout = \"200ms\""));
    o.extra = format!(
        "[[sources]]\nname = \"ip1\"\nip = \"{}\"\nweight = 3\n[[sources]]\nname = \"ip2\"\nip = \"{}\"\nweight = 1\n",
        ip(net, 10),
        ip(net, 11)
    );
    let h = Harness::start(hosted(net, 10), o).await;
    let rcpts: Vec<String> = (0..400).map(|i| format!("u{i}@d{}.test", i % 10)).collect();
    inject_many(&h, &rcpts).await;
    let txns = mx.wait_transactions(400, WAIT).await;
    let mut by_ip: HashMap<String, usize> = HashMap::new();
    for t in &txns {
        *by_ip.entry(t.peer.ip().to_string()).or_default() += 1;
    }
    let a = by_ip.get(&ip(net, 10).to_string()).copied().unwrap_or(0) as f64 / 400.0;
    let b = by_ip.get(&ip(net, 11).to_string()).copied().unwrap_or(0) as f64 / 400.0;
    assert!((a - 0.75).abs() <= 0.03, "ip1 share {a}");
    assert!((b - 0.25).abs() <= 0.03, "ip2 share {b}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_421_makes_the_whole_path_wait_and_backoff_rules_apply() {
    let net = 63;
    let rules = r#"
[[rule]]
name = "yahoo"
mx = ["*.yahoo.test"]
max_connections = 4
messages_per_connection = 10
fallback_on_421 = false
retry = ["1m"]

[[rule]]
name = "default"
mx = ["*"]
max_connections = 4
messages_per_connection = 10

[[backoff]]
name = "ts01"
pattern = '\[TS0[1-3]\]'
action = "backoff"
factor = 0.25
duration = "30m"
"#;
    let greylist = MxScript {
        behaviour: Behaviour::RefuseRcpt(
            421,
            "4.7.0 [TS01] Messages from 1.2.3.4 temporarily deferred".into(),
        ),
        ..Default::default()
    };
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, greylist).await;
    let dns = DnsBuilder::new()
        .mx("y.test", 10, "mta1.yahoo.test")
        .a("mta1.yahoo.test", ip(net, 2));
    let mut o = Opts::new(net);
    o.manual_clock = true;
    o.rules = Some(rules.to_string());
    let mut h = Harness::start(dns, o).await;
    let rcpts: Vec<String> = (0..20).map(|i| format!("u{i}@y.test")).collect();
    inject_many(&h, &rcpts).await;
    let ev = h
        .wait_event("a TS01 deferral", |e| e.event == "deferred")
        .await;
    assert!(ev.response.as_deref().unwrap().contains("TS01"));
    // every queued delivery is deferred after the first 421: one connection, one attempt
    for _ in 0..19 {
        h.wait_event("deferral", |e| e.event == "deferred").await;
    }
    // only the transactions already under way on the (at most 4) open connections saw it
    assert!(mx.rcpt_attempts().len() <= 4, "{:?}", mx.rcpt_attempts());
    let path = |q: &serde_json::Value| {
        q["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["rule"] == "yahoo")
            .expect("yahoo path")
            .clone()
    };
    let (_, q) = http(h.http(), "GET", "/api/v1/queues", None, None).await;
    let p = path(&q);
    assert_eq!(p["backoff"]["action"], "suspend", "{p}");
    assert_eq!(p["max_connections"], 0);
    assert!(p["state"].as_str().unwrap().contains("TS01"), "{p}");
    // after the path-wide wait (1 min) it resumes at the backoff rule's 25 %
    h.advance(Duration::from_secs(61));
    h.wait_event("retry after the wait", |e| e.event == "deferred")
        .await;
    let (_, q) = http(h.http(), "GET", "/api/v1/queues", None, None).await;
    let p = path(&q);
    assert_eq!(
        p["backoff"]["action"], "suspend",
        "deferred again by another 421: {p}"
    );
    assert!(p["backoff"]["hits"].as_u64().unwrap() >= 2, "{p}");
    assert!(
        (p["backoff"]["resume_factor"].as_f64().unwrap() - 0.25).abs() < 1e-9,
        "{p}"
    );

    // manual suspension and resume by path id
    let id = p["id"].as_str().unwrap().to_string();
    let (c, _) = http(
        h.http(),
        "POST",
        &format!("/api/v1/paths/{id}/suspend"),
        None,
        None,
    )
    .await;
    assert_eq!(c, 200);
    let (_, q) = http(h.http(), "GET", "/api/v1/queues", None, None).await;
    assert!(
        q["paths"][0]["state"]
            .as_str()
            .unwrap()
            .contains("suspended by an operator"),
        "{q}"
    );
    let (c, _) = http(h.http(), "POST", "/api/v1/paths/nope/resume", None, None).await;
    assert_eq!(c, 404);
    h.shutdown().await;
}

#[tokio::test]
async fn a_slow_destination_does_not_delay_others() {
    let net = 64;
    let _stall = FakeMx::start(
        ipa(net, 3),
        MX_PORT,
        MxScript {
            behaviour: Behaviour::Stall,
            ..Default::default()
        },
    )
    .await;
    let good = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let dns = DnsBuilder::new()
        .mx("slow.test", 10, "mx.slow.test")
        .a("mx.slow.test", ip(net, 3))
        .mx("a.test", 10, "mx.a.test")
        .a("mx.a.test", ip(net, 2));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    let rcpts: Vec<String> = (0..50)
        .map(|i| format!("s{i}@slow.test"))
        .chain((0..5).map(|i| format!("a{i}@a.test")))
        .collect();
    inject_many(&h, &rcpts).await;
    // a.test is delivered while slow.test's connection hangs in its greeting
    h.wait_for("delivered", "a4@a.test").await;
    assert_eq!(good.transactions().len(), 5);
    h.shutdown().await;
}

#[tokio::test]
async fn rules_reload_refuses_a_broken_file_and_keeps_the_running_rules() {
    let net = 65;
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.rules = Some(catch_all(2, 5, ""));
    let h = Harness::start(hosted(net, 1), o).await;
    let path = h.dir.path().join("rules/mx-rules.toml");
    std::fs::write(&path, "[[rule]]\nname = \"default\"\nmx = [\"*\"]\nmax_connections = -1\nmessages_per_connection = 5\n").unwrap();
    let (c, v) = http(h.http(), "POST", "/api/v1/rules/reload", None, None).await;
    assert_eq!(c, 422);
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("mx-rules.toml:4: rule[0].max_connections"),
        "{msg}"
    );
    assert_eq!(h.engine().scheduler().rules().rules[0].max_connections, 2);
    std::fs::write(&path, catch_all(6, 5, "")).unwrap();
    let (c, v) = http(h.http(), "POST", "/api/v1/rules/reload", None, None).await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(h.engine().scheduler().rules().rules[0].max_connections, 6);
    h.shutdown().await;
}

#[tokio::test]
async fn a_warming_ip_keeps_to_its_daily_cap_and_overflows_to_warm_ips() {
    let net = 66;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    o.rules = Some(catch_all(4, 100, "idle_timeout = \"200ms\""));
    o.extra = format!(
        "[[sources]]\nname = \"warm\"\nip = \"{}\"\n[[sources]]\nname = \"new\"\nip = \"{}\"\n[[sources.warmup]]\nlevel = \"slow\"\ndaily_cap = 5\n[[sources.warmup]]\nlevel = \"normal\"\ndaily_cap = 1000\n",
        ip(net, 10),
        ip(net, 11)
    );
    let mut h = Harness::start(hosted(net, 4), o).await;
    let rcpts: Vec<String> = (0..40).map(|i| format!("u{i}@d{}.test", i % 4)).collect();
    inject_many(&h, &rcpts).await;
    let txns = mx.wait_transactions(40, WAIT).await;
    let from_new = txns.iter().filter(|t| t.peer.ip() == ipa(net, 11)).count();
    assert_eq!(
        from_new, 5,
        "the warming IP sends its daily cap, the rest overflows"
    );
    let (_, v) = http(h.http(), "GET", "/api/v1/level", None, None).await;
    let w = &v["warmup"][0];
    assert_eq!(
        (w["source"].as_str(), w["day"].as_u64(), w["level"].as_str()),
        (Some("new"), Some(1), Some("slow")),
        "{v}"
    );
    // a clean day: the schedule moves to day 2 (normal, cap 1000)
    h.advance(Duration::from_secs(86_400));
    inject_many(&h, &["next@d0.test".to_string()]).await;
    h.wait_for("delivered", "next@d0.test").await;
    let (_, v) = http(h.http(), "GET", "/api/v1/level", None, None).await;
    assert_eq!(v["warmup"][0]["day"], 2, "{v}");
    assert_eq!(v["warmup"][0]["level"], "normal");
    h.shutdown().await;
}

#[tokio::test]
async fn warm_up_progress_survives_a_restart() {
    let net = 67;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    o.rules = Some(catch_all(4, 100, "idle_timeout = \"200ms\""));
    o.extra = format!(
        "[[sources]]\nname = \"warm\"\nip = \"{}\"\n[[sources]]\nname = \"new\"\nip = \"{}\"\n[[sources.warmup]]\nlevel = \"slow\"\ndaily_cap = 5\n[[sources.warmup]]\nlevel = \"normal\"\ndaily_cap = 1000\n[[sources.warmup]]\nlevel = \"boost\"\ndaily_cap = 100000\n",
        ip(net, 10),
        ip(net, 11)
    );
    let mut h = Harness::start(hosted(net, 4), o).await;
    let rcpts: Vec<String> = (0..10).map(|i| format!("u{i}@d{}.test", i % 4)).collect();
    inject_many(&h, &rcpts).await;
    mx.wait_transactions(10, WAIT).await;
    // a clean day 1, then day 2 starts with one delivery
    h.advance(Duration::from_secs(86_400));
    inject_many(&h, &["next@d0.test".to_string()]).await;
    h.wait_for("delivered", "next@d0.test").await;
    let (_, before) = http(h.http(), "GET", "/api/v1/level", None, None).await;
    assert_eq!(before["warmup"][0]["day"], 2, "{before}");
    h.restart().await;
    let (_, after) = http(h.http(), "GET", "/api/v1/level", None, None).await;
    let keys = ["source", "day", "level", "daily_cap", "sent_today"];
    for k in keys {
        assert_eq!(
            after["warmup"][0][k], before["warmup"][0][k],
            "{k}: {before} then {after}"
        );
    }
    assert_eq!(after["warmup"][0]["level"], "normal");
    h.shutdown().await;
}
