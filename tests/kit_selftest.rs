//! Self-test of the integration-test kit (`sluice::testkit`, re-exported by tests/common).
//! Loopback only.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::dns::{start_silent, DnsBuilder};
use common::mx::{Behaviour, FakeMx, MxScript};
use hickory_resolver::proto::rr::RData;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MX_IP: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 2);
const DNS_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1));

/// Read one (possibly multi-line) SMTP reply; returns (code, full text).
async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (u16, String) {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        let n = r.read_line(&mut l).await.unwrap();
        assert!(n > 0, "EOF while reading reply; got so far: {all:?}");
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return (l[..3].parse().unwrap(), all);
        }
    }
}

#[tokio::test]
async fn fake_mx_pipelined_transaction_and_greet421() {
    let script = MxScript {
        rcpt_replies: vec![("bad@".into(), 550, "5.1.1 <bad@x> User unknown".into())],
        ..Default::default()
    };
    let mx = FakeMx::start(IpAddr::V4(MX_IP), 0, script).await;
    assert_ne!(mx.addr.port(), 0);

    let (rd, mut w) = TcpStream::connect(mx.addr).await.unwrap().into_split();
    let mut r = BufReader::new(rd);
    assert_eq!(read_reply(&mut r).await.0, 220);
    w.write_all(b"EHLO client.test\r\n").await.unwrap();
    let (code, ehlo) = read_reply(&mut r).await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("PIPELINING") && ehlo.contains("SIZE 52428800"));
    assert!(!ehlo.contains("STARTTLS"));

    // Pipelined MAIL/RCPT/RCPT in a single write.
    w.write_all(
        b"MAIL FROM:<sender@a.test> SIZE=100\r\nRCPT TO:<good@b.test>\r\nRCPT TO:<bad@b.test>\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_reply(&mut r).await.0, 250);
    assert_eq!(read_reply(&mut r).await.0, 250);
    let (code, text) = read_reply(&mut r).await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("User unknown"));

    w.write_all(b"DATA\r\n").await.unwrap();
    assert_eq!(read_reply(&mut r).await.0, 354);
    w.write_all(b"Subject: hi\r\n\r\n..dotted\r\nplain\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r).await.0, 250);
    assert_eq!(read_reply(&mut r).await.0, 221);

    let txns = mx.wait_transactions(1, Duration::from_secs(5)).await;
    assert_eq!(txns.len(), 1);
    let t = &txns[0];
    assert_eq!(t.mail_from, "sender@a.test");
    assert_eq!(t.rcpt_to, vec!["good@b.test".to_string()]);
    assert_eq!(t.data, b"Subject: hi\r\n\r\n.dotted\r\nplain\r\n");
    assert_eq!(t.helo, "client.test");
    assert_eq!(mx.rcpt_attempts(), vec!["good@b.test", "bad@b.test"]);
    assert_eq!(mx.connections(), vec![t.peer]);

    // Greet421: greeting then close.
    mx.set_script(MxScript {
        behaviour: Behaviour::Greet421,
        ..Default::default()
    });
    let (rd, _w) = TcpStream::connect(mx.addr).await.unwrap().into_split();
    let mut r = BufReader::new(rd);
    let (code, _) = read_reply(&mut r).await;
    assert_eq!(code, 421);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(mx.connections().len(), 2);
    assert_eq!(mx.transactions().len(), 1);
}

#[tokio::test]
async fn dns_mx_a_nxdomain_nullmx_refused_silent() {
    let dns = DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .mx("a.test", 20, "mx2.a.test")
        .a("mx1.a.test", MX_IP)
        .null_mx("null.test")
        .ttl(30)
        .txt("a.test", "v=spf1 -all")
        .start(DNS_IP)
        .await;
    assert_eq!(dns.addr.ip(), DNS_IP);
    let res = dns.resolver();

    let lookup = res.mx_lookup("a.test.").await.unwrap();
    let mut mxs: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    mxs.sort();
    assert_eq!(
        mxs,
        vec![
            (10, "mx1.a.test.".to_string()),
            (20, "mx2.a.test.".to_string())
        ]
    );

    let a = res.ipv4_lookup("mx1.a.test.").await.unwrap();
    let ips: Vec<_> = a
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec![MX_IP]);

    let txt = res.txt_lookup("a.test.").await.unwrap();
    let r = &txt.answers()[0];
    assert_eq!(r.ttl, 30);
    assert!(matches!(&r.data, RData::TXT(t) if t.to_string() == "v=spf1 -all"));

    let err = res.mx_lookup("nope.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "expected NXDOMAIN, got {err:?}");

    // NODATA: name exists (has A) but no MX.
    let err = res.mx_lookup("mx1.a.test.").await.unwrap_err();
    assert!(
        err.is_no_records_found() && !err.is_nx_domain(),
        "expected NODATA, got {err:?}"
    );

    let null = res.mx_lookup("null.test.").await.unwrap();
    let recs: Vec<_> = null.answers().iter().map(|r| r.data.clone()).collect();
    assert!(
        matches!(&recs[..], [RData::MX(mx)] if mx.preference == 0 && mx.exchange.is_root()),
        "{recs:?}"
    );

    // Outside the zone: REFUSED -> an error that is not NXDOMAIN.
    let err = res.mx_lookup("example.com.").await.unwrap_err();
    assert!(!err.is_nx_domain(), "{err:?}");

    // Silent server: the lookup fails (timeout) instead of hanging.
    let silent = start_silent(DNS_IP).await;
    let sres = common::dns::resolver_for(silent.addr);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(15), sres.mx_lookup("a.test.")).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    dns.stop().await;
}

#[tokio::test]
async fn fake_mx_greylist_refuse_stall_starttls() {
    let mx = FakeMx::start(
        IpAddr::V4(MX_IP),
        0,
        MxScript {
            fail_first_rcpt: 1,
            starttls: true,
            data_reply: Some((452, "4.3.1 Insufficient storage".into())),
            ..Default::default()
        },
    )
    .await;
    let (rd, mut w) = TcpStream::connect(mx.addr).await.unwrap().into_split();
    let mut r = BufReader::new(rd);
    assert_eq!(read_reply(&mut r).await.0, 220);
    w.write_all(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<>\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nDATA\r\n")
        .await
        .unwrap();
    assert!(read_reply(&mut r).await.1.contains("STARTTLS"));
    assert_eq!(read_reply(&mut r).await.0, 454);
    assert_eq!(read_reply(&mut r).await.0, 250);
    assert_eq!(read_reply(&mut r).await.0, 451); // greylisted
    assert_eq!(read_reply(&mut r).await.0, 250);
    assert_eq!(read_reply(&mut r).await.0, 354);
    w.write_all(b"body\r\n.\r\n").await.unwrap();
    assert_eq!(read_reply(&mut r).await.0, 452);
    assert!(mx.transactions().is_empty());

    mx.set_script(MxScript {
        behaviour: Behaviour::RefuseRcpt(550, "5.7.1 Relaying denied".into()),
        ..Default::default()
    });
    w.write_all(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<z@b.test>\r\nDATA\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r).await.0, 250);
    assert_eq!(read_reply(&mut r).await.0, 550);
    assert_eq!(read_reply(&mut r).await.0, 554);

    mx.set_script(MxScript {
        behaviour: Behaviour::Stall,
        ..Default::default()
    });
    let mut s = TcpStream::connect(mx.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let res = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(res.is_err(), "stalled server must not send anything");
}

#[tokio::test]
async fn other_zone_loopback_only_and_errors_instead_of_panics() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 3));
    let dns = DnsBuilder::with_origin("demo")
        .mx("shop.demo", 10, "mx.shop.demo")
        .a("mx.shop.demo", MX_IP)
        .try_start(ip)
        .await
        .unwrap();
    let res = dns.resolver();
    let mx = res.mx_lookup("shop.demo.").await.unwrap();
    assert_eq!(mx.answers().len(), 1);
    // "test." is not served by this authority
    assert!(res.mx_lookup("a.test.").await.is_err());
    dns.stop().await;

    // a bad name is reported by try_start, not a panic
    let err = DnsBuilder::new()
        .mx("a.test", 10, "bad..name")
        .try_start(ip)
        .await
        .err()
        .expect("bad name refused");
    assert!(err.to_string().contains("bad DNS name"), "{err}");

    // never anything but loopback
    let public = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let err = DnsBuilder::new()
        .try_start(public)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a loopback"), "{err}");
    let err = FakeMx::try_start(public, 0, MxScript::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a loopback"), "{err}");

    // transaction times follow the transactions
    let mx = FakeMx::try_start(ip, 0, MxScript::default()).await.unwrap();
    let (rd, mut w) = TcpStream::connect(mx.addr).await.unwrap().into_split();
    let mut r = BufReader::new(rd);
    assert_eq!(read_reply(&mut r).await.0, 220);
    for _ in 0..2 {
        w.write_all(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
            .await
            .unwrap();
        for code in [250, 250, 354] {
            assert_eq!(read_reply(&mut r).await.0, code);
        }
        w.write_all(b"x\r\n.\r\n").await.unwrap();
        assert_eq!(read_reply(&mut r).await.0, 250);
    }
    let times = mx.transaction_times();
    assert_eq!(times.len(), 2);
    assert!(times[0] <= times[1]);
    assert_eq!(mx.peak_connections(), 1);
    assert_eq!(mx.max_transactions_per_connection(), 2);
}
