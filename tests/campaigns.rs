//! Campaign controls: pause / resume / cancel, rate cap, counts, and the circuit breaker.

mod common;

use common::dns::DnsBuilder;
use common::harness::{http, ip, ipa, message, Harness, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use serde_json::json;
use std::time::Duration;

fn dns(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

async fn inject(h: &Harness, campaign: &str, rcpts: &[String]) {
    inject_for(h, campaign, None, rcpts).await
}

async fn inject_for(h: &Harness, campaign: &str, tenant: Option<&str>, rcpts: &[String]) {
    let body = json!({"campaign": campaign, "tenant": tenant, "recipients": rcpts,
        "content": message("x")});
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 202, "{v}");
}

async fn campaign(h: &Harness, name: &str) -> serde_json::Value {
    let (_, v) = http(h.http(), "GET", "/api/v1/campaigns", None, None).await;
    v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["campaign"] == name)
        .cloned()
        .unwrap_or_default()
}

/// A fake MX that refuses the "dead" addresses for good, and an engine whose breaker judges
/// after `min` outcomes at a 20 % hard-bounce limit.
async fn bad_list_engine(net: u8, min: u32) -> (FakeMx, Harness) {
    let script = MxScript {
        rcpt_replies: vec![("dead".into(), 550, "5.1.1 User unknown".into())],
        ..Default::default()
    };
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, script).await;
    let mut o = Opts::new(net);
    o.extra = format!("[campaigns]\nbreaker_min_deliveries = {min}\nmax_hard_bounce_ratio = 0.2\n");
    o.rules = Some(common::harness::catch_all(1, 100, ""));
    (mx, Harness::start(dns(net), o).await)
}

/// `n` recipients, every other one a dead address (a bought list).
fn half_dead(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("dead{prefix}{i}@a.test")
            } else {
                format!("ok{prefix}{i}@a.test")
            }
        })
        .collect()
}

#[tokio::test]
async fn pause_resume_and_cancel_a_campaign() {
    let net = 85;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let (c, _) = http(
        h.http(),
        "POST",
        "/api/v1/campaigns/spring/pause",
        None,
        None,
    )
    .await;
    assert_eq!(c, 200);
    let spring: Vec<String> = (0..5).map(|i| format!("s{i}@a.test")).collect();
    let other: Vec<String> = (0..3).map(|i| format!("o{i}@a.test")).collect();
    inject(&h, "spring", &spring).await;
    inject(&h, "other", &other).await;
    // the other campaign goes through; the paused one waits
    h.wait_for("delivered", "o2@a.test").await;
    h.wait_for("delivered", "o0@a.test").await;
    h.wait_for("delivered", "o1@a.test").await;
    assert!(mx
        .transactions()
        .iter()
        .all(|t| !t.rcpt_to[0].starts_with('s')));
    let c = campaign(&h, "spring").await;
    assert_eq!(c["state"], "paused");
    assert_eq!(c["queued"], 5);
    assert_eq!(h.engine().scheduler().totals().parked, 5);
    http(
        h.http(),
        "POST",
        "/api/v1/campaigns/spring/resume",
        None,
        None,
    )
    .await;
    for r in &spring[..2] {
        h.wait_for("delivered", r).await;
    }
    // cancel what is left of a second paused campaign
    http(
        h.http(),
        "POST",
        "/api/v1/campaigns/autumn/pause",
        None,
        None,
    )
    .await;
    let autumn: Vec<String> = (0..4).map(|i| format!("a{i}@a.test")).collect();
    inject(&h, "autumn", &autumn).await;
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/campaigns/autumn/cancel",
        None,
        None,
    )
    .await;
    assert_eq!(c, 200, "{v}");
    for r in &autumn {
        h.wait_for("cancelled", r).await;
    }
    let c = campaign(&h, "autumn").await;
    assert_eq!(
        (
            c["state"].as_str(),
            c["cancelled"].as_u64(),
            c["queued"].as_u64()
        ),
        (Some("cancelled"), Some(4), Some(0))
    );
    // a cancelled campaign takes no new mail
    let body =
        json!({"campaign": "autumn", "recipients": ["late@a.test"], "content": message("x")});
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cancelled"), "{v}");
    h.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_pauses_a_campaign_with_a_bad_list() {
    let (_mx, mut h) = bad_list_engine(86, 10).await;
    // a bought list: half the addresses are dead
    inject(&h, "bought", &half_dead("", 60)).await;
    let ev = h
        .wait_event("breaker", |e| e.event == "campaign_paused")
        .await;
    assert_eq!(ev.campaign.as_deref(), Some("bought"));
    assert!(
        ev.message.as_deref().unwrap().contains("hard-bounce ratio"),
        "{:?}",
        ev.message
    );
    let c = campaign(&h, "bought").await;
    assert_eq!(c["state"], "paused");
    let done = c["delivered"].as_u64().unwrap() + c["bounced"].as_u64().unwrap();
    assert!(done < 60, "the rest of the list waits: {c}");
    let (_, m) = common::harness::http_raw(h.http(), "GET", "/metrics", None, None).await;
    assert!(String::from_utf8_lossy(&m).contains("sluice_campaign_breaker_trips_total 1"));
    h.shutdown().await;
}

#[tokio::test]
async fn campaign_rate_cap_spreads_its_deliveries() {
    let net = 87;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    let mut h = Harness::start(dns(net), o).await;
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/campaigns/slow/rate",
        Some(r#"{"messages_per_hour": 360}"#),
        None,
    )
    .await;
    assert_eq!(c, 200, "{v}");
    let rcpts: Vec<String> = (0..5).map(|i| format!("r{i}@a.test")).collect();
    inject(&h, "slow", &rcpts).await;
    h.wait_event("first", |e| e.event == "delivered").await;
    for _ in 0..3 {
        h.advance(Duration::from_secs(10));
        h.wait_event("next", |e| e.event == "delivered").await;
    }
    assert_eq!(mx.transactions().len(), 4, "one every 10 s of clock time");
    h.shutdown().await;
}

#[tokio::test]
async fn a_campaigns_counts_survive_a_restart() {
    let net = 88;
    let mx = FakeMx::start(
        ipa(net, 2),
        MX_PORT,
        MxScript {
            rcpt_replies: vec![("gone".into(), 550, "5.1.1 user unknown".into())],
            ..MxScript::default()
        },
    )
    .await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let rcpts: Vec<String> = (0..4)
        .map(|i| format!("r{i}@a.test"))
        .chain(["gone@a.test".to_string()])
        .collect();
    inject(&h, "winter", &rcpts).await;
    for r in &rcpts[..4] {
        h.wait_for("delivered", r).await;
    }
    h.wait_for("bounced", "gone@a.test").await;
    let before = campaign(&h, "winter").await;
    assert_eq!(
        (before["accepted"].as_u64(), before["delivered"].as_u64()),
        (Some(5), Some(4)),
        "{before}"
    );
    h.restart().await;
    let after = campaign(&h, "winter").await;
    for k in ["accepted", "delivered", "bounced", "hard_bounces", "queued"] {
        assert_eq!(after[k], before[k], "{k}: {before} then {after}");
    }
    drop(mx);
    h.shutdown().await;
}

/// A bought list spread over many small campaigns (each under the breaker's minimum) is
/// judged as the tenant's: the tenant is paused, and with it every campaign of it.
#[tokio::test]
async fn the_tenant_breaker_catches_a_list_split_into_small_campaigns() {
    let (_mx, mut h) = bad_list_engine(89, 20).await;
    // eight campaigns of 8 recipients, half dead: none reaches 20 outcomes on its own
    for c in 0..8 {
        let rcpts = half_dead(&format!("{c}x"), 8);
        inject_for(&h, &format!("small{c}"), Some("acme"), &rcpts).await;
    }
    let ev = h
        .wait_event("tenant breaker", |e| e.event == "tenant_paused")
        .await;
    assert_eq!(ev.tenant.as_deref(), Some("acme"));
    assert!(
        ev.message
            .as_deref()
            .unwrap_or("")
            .contains("hard-bounce ratio"),
        "{:?}",
        ev.message
    );
    let (_, v) = http(h.http(), "GET", "/api/v1/campaigns", None, None).await;
    let acme = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .cloned()
        .unwrap_or_default();
    assert_eq!(acme["state"], "paused", "{v}");
    // no single campaign tripped its own breaker
    for c in v["campaigns"].as_array().unwrap() {
        assert_eq!(c["state"], "active", "{c}");
    }
    let done: u64 = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["delivered"].as_u64().unwrap_or(0) + c["bounced"].as_u64().unwrap_or(0))
        .sum();
    assert!(done < 64, "the rest of the tenant's mail waits: {v}");
    h.shutdown().await;
}
