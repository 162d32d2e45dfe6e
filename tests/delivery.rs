//! Delivery core, end to end: real SMTP to fake MX hosts on loopback, real DNS from an
//! in-process authority. Each test owns 127.N.0.0/24.

mod common;

use common::dns::DnsBuilder;
use common::harness::{ip, ipa, Harness, Opts, MX_PORT};
use common::mx::{Behaviour, FakeMx, MxScript};
use sluice::verp::Verp;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn two_mx(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .mx("a.test", 20, "mx2.a.test")
        .a("mx1.a.test", ip(net, 2))
        .a("mx2.a.test", ip(net, 3))
}

async fn mx(net: u8, host: u8, script: MxScript) -> FakeMx {
    FakeMx::start(ipa(net, host), MX_PORT, script).await
}

fn verp() -> Verp {
    Verp::new("fb.sluice.test", "b", "test-secret-0123456789")
}

#[tokio::test]
async fn delivers_to_preferred_mx_with_verp_sender() {
    let net = 10;
    let mx1 = mx(net, 2, MxScript::default()).await;
    let mx2 = mx(net, 3, MxScript::default()).await;
    let mut h = Harness::start(two_mx(net), Opts::new(net)).await;
    let r = h.inject(&["ana@a.test"]).await;
    let id = r["messages"][0]["id"].as_str().unwrap().to_string();
    let envelope = r["messages"][0]["envelope_from"]
        .as_str()
        .unwrap()
        .to_string();

    let ev = h.wait_for("delivered", "ana@a.test").await;
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert_eq!(ev.mx.as_deref(), Some("mx1.a.test"));
    assert_eq!(ev.ip.as_deref(), Some("127.10.0.2"));
    assert_eq!(ev.code, Some(250));
    assert_eq!(ev.campaign.as_deref(), Some("spring"));
    assert_eq!(ev.attempt, Some(1));
    assert_eq!(ev.tls.as_deref(), Some("none"));

    let txns = mx1.wait_transactions(1, WAIT).await;
    assert!(mx2.transactions().is_empty(), "backup MX must not be used");
    let t = &txns[0];
    assert_eq!(t.mail_from, envelope);
    assert_eq!(t.rcpt_to, vec!["ana@a.test".to_string()]);
    assert_eq!(t.helo, "sluice.test");
    assert_eq!(
        sluice::verp::id_str(verp().decode(&t.mail_from).unwrap()),
        id
    );
    let data = String::from_utf8_lossy(&t.data);
    assert!(
        data.contains("From: Shop <news@shop.test>"),
        "From untouched: {data}"
    );
    assert!(data.contains("Message-ID: <"), "Message-ID added: {data}");
    assert!(
        data.contains("\r\n.leading dot line\r\n"),
        "dot-stuffing round trip: {data}"
    );

    let (code, v) = common::harness::http(
        h.http(),
        "GET",
        &format!("/api/v1/messages/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["state"], "delivered");
    assert_eq!(v["attempts"][0]["code"], 250);

    // the event log on disk has the same line
    h.shutdown().await;
}

#[tokio::test]
async fn falls_back_to_backup_mx_when_primary_refuses_connections() {
    let net = 11;
    // nothing listens on mx1 (127.11.0.2): connection refused
    let mx2 = mx(net, 3, MxScript::default()).await;
    let mut h = Harness::start(two_mx(net), Opts::new(net)).await;
    h.inject(&["bo@a.test"]).await;
    let ev = h.wait_for("delivered", "bo@a.test").await;
    assert_eq!(ev.mx.as_deref(), Some("mx2.a.test"));
    assert_eq!(mx2.wait_transactions(1, WAIT).await.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn falls_back_on_421_greeting() {
    let net = 12;
    let mx1 = mx(
        net,
        2,
        MxScript {
            behaviour: Behaviour::Greet421,
            ..Default::default()
        },
    )
    .await;
    let mx2 = mx(net, 3, MxScript::default()).await;
    let mut h = Harness::start(two_mx(net), Opts::new(net)).await;
    h.inject(&["cy@a.test"]).await;
    let ev = h.wait_for("delivered", "cy@a.test").await;
    assert_eq!(ev.mx.as_deref(), Some("mx2.a.test"));
    assert_eq!(mx1.connections().len(), 1, "primary was tried first");
    assert!(mx1.transactions().is_empty());
    assert_eq!(mx2.transactions().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn falls_back_on_4xx_to_mail_and_on_a_stalled_primary() {
    let net = 13;
    let mx1 = mx(
        net,
        2,
        MxScript {
            mail_reply: Some((451, "4.7.1 try later".into())),
            ..Default::default()
        },
    )
    .await;
    let mx2 = mx(net, 3, MxScript::default()).await;
    let dns = two_mx(net)
        .mx("b.test", 10, "mx1.b.test")
        .mx("b.test", 20, "mx2.a.test")
        .a("mx1.b.test", ip(net, 4));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    h.inject(&["di@a.test"]).await;
    let ev = h.wait_for("delivered", "di@a.test").await;
    assert_eq!(ev.mx.as_deref(), Some("mx2.a.test"));
    assert_eq!(mx1.connections().len(), 1);

    // a primary that accepts TCP but never answers: the command timeout moves on
    let stall = mx(
        net,
        4,
        MxScript {
            behaviour: Behaviour::Stall,
            ..Default::default()
        },
    )
    .await;
    h.inject(&["ed@b.test"]).await;
    let ev = h.wait_for("delivered", "ed@b.test").await;
    assert_eq!(stall.connections().len(), 1);
    assert_eq!(ev.mx.as_deref(), Some("mx2.a.test"));
    assert_eq!(mx2.transactions().len(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn implicit_mx_uses_the_domains_address() {
    let net = 14;
    let host = mx(net, 2, MxScript::default()).await;
    let dns = DnsBuilder::new().a("plain.test", ip(net, 2));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    h.inject(&["fa@plain.test"]).await;
    let ev = h.wait_for("delivered", "fa@plain.test").await;
    assert_eq!(ev.mx.as_deref(), Some("plain.test"));
    assert_eq!(host.wait_transactions(1, WAIT).await.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_without_connecting() {
    let net = 15;
    let host = mx(net, 2, MxScript::default()).await;
    let dns = DnsBuilder::new()
        .null_mx("nomail.test")
        .a("nomail.test", ip(net, 2));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    h.inject(&["ga@nomail.test", "ha@missing.test"]).await;
    let ev = h.wait_for("bounced", "ga@nomail.test").await;
    assert_eq!(ev.code, Some(556));
    assert_eq!(ev.enhanced.as_deref(), Some("5.1.10"));
    assert!(ev.mx.is_none());
    let ev = h.wait_for("bounced", "ha@missing.test").await;
    assert_eq!(ev.enhanced.as_deref(), Some("5.1.2"));
    assert!(ev.response.as_deref().unwrap_or("").contains("NXDOMAIN"));
    assert!(host.connections().is_empty(), "no connection for null MX");
    h.shutdown().await;
}

#[tokio::test]
async fn dns_failure_defers() {
    let net = 16;
    // a domain outside the authority's zone gets REFUSED: a temporary DNS failure
    let mut h = Harness::start(DnsBuilder::new(), Opts::new(net)).await;
    h.inject(&["ia@elsewhere.example"]).await;
    let ev = h.wait_for("deferred", "ia@elsewhere.example").await;
    assert_eq!(ev.code, Some(451));
    assert!(ev.next_attempt.is_some());
    h.shutdown().await;
}

#[tokio::test]
async fn permanent_rcpt_refusal_bounces_and_others_still_deliver() {
    let net = 17;
    let script = MxScript {
        rcpt_replies: vec![(
            "bad@".into(),
            550,
            "5.1.1 <bad@a.test>: User unknown".into(),
        )],
        ..Default::default()
    };
    let mx1 = mx(net, 2, script).await;
    let mut h = Harness::start(two_mx(net), Opts::new(net)).await;
    h.inject(&["bad@a.test", "good@a.test"]).await;
    let ev = h.wait_for("bounced", "bad@a.test").await;
    assert_eq!(ev.code, Some(550));
    assert_eq!(ev.enhanced.as_deref(), Some("5.1.1"));
    assert!(ev.response.as_deref().unwrap().contains("User unknown"));
    h.wait_for("delivered", "good@a.test").await;
    assert_eq!(mx1.transactions().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn temporary_failure_retries_on_schedule_then_delivers() {
    let net = 18;
    let mx1 = mx(
        net,
        2,
        MxScript {
            fail_first_rcpt: 1,
            ..Default::default()
        },
    )
    .await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    let mut h = Harness::start(two_mx(net), o).await;
    let r = h.inject(&["jo@a.test"]).await;
    let id = r["messages"][0]["id"].as_str().unwrap().to_string();
    let ev = h.wait_for("deferred", "jo@a.test").await;
    assert_eq!(ev.code, Some(451));
    assert_eq!(ev.attempt, Some(1));
    let (_, v) = common::harness::http(
        h.http(),
        "GET",
        &format!("/api/v1/messages/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(v["state"], "deferred");
    // Not yet due after 50 s (retry is 1m ± 10 %)...
    h.advance(Duration::from_secs(50));
    tokio::task::yield_now().await;
    assert!(mx1.transactions().is_empty());
    // ...due after 70 s.
    h.advance(Duration::from_secs(20));
    let ev = h.wait_for("delivered", "jo@a.test").await;
    assert_eq!(ev.attempt, Some(2));
    assert_eq!(mx1.transactions().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn deliveries_expire_instead_of_waiting_forever() {
    let net = 19;
    let _mx1 = mx(
        net,
        2,
        MxScript {
            behaviour: Behaviour::RefuseRcpt(451, "4.2.1 busy".into()),
            ..Default::default()
        },
    )
    .await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    let mut h = Harness::start(two_mx(net), o).await;
    let body = serde_json::json!({
        "campaign": "flash-sale", "expires_in": "90s",
        "recipients": ["ke@a.test"], "content": common::harness::message("sale"),
    });
    let (code, _) = common::harness::http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(code, 202);
    h.wait_for("deferred", "ke@a.test").await;
    h.advance(Duration::from_secs(66)); // retry due (≤ 66 s): deferred again, next retry 5 m > expiry
    h.wait_for("deferred", "ke@a.test").await;
    h.advance(Duration::from_secs(30)); // past 90 s: expires while waiting for the retry
    let ev = h.wait_for("expired", "ke@a.test").await;
    assert_eq!(ev.campaign.as_deref(), Some("flash-sale"));
    assert!(ev.response.as_deref().unwrap().contains("4.2.1"));
    assert_eq!(h.engine().scheduler().totals().queued, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn starttls_failure_is_remembered_and_next_attempt_goes_plain() {
    let net = 20;
    let mx1 = mx(
        net,
        2,
        MxScript {
            starttls: true,
            ..Default::default()
        },
    )
    .await;
    let dns = DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2));
    let mut o = Opts::new(net);
    o.manual_clock = true;
    let mut h = Harness::start(dns, o).await;
    h.inject(&["lu@a.test"]).await;
    let ev = h.wait_for("deferred", "lu@a.test").await;
    assert!(
        ev.response.as_deref().unwrap().contains("TLS"),
        "{:?}",
        ev.response
    );
    h.advance(Duration::from_secs(70));
    let ev = h.wait_for("delivered", "lu@a.test").await;
    assert_eq!(ev.tls.as_deref(), Some("none"));
    assert_eq!(mx1.transactions().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn transactional_mail_goes_ahead_of_bulk() {
    let net = 21;
    let mx1 = mx(net, 2, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.rules = Some(common::harness::catch_all(1, 100, ""));
    let mut h = Harness::start(two_mx(net), o).await;
    let (code, _) = common::harness::http(h.http(), "POST", "/api/v1/pause", None, None).await;
    assert_eq!(code, 200);
    h.inject(&["b1@a.test", "b2@a.test", "b3@a.test"]).await;
    let body = serde_json::json!({
        "priority": "transactional", "recipients": ["reset@a.test"],
        "content": common::harness::message("password reset"),
    });
    let (code, _) = common::harness::http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(code, 202);
    common::harness::http(h.http(), "POST", "/api/v1/resume", None, None).await;
    let txns = mx1.wait_transactions(4, WAIT).await;
    assert_eq!(txns[0].rcpt_to, vec!["reset@a.test".to_string()]);
    assert_eq!(txns[1].rcpt_to, vec!["b1@a.test".to_string()]);
    h.wait_for("delivered", "b3@a.test").await;
    h.shutdown().await;
}

#[tokio::test]
async fn one_connection_carries_several_deliveries() {
    let net = 22;
    let mx1 = mx(net, 2, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.rules = Some(common::harness::catch_all(1, 3, ""));
    let mut h = Harness::start(two_mx(net), o).await;
    common::harness::http(h.http(), "POST", "/api/v1/pause", None, None).await;
    let rcpts: Vec<String> = (0..5).map(|i| format!("r{i}@a.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let r = h.inject(&refs).await;
    common::harness::http(h.http(), "POST", "/api/v1/resume", None, None).await;
    let txns = mx1.wait_transactions(5, WAIT).await;
    // 5 messages, 3 per connection → 2 connections
    assert_eq!(mx1.connections().len(), 2);
    // each recipient has its own VERP sender
    let senders: std::collections::HashSet<_> = txns.iter().map(|t| t.mail_from.clone()).collect();
    assert_eq!(senders.len(), 5);
    for m in r["messages"].as_array().unwrap() {
        let env = m["envelope_from"].as_str().unwrap();
        assert_eq!(
            sluice::verp::id_str(verp().decode(env).unwrap()),
            m["id"].as_str().unwrap()
        );
    }
    h.wait_for("delivered", "r4@a.test").await;
    h.shutdown().await;
}

#[tokio::test]
async fn chunking_sends_the_whole_transaction_in_one_flight() {
    let net = 23;
    // the sink offers PIPELINING and CHUNKING: MAIL, RCPT and BDAT LAST + body go in one write
    let sink = sluice::sink::Sink::start(
        std::net::SocketAddr::new(ipa(net, 2), MX_PORT),
        Default::default(),
    )
    .await
    .unwrap();
    let dns = DnsBuilder::new()
        .mx("c.test", 10, "mx.c.test")
        .a("mx.c.test", ip(net, 2));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    let rcpts: Vec<String> = (0..5).map(|i| format!("c{i}@c.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    h.inject(&refs).await;
    for r in &rcpts {
        h.wait_for("delivered", r).await;
    }
    assert_eq!(sink.messages(), 5);
    // the body arrived byte for byte (no dot-stuffing with BDAT): same size as the stored one
    assert!(sink.stats.bytes.load(std::sync::atomic::Ordering::Relaxed) > 5 * 100);
    h.shutdown().await;
}

#[tokio::test]
async fn ipv4_only_keeps_mail_off_ipv6_mx_addresses() {
    let net = 24;
    // the only MX address is IPv6 (::1); the source is IPv4-only
    let v6 = FakeMx::start("::1".parse().unwrap(), MX_PORT, MxScript::default()).await;
    let dns = DnsBuilder::new()
        .mx("six.test", 10, "mx.six.test")
        .aaaa("mx.six.test", "::1".parse().unwrap());
    let mut o = Opts::new(net);
    o.extra = "[[sources]]\nname = \"v4\"\nipv4_only = true\n".into();
    let mut h = Harness::start(dns, o).await;
    h.inject(&["x@six.test"]).await;
    let ev = h.wait_for("deferred", "x@six.test").await;
    assert!(
        ev.response
            .as_deref()
            .unwrap()
            .contains("no usable MX address"),
        "{:?}",
        ev.response
    );
    assert!(v6.connections().is_empty());
    h.shutdown().await;
    // without ipv4_only the same mail goes over IPv6
    let dns = DnsBuilder::new()
        .mx("six.test", 10, "mx.six.test")
        .aaaa("mx.six.test", "::1".parse().unwrap());
    let mut h = Harness::start(dns, Opts::new(net + 1)).await;
    h.inject(&["y@six.test"]).await;
    let ev = h.wait_for("delivered", "y@six.test").await;
    assert_eq!(ev.ip.as_deref(), Some("::1"));
    assert_eq!(v6.transactions().len(), 1);
    h.shutdown().await;
}
