//! Bounce qualification in events, the feedback MX (returned DSNs, ARF, auto-replies,
//! forged VERP), and quarantine transitions.

mod common;

use common::dns::DnsBuilder;
use common::harness::{http, ip, ipa, message, Harness, Opts, SmtpClient, MX_PORT};
use common::mx::{FakeMx, MxScript};
use serde_json::json;
use std::time::Duration;

fn dns(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

fn opts(net: u8) -> Opts {
    let mut o = Opts::new(net);
    o.listen = "bounce = \"127.0.0.1:0\"".into();
    o
}

async fn inject_one(h: &Harness, rcpt: &str, id: Option<&str>) -> (u16, serde_json::Value) {
    let r = match id {
        Some(id) => json!({"email": rcpt, "id": id}),
        None => json!(rcpt),
    };
    let body = json!({"campaign": "spring", "recipients": [r], "content": message("x")});
    http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await
}

async fn quarantine(h: &Harness) -> serde_json::Value {
    http(h.http(), "GET", "/api/v1/quarantine", None, None)
        .await
        .1
}

#[tokio::test]
async fn hard_bounce_quarantines_at_once_and_blocks_intake() {
    let net = 80;
    let script = MxScript {
        rcpt_replies: vec![(
            "gone@".into(),
            550,
            "5.1.1 <gone@a.test>: User is unknown".into(),
        )],
        ..Default::default()
    };
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, script).await;
    let mut h = Harness::start(dns(net), opts(net)).await;
    inject_one(&h, "gone@a.test", None).await;
    let ev = h.wait_for("bounced", "gone@a.test").await;
    assert_eq!(ev.bounce_type.as_deref(), Some("hard"));
    assert_eq!(ev.bounce_reason.as_deref(), Some("user_unknown"));
    assert_eq!(ev.bounce_source.as_deref(), Some("smtp"));
    let q = quarantine(&h).await;
    assert_eq!(q["entries"][0]["address"], "gone@a.test", "{q}");
    assert_eq!(q["entries"][0]["reason"], "user_unknown");
    // refused at intake now: HTTP and SMTP
    let (c, v) = inject_one(&h, "gone@a.test", None).await;
    assert_eq!(c, 400, "{v}");
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("quarantined"),
        "{v}"
    );
    let (mut s, _) = SmtpClient::connect(h.engine().smtp_addr().unwrap()).await;
    s.cmd("EHLO x.test").await;
    s.cmd("MAIL FROM:<a@b.test>").await;
    let r = s.cmd("RCPT TO:<gone@a.test>").await;
    assert!(r.starts_with("550") && r.contains("quarantined"), "{r}");
    // released by hand: accepted again
    let (c, _) = http(
        h.http(),
        "DELETE",
        "/api/v1/quarantine/gone@a.test",
        None,
        None,
    )
    .await;
    assert_eq!(c, 200);
    let (c, _) = inject_one(&h, "gone@a.test", None).await;
    assert_eq!(c, 202);
    h.shutdown().await;
}

#[tokio::test]
async fn soft_bounces_quarantine_at_the_third_and_reputation_never_does() {
    let net = 81;
    let script = MxScript {
        rcpt_replies: vec![
            ("full@".into(), 552, "5.2.2 User quota exceeded".into()),
            (
                "blocked@".into(),
                554,
                "5.7.9 Message not accepted for policy reasons".into(),
            ),
        ],
        ..Default::default()
    };
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, script).await;
    let mut h = Harness::start(dns(net), opts(net)).await;
    for i in 0..3 {
        let (c, v) = inject_one(&h, "full@a.test", None).await;
        assert_eq!(c, 202, "attempt {i}: {v}");
        let ev = h.wait_for("bounced", "full@a.test").await;
        assert_eq!(
            (ev.bounce_type.as_deref(), ev.bounce_reason.as_deref()),
            (Some("soft"), Some("mailbox_full"))
        );
        let q = quarantine(&h).await;
        let listed = q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == "full@a.test");
        assert_eq!(listed, i == 2, "quarantined only at the third: {q}");
    }
    let q = quarantine(&h).await;
    assert!(
        q["entries"][0]["release_at"].is_string(),
        "mailbox_full is released later: {q}"
    );
    for _ in 0..4 {
        inject_one(&h, "blocked@a.test", None).await;
        let ev = h.wait_for("bounced", "blocked@a.test").await;
        assert_eq!(ev.bounce_reason.as_deref(), Some("refused"));
    }
    let (c, _) = inject_one(&h, "blocked@a.test", None).await;
    assert_eq!(c, 202, "refused (reputation) never quarantines the address");
    h.shutdown().await;
}

fn dsn(to_verp: &str, rcpt: &str, status: &str, diag: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.remote.test\r\nTo: {to_verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"BND\"\r\n\r\n\
--BND\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.remote.test.\r\n\r\n\
--BND\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n\
Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diag}\r\n\r\n\
--BND\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{to_verp}>\r\nFrom: news@shop.test\r\nSubject: x\r\n\r\n--BND--\r\n"
    )
}

async fn send(addr: std::net::SocketAddr, rcpt: &str, data: &str) -> (String, String) {
    let (mut c, _) = SmtpClient::connect(addr).await;
    c.cmd("EHLO mx.remote.test").await;
    c.cmd("MAIL FROM:<>").await;
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !r.starts_with("250") {
        return (r, String::new());
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&format!("{data}\r\n.\r\n")).await;
    let d = c.reply().await;
    (r, d)
}

#[tokio::test]
async fn returned_dsn_is_linked_through_verp_and_forged_codes_are_refused() {
    let net = 82;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), opts(net)).await;
    let (_, v) = inject_one(&h, "later@a.test", Some("crm-7")).await;
    let id = v["messages"][0]["id"].as_str().unwrap().to_string();
    h.wait_for("delivered", "later@a.test").await;
    let verp = mx.transactions()[0].mail_from.clone();
    let fb = h.engine().bounce_addr().unwrap();

    // the remote MTA accepted, then bounced days later
    let (r, d) = send(fb, &verp, &dsn(&verp, "later@a.test", "5.1.1", "550 5.1.1 <later@a.test>: Recipient address rejected: User unknown in virtual mailbox table")).await;
    assert!(r.starts_with("250") && d.starts_with("250"), "{r} / {d}");
    let ev = h
        .wait_event("returned bounce", |e| {
            e.event == "bounced" && e.bounce_source.as_deref() == Some("returned")
        })
        .await;
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));
    assert_eq!(ev.recipient_id.as_deref(), Some("crm-7"));
    assert_eq!(ev.campaign.as_deref(), Some("spring"));
    assert_eq!(ev.bounce_reason.as_deref(), Some("user_unknown"));
    let q = quarantine(&h).await;
    assert_eq!(q["entries"][0]["address"], "later@a.test", "{q}");

    // forged or foreign addresses are refused at RCPT: no backscatter, no relay
    let forged = verp.replacen(
        &id,
        &format!("{:016x}", u64::from_str_radix(&id, 16).unwrap() ^ 1),
        1,
    );
    let (r, _) = send(fb, &forged, "x").await;
    assert!(r.starts_with("550"), "{r}");
    let (r, _) = send(fb, "someone@elsewhere.test", "x").await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let (r, _) = send(fb, "b-zz@fb.sluice.test", "x").await;
    assert!(r.starts_with("550"), "{r}");
    // postmaster is accepted; garbage content is refused clearly and nothing breaks
    let (r, d) = send(fb, "postmaster@fb.sluice.test", "\u{1}\u{2} not a message").await;
    assert!(r.starts_with("250") && d.starts_with("554"), "{r} / {d}");
    h.shutdown().await;
}

#[tokio::test]
async fn arf_complaint_quarantines_and_auto_replies_are_ignored() {
    let net = 83;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = opts(net);
    o.extra = String::new();
    let mut h = Harness::start(dns(net), o).await;
    inject_one(&h, "angry@a.test", None).await;
    inject_one(&h, "away@a.test", None).await;
    h.wait_for("delivered", "angry@a.test").await;
    h.wait_for("delivered", "away@a.test").await;
    let txns = mx.wait_transactions(2, Duration::from_secs(20)).await;
    let verp_of = |rcpt: &str| {
        txns.iter()
            .find(|t| t.rcpt_to[0] == rcpt)
            .unwrap()
            .mail_from
            .clone()
    };
    let fb = h.engine().bounce_addr().unwrap();

    let arf = format!(
        "From: feedback@fbl.provider.test\r\nTo: postmaster@fb.sluice.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"ARF\"\r\n\r\n\
--ARF\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\r\n\
--ARF\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: angry@a.test\r\n\r\n\
--ARF\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{}>\r\nFrom: news@shop.test\r\nTo: angry@a.test\r\nSubject: x\r\n\r\nhello\r\n\r\n--ARF--\r\n",
        verp_of("angry@a.test")
    );
    let (r, d) = send(fb, "postmaster@fb.sluice.test", &arf).await;
    assert!(r.starts_with("250") && d.starts_with("250"), "{r} / {d}");
    let ev = h
        .wait_event("complaint", |e| {
            e.event == "bounced" && e.bounce_reason.as_deref() == Some("complaint")
        })
        .await;
    assert_eq!(ev.recipient.as_deref(), Some("angry@a.test"));
    let q = quarantine(&h).await;
    assert!(
        q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == "angry@a.test" && e["reason"] == "complaint"),
        "{q}"
    );

    let auto = "From: away@a.test\r\nTo: x\r\nSubject: Out of Office: back Monday\r\nAuto-Submitted: auto-replied\r\n\r\nI am away.\r\n".to_string();
    let verp = verp_of("away@a.test");
    let (r, d) = send(fb, &verp, &auto).await;
    assert!(r.starts_with("250") && d.starts_with("250"), "{r} / {d}");
    let (_, metrics) = common::harness::http_raw(h.http(), "GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("sluice_bounces_total{reason=\"auto_reply\",type=\"ignored\"} 1"),
        "auto-reply counted as ignored"
    );
    let q = quarantine(&h).await;
    assert!(
        !q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == "away@a.test"),
        "{q}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_queued_delivery_to_a_newly_quarantined_address_is_suppressed() {
    let net = 84;
    let _mx = FakeMx::start(
        ipa(net, 2),
        MX_PORT,
        MxScript {
            fail_first_rcpt: 1,
            ..Default::default()
        },
    )
    .await;
    let mut o = opts(net);
    o.manual_clock = true;
    let mut h = Harness::start(dns(net), o).await;
    inject_one(&h, "wait@a.test", None).await;
    h.wait_for("deferred", "wait@a.test").await;
    let (c, _) = http(
        h.http(),
        "POST",
        "/api/v1/quarantine",
        Some(r#"{"address": "wait@a.test", "reason": "unsubscribed"}"#),
        None,
    )
    .await;
    assert_eq!(c, 201);
    h.advance(Duration::from_secs(70));
    let ev = h.wait_for("suppressed", "wait@a.test").await;
    assert_eq!(ev.bounce_reason.as_deref(), Some("unsubscribed"));
    // CSV export and import round trip
    let (c, csv) =
        common::harness::http_raw(h.http(), "GET", "/api/v1/quarantine/export", None, None).await;
    assert_eq!(c, 200);
    assert!(String::from_utf8_lossy(&csv).contains("wait@a.test,,unsubscribed"));
    let (c, v) = common::harness::http_raw(
        h.http(),
        "POST",
        "/api/v1/quarantine/import",
        Some(b"address,tenant,reason\nx1@a.test,,imported\nnot-an-address\n"),
        None,
    )
    .await;
    assert_eq!(c, 200);
    let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(v["imported"], 1);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1);
    h.shutdown().await;
}
