//! `sluice demo` end to end: the summary it prints must match what its fake MX hosts recorded.
//! Loopback only (127.222.0.0/24).

use sluice::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_summary_matches_what_the_fake_mx_hosts_recorded() {
    let s = run(DemoOptions {
        recipients: 500,
        progress: false,
    })
    .await
    .expect("demo runs");
    let text = s.to_string();
    assert!(!s.timed_out, "{text}");
    assert_eq!(s.missed_events, 0, "{text}");
    assert_eq!(s.recipients, 500);

    // every recipient has an outcome; only the TS01 provider's stay deferred
    let ts01 = s
        .domains
        .iter()
        .find(|d| d.domain == "yahoo-like.demo")
        .expect("ts01 domain");
    assert_eq!(
        s.delivered + s.bounced + s.deferred + s.other,
        500,
        "{text}"
    );
    assert_eq!(
        s.deferred, ts01.deferred,
        "only TS01 deliveries stay queued: {text}"
    );
    assert_eq!(ts01.recipients, 50);
    assert_eq!(ts01.deferred, 50, "every TS01 delivery deferred: {text}");
    assert_eq!(s.ts01.deferred, 50);
    assert!(
        s.ts01
            .sample_reply
            .as_deref()
            .unwrap_or("")
            .contains("[TS01]"),
        "{text}"
    );
    let ts01_host = s
        .hosts
        .iter()
        .find(|h| h.host == "mta1.yahoo-like.demo")
        .expect("host");
    assert_eq!(ts01_host.transactions, 0);
    assert!(ts01_host.rcpt_attempts >= 1, "{text}");
    assert!(ts01_host.rcpt_attempts < 50, "the path backs off: {text}");

    // delivered == transactions the hosts recorded, host by host and in total
    let recorded: usize = s.hosts.iter().map(|h| h.transactions).sum();
    assert_eq!(s.delivered, recorded, "{text}");
    for h in &s.hosts {
        let via: usize = s
            .domains
            .iter()
            .map(|d| d.via.get(&h.host).copied().unwrap_or(0))
            .sum();
        assert_eq!(via, h.transactions, "{}: {text}", h.host);
    }

    // the strict provider's limits held, as seen by its host
    let big = s
        .hosts
        .iter()
        .find(|h| h.host == "mx1.bigmail.demo")
        .expect("bigmail host");
    assert_eq!(big.rule, "bigmail");
    assert_eq!(big.transactions, 100, "{text}");
    assert!(
        big.peak_connections > 0 && big.peak_connections <= big.max_connections as usize,
        "{text}"
    );
    assert_eq!(big.max_connections, 2);
    assert!(
        big.max_transactions_per_connection <= big.messages_per_connection as usize,
        "{text}"
    );
    let limit = big.messages_per_hour.expect("hourly cap") as f64;
    let rate = big.rate_per_hour.expect("observed rate");
    // the rate leaves out the initial burst the cap allows (timer jitter: 5 %)
    assert!(rate <= limit * 1.05, "rate {rate} vs cap {limit}: {text}");
    for h in &s.hosts {
        assert!(
            h.peak_connections <= h.max_connections as usize,
            "{}: {text}",
            h.host
        );
        assert!(
            h.max_transactions_per_connection <= h.messages_per_connection as usize,
            "{}: {text}",
            h.host
        );
    }

    // the backup MX took the backup domain's mail
    assert_eq!(s.backup.recipients, 50);
    assert_eq!(s.backup.delivered_via_backup, 50, "{text}");
    assert_eq!(s.backup.delivered_via_primary, 0);
    let backup = s
        .hosts
        .iter()
        .find(|h| h.host == "mx2.backup.demo")
        .expect("backup host");
    assert_eq!(backup.transactions, 50, "{text}");

    // the hard-bouncing addresses bounced and are quarantined
    assert_eq!(s.bounced, 5, "{text}");
    assert_eq!(s.hard_bounced.len(), 5);
    for b in &s.hard_bounced {
        assert!(b.address.starts_with("former."), "{b:?}");
        assert_eq!(b.reason, "user_unknown", "{text}");
        assert!(
            s.quarantined.iter().any(|q| q.address == b.address),
            "{} quarantined: {text}",
            b.address
        );
    }

    // the printed summary carries the same numbers
    assert!(
        text.contains(&format!("delivered {:>6}", s.delivered)),
        "{text}"
    );
    assert!(text.contains("mx1.bigmail.demo"), "{text}");
    assert!(text.contains("[TS01]"), "{text}");
}

#[tokio::test]
async fn too_few_recipients_is_an_error() {
    let e = run(DemoOptions {
        recipients: 3,
        progress: false,
    })
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("at least"), "{e}");
}

/// The full-size demo, printed: `cargo test --test demo -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes about half a minute; run by hand to see the output"]
async fn full_demo_prints_its_summary() {
    let s = run(DemoOptions::default()).await.expect("demo runs");
    println!("{s}");
    assert!(!s.timed_out, "{s}");
}
