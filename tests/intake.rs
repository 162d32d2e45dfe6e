//! Intake: HTTP API and SMTP submission, bad input, relay control, auth.

mod common;

use common::dns::DnsBuilder;
use common::harness::{http, http_raw, ip, ipa, message, Harness, Opts, SmtpClient, MX_PORT};
use common::mx::{FakeMx, MxScript};
use serde_json::json;
use std::time::Duration;

fn dns(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

async fn post(h: &Harness, body: &str) -> (u16, serde_json::Value) {
    http(h.http(), "POST", "/api/v1/messages", Some(body), None).await
}

#[tokio::test]
async fn bad_http_input_gets_clear_errors_and_queues_nothing() {
    let net = 40;
    let mut o = Opts::new(net);
    o.extra = "[intake]\nmax_message_size = 2000\nmax_request_size = 8000\n".into();
    let h = Harness::start(dns(net), o).await;

    let (c, v) = post(&h, "{not json").await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("invalid JSON"), "{v}");

    let (c, v) = post(&h, r#"{"recipients": ["a@a.test"]}"#).await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("content"), "{v}");

    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test"], "content": message("x"), "colour": 1}).to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("colour"), "{v}");

    let (c, v) = post(
        &h,
        &json!({"recipients": ["not-an-address"], "content": message("x")}).to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert_eq!(v["rejected"][0]["recipient"], "not-an-address");
    assert!(
        v["rejected"][0]["error"].as_str().unwrap().contains("@"),
        "{v}"
    );

    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test\r\nBcc: victim@x.test"], "content": message("x")})
            .to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("CR or LF"),
        "{v}"
    );

    let big = format!("{}{}", message("big"), "y".repeat(2100));
    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test"], "content": big}).to_string(),
    )
    .await;
    assert_eq!(c, 413);
    assert!(
        v["error"].as_str().unwrap().contains("max_message_size"),
        "{v}"
    );

    let huge = "z".repeat(9000);
    let (c, raw) = http_raw(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(huge.as_bytes()),
        None,
    )
    .await;
    assert_eq!(c, 413, "{}", String::from_utf8_lossy(&raw));

    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test"], "content": "Subject: no from\r\n\r\nbody"}).to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("From"), "{v}");

    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test"], "content": message("x"), "priority": "urgent"})
            .to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("priority"), "{v}");

    let (c, v) = post(
        &h,
        &json!({"recipients": ["a@a.test"], "content": message("x"), "expires_in": "soon"})
            .to_string(),
    )
    .await;
    assert_eq!(c, 400);
    assert!(v["error"].as_str().unwrap().contains("expires_in"), "{v}");

    // nothing of the above reached the queue or the spool
    assert_eq!(h.engine().scheduler().totals().queued, 0);
    let (c, v) = http(h.http(), "GET", "/api/v1/status", None, None).await;
    assert_eq!(c, 200);
    assert_eq!(v["totals"]["queued"], 0);

    // a mixed request: the good recipient is accepted, the bad one reported
    let (c, v) = post(&h, &json!({"recipients": ["ok@a.test", {"email": "bad@@a.test", "id": "crm-1"}], "content": message("x")}).to_string()).await;
    assert_eq!(c, 202, "{v}");
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"][0]["recipient"], "bad@@a.test");
    h.shutdown().await;
}

#[tokio::test]
async fn api_token_is_required_when_configured() {
    let net = 41;
    let mut o = Opts::new(net);
    o.extra = "[api]\ntoken = \"s3cret-token-0123456789\"\n".into();
    let h = Harness::start(dns(net), o).await;
    let body = json!({"recipients": ["a@a.test"], "content": message("x")}).to_string();
    let (c, _) = http(h.http(), "POST", "/api/v1/messages", Some(&body), None).await;
    assert_eq!(c, 401);
    let (c, _) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body),
        Some("wrong-token-000000000"),
    )
    .await;
    assert_eq!(c, 401);
    let (c, _) = http(h.http(), "GET", "/api/v1/status", None, None).await;
    assert_eq!(c, 401);
    let (c, _) = http(h.http(), "GET", "/healthz", None, None).await;
    assert_eq!(c, 200);
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body),
        Some("s3cret-token-0123456789"),
    )
    .await;
    assert_eq!(c, 202, "{v}");
    h.shutdown().await;
}

#[tokio::test]
async fn recipient_ids_tenant_and_campaign_reach_events() {
    let net = 42;
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let body = json!({"campaign": "spring", "tenant": "brand-a",
        "recipients": [{"email": "x@a.test", "id": "crm-42"}], "content": message("x")});
    let (c, v) = post(&h, &body.to_string()).await;
    assert_eq!(c, 202, "{v}");
    let acc = h.wait_for("accepted", "x@a.test").await;
    assert_eq!(acc.recipient_id.as_deref(), Some("crm-42"));
    let ev = h.wait_for("delivered", "x@a.test").await;
    assert_eq!(ev.recipient_id.as_deref(), Some("crm-42"));
    assert_eq!(ev.tenant.as_deref(), Some("brand-a"));
    assert_eq!(ev.campaign.as_deref(), Some("spring"));
    assert_eq!(
        ev.envelope_from.as_deref(),
        v["messages"][0]["envelope_from"].as_str()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn event_log_lines_carry_the_contract_fields() {
    let net = 43;
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    h.inject(&["log@a.test"]).await;
    h.wait_for("delivered", "log@a.test").await;
    let path = h.dir.path().join("events.jsonl");
    h.shutdown_keep_config().await;
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered = lines
        .iter()
        .find(|v| v["event"] == "delivered")
        .expect("delivered line");
    for key in [
        "ts",
        "id",
        "campaign",
        "recipient",
        "recipient_id",
        "envelope_from",
        "event",
        "mx",
        "ip",
        "source_ip",
        "code",
        "enhanced",
        "response",
        "attempt",
    ] {
        assert!(delivered.get(key).is_some(), "missing {key} in {delivered}");
    }
    assert!(delivered["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(delivered["source_ip"], "127.0.0.1");
    assert!(lines.iter().any(|v| v["event"] == "accepted"));
}

#[tokio::test]
async fn smtp_submission_splits_recipients_and_honours_intake_headers() {
    let net = 44;
    let mx1 = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let addr = h.engine().smtp_addr().unwrap();
    let (mut c, banner) = SmtpClient::connect(addr).await;
    assert!(banner.starts_with("220 "), "{banner}");
    let ehlo = c.cmd("EHLO injector.test").await;
    assert!(
        ehlo.contains("PIPELINING") && ehlo.contains("SIZE") && ehlo.contains("8BITMIME"),
        "{ehlo}"
    );
    // pipelined envelope
    c.send("MAIL FROM:<news@shop.test>\r\nRCPT TO:<p1@a.test>\r\nRCPT TO:<p2@a.test>\r\nRCPT TO:<broken@>\r\nDATA\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("501"));
    assert!(c.reply().await.starts_with("354"));
    c.send("From: Shop <news@shop.test>\r\nSubject: hi\r\nx-job: autumn\r\nX-Sluice-Tenant: brand-b\r\n\r\nbody\r\n..dotted\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 queued as"), "{r}");
    assert!(r.contains("(2 deliveries)"), "{r}");
    let ev = h.wait_for("delivered", "p1@a.test").await;
    assert_eq!(ev.campaign.as_deref(), Some("autumn"));
    assert_eq!(ev.tenant.as_deref(), Some("brand-b"));
    h.wait_for("delivered", "p2@a.test").await;
    let txns = mx1.wait_transactions(2, Duration::from_secs(20)).await;
    let data = String::from_utf8_lossy(&txns[0].data).to_string();
    assert!(!data.to_ascii_lowercase().contains("x-job"), "{data}");
    assert!(!data.contains("X-Sluice"), "{data}");
    assert!(data.contains("\r\n.dotted\r\n"), "{data}");
    assert_ne!(txns[0].mail_from, txns[1].mail_from);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    h.shutdown().await;
}

#[tokio::test]
async fn smtp_refuses_bad_input_and_oversize() {
    let net = 45;
    let mut o = Opts::new(net);
    o.extra = "[intake]\nmax_message_size = 1000\n".into();
    let h = Harness::start(dns(net), o).await;
    let addr = h.engine().smtp_addr().unwrap();
    let (mut c, _) = SmtpClient::connect(addr).await;
    assert!(
        c.cmd("MAIL FROM:<a@b.test>").await.starts_with("503"),
        "EHLO first"
    );
    c.cmd("EHLO x.test").await;
    assert!(c.cmd("RCPT TO:<a@a.test>").await.starts_with("503"));
    assert!(c.cmd("FOO bar").await.starts_with("500"));
    assert!(c
        .cmd("MAIL FROM:<a@b.test> SIZE=5000")
        .await
        .starts_with("552"));
    assert!(c.cmd("MAIL FROM:<a@b.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("554"), "no recipients yet");
    assert!(c.cmd("RCPT TO:<a@a.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&format!(
        "From: a@b.test\r\n\r\n{}\r\n.\r\n",
        "x".repeat(1500)
    ))
    .await;
    let r = c.reply().await;
    assert!(r.starts_with("552"), "{r}");
    // a message without From:
    assert!(c.cmd("MAIL FROM:<a@b.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@a.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("550") && r.contains("From"), "{r}");
    assert_eq!(h.engine().scheduler().totals().queued, 0);
    // the session is still usable
    assert!(c.cmd("NOOP").await.starts_with("250"));
    h.shutdown().await;
}

#[tokio::test]
async fn smtp_never_relays_for_untrusted_clients() {
    let net = 46;
    let mut o = Opts::new(net);
    o.listen = "smtp_allow = [\"10.0.0.0/8\"]".into();
    let h = Harness::start(dns(net), o).await;
    let addr = h.engine().smtp_addr().unwrap();
    let (mut c, _) = SmtpClient::connect(addr).await;
    c.cmd("EHLO outsider.test").await;
    assert!(c.cmd("MAIL FROM:<spam@bad.test>").await.starts_with("250"));
    let r = c.cmd("RCPT TO:<victim@a.test>").await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(c.cmd("DATA").await.starts_with("554"));
    assert_eq!(h.engine().scheduler().totals().queued, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn back_pressure_when_the_queue_is_full() {
    let net = 47;
    let mut o = Opts::new(net);
    o.extra = "".into();
    o.delivery = String::new();
    let mut h = Harness::start(dns(net), o).await;
    // pause so nothing drains, fill to the limit configured below by restarting with it
    h.shutdown_keep_config().await;
    let cfg = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("[spool]\n", "[spool]\nmax_queued = 2\n");
    std::fs::write(&h.config_path, cfg).unwrap();
    h.restart().await;
    http(h.http(), "POST", "/api/v1/pause", None, None).await;
    h.inject(&["q1@a.test", "q2@a.test"]).await;
    let (c, v) = post(
        &h,
        &json!({"recipients": ["q3@a.test"], "content": message("x")}).to_string(),
    )
    .await;
    assert_eq!(c, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("queue is full"),
        "{v}"
    );
    let addr = h.engine().smtp_addr().unwrap();
    let (mut s, _) = SmtpClient::connect(addr).await;
    s.cmd("EHLO x.test").await;
    let r = s.cmd("MAIL FROM:<a@b.test>").await;
    assert!(r.starts_with("452"), "{r}");
    h.shutdown().await;
}

#[tokio::test]
async fn smtp_submission_accepts_bdat_chunks() {
    let net = 48;
    let mx1 = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let (mut c, _) = SmtpClient::connect(h.engine().smtp_addr().unwrap()).await;
    let ehlo = c.cmd("EHLO injector.test").await;
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    let part1 = "From: a@shop.test\r\nSubject: chunks\r\n\r\n";
    let part2 = ".not stuffed\r\nend\r\n";
    c.send(&format!(
        "MAIL FROM:<a@shop.test>\r\nRCPT TO:<bd@a.test>\r\nBDAT {}\r\n{part1}",
        part1.len()
    ))
    .await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"), "first chunk");
    c.send(&format!("BDAT {} LAST\r\n{part2}", part2.len()))
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 queued"), "{r}");
    h.wait_for("delivered", "bd@a.test").await;
    let t = mx1.wait_transactions(1, Duration::from_secs(20)).await;
    assert!(
        String::from_utf8_lossy(&t[0].data).contains("\r\n.not stuffed\r\nend"),
        "{:?}",
        String::from_utf8_lossy(&t[0].data)
    );
    // BDAT without a transaction is refused after its chunk is consumed
    c.send("BDAT 3 LAST\r\nabc").await;
    assert!(c.reply().await.starts_with("503"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    h.shutdown().await;
}
