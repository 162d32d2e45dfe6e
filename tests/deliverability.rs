//! Personalisation, one-click unsubscribe (RFC 8058) and Feedback-ID, end to end.

mod common;

use common::dns::DnsBuilder;
use common::harness::{http, ip, ipa, Harness, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dns(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

const TEMPLATE: &str = "From: Shop <news@shop.test>\r\nSubject: Hello {{first_name|there}}\r\n\r\nDear {{first_name|customer}}, your code is {{code}}.\r\n";

#[tokio::test]
async fn personalisation_fills_each_recipient_and_refuses_bad_vars() {
    let net = 120;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut h = Harness::start(dns(net), Opts::new(net)).await;
    let body = json!({"campaign": "p", "content": TEMPLATE, "recipients": [
        {"email": "ana@a.test", "vars": {"first_name": "Ana", "code": "A1"}},
        {"email": "bo@a.test", "vars": {"code": "B2"}},
        {"email": "nocode@a.test", "vars": {"first_name": "Cy"}},
        {"email": "evil@a.test", "vars": {"first_name": "x\r\nBcc: victim@x.test", "code": "E"}},
    ]});
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 202, "{v}");
    assert_eq!(v["accepted"], 2);
    let rej = v["rejected"].as_array().unwrap();
    assert!(
        rej.iter()
            .any(|r| r["recipient"] == "nocode@a.test"
                && r["error"].as_str().unwrap().contains("code")),
        "{v}"
    );
    assert!(
        rej.iter().any(|r| r["recipient"] == "evil@a.test"
            && r["error"].as_str().unwrap().contains("CR or LF")),
        "{v}"
    );
    h.wait_for("delivered", "ana@a.test").await;
    h.wait_for("delivered", "bo@a.test").await;
    let txns = mx.wait_transactions(2, Duration::from_secs(20)).await;
    let data_of = |r: &str| {
        String::from_utf8_lossy(&txns.iter().find(|t| t.rcpt_to[0] == r).unwrap().data).to_string()
    };
    let ana = data_of("ana@a.test");
    assert!(
        ana.contains("Subject: Hello Ana\r\n") && ana.contains("Dear Ana, your code is A1."),
        "{ana}"
    );
    let bo = data_of("bo@a.test");
    assert!(
        bo.contains("Subject: Hello there\r\n") && bo.contains("Dear customer, your code is B2."),
        "{bo}"
    );

    // placeholders inside an encoded part are refused with a clear error
    let qp = "From: a@shop.test\r\nContent-Type: multipart/alternative; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Hi {{first_name}}</p>\r\n--B--\r\n";
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&json!({"recipients": ["x@a.test"], "content": qp}).to_string()),
        None,
    )
    .await;
    assert_eq!(c, 400);
    assert!(
        v["error"].as_str().unwrap().contains("quoted-printable"),
        "{v}"
    );
    h.shutdown().await;
}

async fn raw_http(addr: std::net::SocketAddr, req: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test]
async fn one_click_unsubscribe_end_to_end() {
    let net = 121;
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.listen = "public = \"127.0.0.1:0\"".into();
    o.extra = "[unsubscribe]\nurl = \"https://mail.shop.test/u/{token}\"\nmailto = \"unsub@shop.test\"\nsecret = \"unsubscribe-secret-0123456789\"\n".into();
    let mut h = Harness::start(dns(net), o).await;
    // Feedback-ID needs [events] feedback_id: set it through a restart with the key added
    h.shutdown_keep_config().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "[events]\n",
        "[events]\nfeedback_id = \"{campaign}:{tenant}:sluice\"\n",
    );
    std::fs::write(&h.config_path, text).unwrap();
    h.restart().await;
    let body = json!({"campaign": "spring", "recipients": ["leave@a.test"], "content": "From: a@shop.test\r\nSubject: x\r\n\r\nhi\r\n"});
    let (c, _) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 202);
    h.wait_for("delivered", "leave@a.test").await;
    let t = mx.wait_transactions(1, Duration::from_secs(20)).await;
    let data = String::from_utf8_lossy(&t[0].data).to_string();
    assert!(
        data.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
        "{data}"
    );
    assert!(
        data.contains("Feedback-ID: spring:default:sluice\r\n"),
        "{data}"
    );
    let line = data
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: "))
        .unwrap();
    assert!(line.contains("<mailto:unsub@shop.test"), "{line}");
    let url = line
        .split('<')
        .nth(1)
        .unwrap()
        .trim_end_matches(['>', ',', ' '])
        .to_string();
    let token = url.rsplit('/').next().unwrap().to_string();
    let public = h.engine().public_addr().unwrap();

    // GET shows a page and does NOT unsubscribe (link scanners)
    let (c, page) = raw_http(
        public,
        format!("GET /u/{token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(c, 200);
    assert!(page.contains("<form method=\"post\""), "{page}");
    let (_, q) = http(h.http(), "GET", "/api/v1/quarantine", None, None).await;
    assert_eq!(q["entries"].as_array().unwrap().len(), 0);

    // the one-click POST, as a mailbox provider sends it
    let post = |t: &str| {
        format!("POST /u/{t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\nList-Unsubscribe=One-Click")
    };
    let (c, _) = raw_http(public, post(&token)).await;
    assert_eq!(c, 200);
    let ev = h
        .wait_event("unsubscribed", |e| e.event == "unsubscribed")
        .await;
    assert_eq!(ev.recipient.as_deref(), Some("leave@a.test"));
    assert_eq!(ev.campaign.as_deref(), Some("spring"));
    // idempotent
    let (c, _) = raw_http(public, post(&token)).await;
    assert_eq!(c, 200);
    let (_, q) = http(h.http(), "GET", "/api/v1/quarantine", None, None).await;
    assert_eq!(q["entries"].as_array().unwrap().len(), 1, "{q}");
    assert_eq!(q["entries"][0]["reason"], "unsubscribed");
    // forged token
    let mut forged = token.clone();
    forged.insert(3, 'x');
    let (c, _) = raw_http(public, post(&forged)).await;
    assert_eq!(c, 400);
    // refused at intake from now on
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 400, "{v}");
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unsubscribed"),
        "{v}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn aligned_verp_and_dkim_end_to_end() {
    let net = 122;
    // an Ed25519 key for brand.test; its public TXT is short enough for the test authority
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ed.pem");
    let out = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let signer = sluice::dkim::Signer::load(
        &[sluice::dkim::DkimCfg {
            domain: "brand.test".into(),
            selector: "s1".into(),
            key: key.clone(),
            headers: None,
        }],
        dir.path(),
    )
    .unwrap();
    let txt = signer.public_key_txt("brand.test", "s1").unwrap();
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let mut o = Opts::new(net);
    o.listen = "bounce = \"127.0.0.1:0\"".into();
    o.extra = format!(
        "[[senders]]\ndomain = \"brand.test\"\n[[dkim]]\ndomain = \"brand.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let dnsb = dns(net).txt("s1._domainkey.brand.test", &txt);
    let mut h = Harness::start(dnsb, o).await;
    h.shutdown_keep_config().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "prefix = \"b\"\n",
        "prefix = \"b\"\nsubdomain = \"feedback\"\n",
    );
    std::fs::write(&h.config_path, text).unwrap();
    h.restart().await;

    let body = json!({"campaign": "brand", "recipients": [{"email": "gone@a.test", "id": "crm-9"}],
        "content": "From: Brand <news@brand.test>\r\nTo: gone@a.test\r\nSubject: aligned\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"});
    let (c, v) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(c, 202, "{v}");
    let envelope = v["messages"][0]["envelope_from"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(envelope.ends_with("@feedback.brand.test"), "{envelope}");
    h.wait_for("delivered", "gone@a.test").await;
    let t = mx.wait_transactions(1, Duration::from_secs(20)).await;
    assert_eq!(t[0].mail_from, envelope);
    // DKIM: signed, and mail-auth verifies it through the test DNS authority
    let data = t[0].data.clone();
    assert!(
        String::from_utf8_lossy(&data).starts_with("DKIM-Signature:"),
        "signed"
    );
    let auth = mail_auth::MessageAuthenticator(common::dns::resolver_for(h.dns.addr));
    let parsed = mail_auth::AuthenticatedMessage::parse(&data).unwrap();
    let results = auth.verify_dkim(&parsed).await;
    assert!(
        !results.is_empty()
            && results
                .iter()
                .all(|r| *r.result() == mail_auth::DkimResult::Pass),
        "{results:?}"
    );

    // the brand's bounce comes back to feedback.brand.test and is linked and qualified
    let dsn = format!(
        "From: MAILER-DAEMON@remote.test\r\nTo: {envelope}\r\nSubject: failure\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"X\"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\r\n--X\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; remote.test\r\n\r\nFinal-Recipient: rfc822; gone@a.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--X--\r\n.\r\n"
    );
    let (mut s, _) = common::harness::SmtpClient::connect(h.engine().bounce_addr().unwrap()).await;
    s.cmd("EHLO remote.test").await;
    s.cmd("MAIL FROM:<>").await;
    let r = s.cmd(&format!("RCPT TO:<{envelope}>")).await;
    assert!(r.starts_with("250"), "{r}");
    assert!(s.cmd("DATA").await.starts_with("354"));
    s.send(&dsn).await;
    assert!(s.reply().await.starts_with("250"));
    let ev = h
        .wait_event("returned", |e| {
            e.event == "bounced" && e.bounce_source.as_deref() == Some("returned")
        })
        .await;
    assert_eq!(ev.recipient_id.as_deref(), Some("crm-9"));
    assert_eq!(ev.bounce_reason.as_deref(), Some("user_unknown"));
    h.shutdown().await;
}
