//! Event outputs: the persisted, signed webhook (outage, 4xx, restart), log rotation and
//! reopening, and the PowerMTA-style accounting CSV. Each test owns 127.N.0.0/24 (N in
//! 100..109).

mod common;

use common::dns::DnsBuilder;
use common::harness::{ip, ipa, Harness, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sluice::config::{Dur, EventsCfg};
use sluice::events::{Event, Events};
use sluice::spool::Spool;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "hook-secret";

/// A webhook endpoint: answers `plan[i]` to the i-th request, then 200; records the events
/// of the requests it accepted (2xx), in arrival order.
struct Hook {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    /// Requests answered so far.
    requests: watch::Receiver<usize>,
    /// Events accepted so far.
    accepted: watch::Receiver<usize>,
    /// Problems seen (bad signature, header, JSON).
    problems: Arc<Mutex<Vec<String>>>,
}

fn sign(body: &[u8]) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    m.update(body);
    let out = m.finalize().into_bytes();
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read one request: (lowercased head, body).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return Some((head, buf[h + 4..h + 4 + len].to_vec()));
            }
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn hook(listener: TcpListener, plan: Vec<u16>) -> Hook {
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let problems = Arc::new(Mutex::new(Vec::new()));
    let (req_tx, requests) = watch::channel(0usize);
    let (acc_tx, accepted) = watch::channel(0usize);
    let (g, p) = (got.clone(), problems.clone());
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut s, _)) = listener.accept().await {
            let Some((head, body)) = read_request(&mut s).await else {
                continue;
            };
            let status = plan.get(n).copied().unwrap_or(200);
            n += 1;
            let want = format!("x-sluice-signature: sha256={}", sign(&body));
            if !head.lines().any(|l| l == want) {
                p.lock()
                    .expect("lock")
                    .push(format!("bad signature: {head}"));
            }
            if !head.starts_with("post /events?k=1 http/1.1") {
                p.lock()
                    .expect("lock")
                    .push(format!("bad request line: {head}"));
            }
            if !head.lines().any(|l| l == "content-type: application/json") {
                p.lock()
                    .expect("lock")
                    .push(format!("no content type: {head}"));
            }
            if (200..300).contains(&status) {
                match serde_json::from_slice::<Vec<Value>>(&body) {
                    Ok(v) => {
                        let mut g = g.lock().expect("lock");
                        g.extend(v);
                        acc_tx.send_replace(g.len());
                    }
                    Err(e) => p.lock().expect("lock").push(format!("bad JSON: {e}")),
                }
            }
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
            req_tx.send_replace(n);
        }
    });
    Hook {
        url: format!("http://{addr}/events?k=1"),
        got,
        requests,
        accepted,
        problems,
    }
}

impl Hook {
    async fn wait_accepted(&mut self, n: usize) {
        let ok = tokio::time::timeout(WAIT, self.accepted.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(ok, "webhook got {} of {n} events", *self.accepted.borrow());
    }

    async fn wait_requests(&mut self, n: usize) {
        let ok = tokio::time::timeout(WAIT, self.requests.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            ok,
            "webhook got {} of {n} requests",
            *self.requests.borrow()
        );
    }

    /// The `message` field (our sequence numbers) of the accepted events.
    fn seqs(&self) -> Vec<u64> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| e["message"].as_str()?.parse().ok())
            .collect()
    }

    fn assert_no_problem(&self) {
        let p = self.problems.lock().expect("lock");
        assert!(p.is_empty(), "{p:?}");
    }
}

fn event(kind: &str, n: u64) -> Event {
    Event {
        ts: "2026-01-02T03:04:05.000Z".into(),
        event: kind.into(),
        recipient: Some(format!("r{n}@a.test")),
        message: Some(n.to_string()),
        ..Event::default()
    }
}

fn hook_cfg(dir: &Path, url: &str, batch: usize) -> EventsCfg {
    EventsCfg {
        path: dir.join("events.jsonl"),
        webhook_url: Some(url.to_string()),
        webhook_secret: Some(SECRET.into()),
        webhook_batch: batch,
        webhook_interval: Dur(Duration::from_millis(50)),
        webhook_timeout: Dur::secs(5),
        ..EventsCfg::default()
    }
}

fn open_spool(dir: &Path) -> Spool {
    Spool::open(&dir.join("spool.redb"), sluice::Clock::System, 86_400_000).expect("spool")
}

fn outbox_len(spool: &Spool) -> usize {
    spool.kv_scan("webhook_outbox").expect("scan").len()
}

#[tokio::test]
async fn webhook_survives_an_outage_in_order_exactly_once_and_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind((ip(100, 1), 0)).await.expect("bind");
    // the platform fails twice (500, then 429) before it recovers
    let mut h = hook(listener, vec![500, 429]).await;
    let spool = open_spool(dir.path());
    let (ev, task) =
        Events::start_with(&hook_cfg(dir.path(), &h.url, 10), Some(spool.clone())).expect("start");
    for n in 0..95 {
        ev.emit(event("delivered", n));
    }
    h.wait_accepted(95).await;
    ev.close().await;
    task.await.expect("events task");
    assert_eq!(
        h.seqs(),
        (0..95).collect::<Vec<_>>(),
        "in order, exactly once"
    );
    assert!(
        *h.requests.borrow() >= 2 + 10,
        "two failures then 10 batches"
    );
    h.assert_no_problem();
    assert_eq!(outbox_len(&spool), 0, "delivered events leave the outbox");
    // the log is independent of the webhook
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("log");
    assert_eq!(log.lines().count(), 95);
    spool.close();
}

#[tokio::test]
async fn webhook_drops_a_batch_refused_with_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind((ip(102, 1), 0)).await.expect("bind");
    let mut h = hook(listener, vec![400]).await;
    let spool = open_spool(dir.path());
    let (ev, task) =
        Events::start_with(&hook_cfg(dir.path(), &h.url, 3), Some(spool.clone())).expect("start");
    for n in 0..3 {
        ev.emit(event("bounced", n));
    }
    h.wait_requests(1).await;
    for n in 3..6 {
        ev.emit(event("bounced", n));
    }
    h.wait_accepted(3).await;
    ev.close().await;
    task.await.expect("events task");
    assert_eq!(h.seqs(), vec![3, 4, 5], "the refused batch is not retried");
    h.assert_no_problem();
    assert_eq!(outbox_len(&spool), 0);
    spool.close();
}

#[tokio::test]
async fn webhook_outbox_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // an address where nothing listens yet
    let addr: SocketAddr = {
        let l = TcpListener::bind((ip(101, 1), 0)).await.expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{addr}/events?k=1");
    let spool = open_spool(dir.path());
    let (ev, task) =
        Events::start_with(&hook_cfg(dir.path(), &url, 7), Some(spool.clone())).expect("start");
    for n in 0..20 {
        ev.emit(event("deferred", n));
    }
    ev.close().await;
    task.await.expect("events task");
    drop(ev);
    assert_eq!(outbox_len(&spool), 20, "every event waits in the outbox");
    spool.close();
    drop(spool);

    // "restart": reopen the spool, the platform is back
    let mut h = hook(TcpListener::bind(addr).await.expect("rebind"), vec![]).await;
    let spool = open_spool(dir.path());
    let (ev, task) =
        Events::start_with(&hook_cfg(dir.path(), &url, 7), Some(spool.clone())).expect("start");
    for n in 20..25 {
        ev.emit(event("deferred", n));
    }
    h.wait_accepted(25).await;
    ev.close().await;
    task.await.expect("events task");
    assert_eq!(h.seqs(), (0..25).collect::<Vec<_>>());
    h.assert_no_problem();
    assert_eq!(outbox_len(&spool), 0);
    spool.close();
}

#[tokio::test]
async fn https_webhook_needs_a_ca_bundle_and_urls_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = hook_cfg(dir.path(), "ftp://127.103.0.1/x", 10);
    assert!(Events::start_with(&cfg, None).is_err());
    cfg.webhook_url = Some("https://127.103.0.1/x".into());
    cfg.webhook_ca_file = Some(dir.path().join("missing.pem"));
    let err = Events::start_with(&cfg, None).err().expect("refused");
    assert!(err.to_string().contains("webhook_ca_file"), "{err}");
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("events.jsonl.{n}"))
}

/// Every line of the log and its rotations, oldest first, as the sequence numbers.
fn all_seqs(dir: &Path, keep: u32) -> Vec<u64> {
    let mut files: Vec<PathBuf> = (1..=keep).rev().map(|n| rotated(dir, n)).collect();
    files.push(dir.join("events.jsonl"));
    let mut out = Vec::new();
    for f in files {
        for l in lines_of(&f) {
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("split line {l:?}: {e}"));
            out.push(
                v["message"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("seq"),
            );
        }
    }
    out
}

/// Start the outputs of `cfg`, emit `n` delivered events, and close them (all written).
async fn write_delivered(cfg: &EventsCfg, n: u64) {
    let (ev, task) = Events::start_with(cfg, None).expect("start");
    for i in 0..n {
        ev.emit(event("delivered", i));
    }
    ev.close().await;
    task.await.expect("events task");
}

#[tokio::test]
async fn rotation_keeps_every_line_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EventsCfg {
        path: dir.path().join("events.jsonl"),
        rotate_size: 2000,
        rotate_keep: 100,
        ..EventsCfg::default()
    };
    write_delivered(&cfg, 300).await;
    assert!(rotated(dir.path(), 2).exists(), "rotated more than once");
    assert_eq!(all_seqs(dir.path(), 100), (0..300).collect::<Vec<_>>());
    for n in 1..=100 {
        let p = rotated(dir.path(), n);
        if let Ok(m) = std::fs::metadata(&p) {
            let text = std::fs::read_to_string(&p).expect("read");
            assert!(text.ends_with('\n'), "{} ends mid-line", p.display());
            // rotated right after the line that passed the size
            assert!(
                m.len() >= 2000 && m.len() < 2000 + 400,
                "{}: {}",
                p.display(),
                m.len()
            );
        }
    }

    // keep = 2: older files are dropped
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EventsCfg {
        path: dir.path().join("events.jsonl"),
        rotate_size: 2000,
        rotate_keep: 2,
        ..EventsCfg::default()
    };
    write_delivered(&cfg, 300).await;
    assert!(rotated(dir.path(), 2).exists());
    assert!(!rotated(dir.path(), 3).exists());
    let seqs = all_seqs(dir.path(), 2);
    assert_eq!(seqs.last(), Some(&299));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail"
    );
}

#[tokio::test]
async fn reopen_follows_an_external_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    let csv = dir.path().join("acct.csv");
    let cfg = EventsCfg {
        path: log.clone(),
        csv_path: Some(csv.clone()),
        ..EventsCfg::default()
    };
    let (ev, task) = Events::start_with(&cfg, None).expect("start");
    for n in 0..5 {
        ev.emit(event("delivered", n));
    }
    ev.emit(event("marker", 99));
    // logrotate renames, then signals; what was emitted before the signal goes to the old
    // files (written or not yet), what follows to the new ones
    std::fs::rename(&log, dir.path().join("events.jsonl.old")).expect("rename");
    std::fs::rename(&csv, dir.path().join("acct.csv.old")).expect("rename");
    ev.reopen();
    for n in 5..8 {
        ev.emit(event("delivered", n));
    }
    ev.close().await;
    task.await.expect("events task");
    let old = lines_of(&dir.path().join("events.jsonl.old"));
    let new = lines_of(&log);
    assert_eq!((old.len(), new.len()), (6, 3));
    assert_eq!(lines_of(&dir.path().join("acct.csv.old")).len(), 6);
    let new_csv = lines_of(&csv);
    assert_eq!(new_csv.len(), 4, "a new CSV gets its header: {new_csv:?}");
    assert!(new_csv[0].starts_with("type,timeLogged,"));
}

/// Split RFC 4180 text into records of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let (mut rec, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => rec.push(std::mem::take(&mut field)),
            (false, '\n') => {
                rec.push(std::mem::take(&mut field));
                out.push(std::mem::take(&mut rec));
            }
            (false, c) => field.push(c),
        }
    }
    out
}

#[tokio::test]
async fn accounting_csv_records_and_quoting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("acct/acct.csv");
    let cfg = EventsCfg {
        path: dir.path().join("events.jsonl"),
        csv_path: Some(csv.clone()),
        ..EventsCfg::default()
    };
    let (ev, task) = Events::start_with(&cfg, None).expect("start");
    let base = Event {
        ts: "2026-01-02T03:04:05.000Z".into(),
        id: Some("0001000000000001".into()),
        campaign: Some("spring".into()),
        recipient: Some("ana@a.test".into()),
        recipient_id: Some("r-1".into()),
        envelope_from: Some("b-x@fb.sluice.test".into()),
        mx: Some("mx1.a.test".into()),
        ip: Some("127.104.0.2".into()),
        source_ip: Some("127.104.0.9".into()),
        ..Event::default()
    };
    ev.emit(Event {
        event: "queued".into(),
        ..base.clone()
    });
    ev.emit(Event {
        event: "delivered".into(),
        code: Some(250),
        enhanced: Some("2.0.0".into()),
        response: Some("250 2.0.0 ok".into()),
        ..base.clone()
    });
    ev.emit(Event {
        event: "bounced".into(),
        code: Some(550),
        enhanced: Some("5.1.1".into()),
        response: Some("550 5.1.1 <ana@a.test>, user \"ana\" unknown".into()),
        bounce_type: Some("hard".into()),
        bounce_reason: Some("bad-mailbox".into()),
        bounce_source: Some("smtp".into()),
        ..base.clone()
    });
    ev.emit(Event {
        event: "deferred".into(),
        code: Some(451),
        enhanced: Some("4.7.1".into()),
        response: Some("451 4.7.1 try\r\nlater".into()),
        bounce_reason: Some("throttled".into()),
        ..base.clone()
    });
    ev.emit(Event {
        event: "bounced".into(),
        bounce_type: Some("hard".into()),
        bounce_reason: Some("complaint".into()),
        bounce_source: Some("returned".into()),
        mx: None,
        ip: None,
        source_ip: None,
        ..base.clone()
    });
    ev.emit(Event {
        event: "expired".into(),
        ..base.clone()
    });
    ev.close().await;
    task.await.expect("events task");

    let text = std::fs::read_to_string(&csv).expect("csv");
    assert!(
        text.contains(",\"smtp;550 5.1.1 <ana@a.test>, user \"\"ana\"\" unknown\","),
        "RFC 4180 quoting: {text}"
    );
    let recs = parse_csv(&text);
    let header = &recs[0];
    assert_eq!(header.join(","), sluice::events::CSV_HEADER);
    assert_eq!(header.len(), 24);
    let col = |r: &Vec<String>, name: &str| -> String {
        let i = header.iter().position(|h| h == name).expect("column");
        r[i].clone()
    };
    let body = &recs[1..];
    let types: Vec<String> = body.iter().map(|r| col(r, "type")).collect();
    assert_eq!(types, ["d", "b", "t", "f"]);
    assert!(body.iter().all(|r| r.len() == 24));
    let d = &body[0];
    assert_eq!(col(d, "timeLogged"), "2026-01-02T03:04:05.000Z");
    assert_eq!(col(d, "orig"), "b-x@fb.sluice.test");
    assert_eq!(col(d, "rcpt"), "ana@a.test");
    assert_eq!(col(d, "dsnAction"), "relayed");
    assert_eq!(col(d, "dsnStatus"), "2.0.0");
    assert_eq!(col(d, "dsnDiag"), "smtp;250 2.0.0 ok");
    assert_eq!(col(d, "dsnMta"), "mx1.a.test");
    assert_eq!(col(d, "dlvSourceIp"), "127.104.0.9");
    assert_eq!(col(d, "dlvDestinationIp"), "127.104.0.2");
    assert_eq!(col(d, "jobId"), "spring");
    assert_eq!(col(d, "envId"), "0001000000000001");
    assert_eq!(col(d, "header_x-id"), "r-1");
    assert!(!col(d, "timeQueued").is_empty());
    let b = &body[1];
    assert_eq!(col(b, "dsnAction"), "failed");
    assert_eq!(col(b, "bounceCat"), "bad-mailbox");
    assert_eq!(
        col(b, "dsnDiag"),
        "smtp;550 5.1.1 <ana@a.test>, user \"ana\" unknown"
    );
    let t = &body[2];
    assert_eq!(col(t, "dsnAction"), "delayed");
    assert_eq!(col(t, "dsnDiag"), "smtp;451 4.7.1 try\r\nlater");
    let f = &body[3];
    assert_eq!(col(f, "bounceCat"), "complaint");
    assert_eq!(col(f, "dlvType"), "returned");
}

fn one_mx(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

/// The engine accepts every `[events]` key (they parse and validate).
#[tokio::test]
async fn engine_accepts_the_events_keys() {
    let net = 105;
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let listener = TcpListener::bind((ip(net, 1), 0)).await.expect("bind");
    let hook = hook(listener, vec![]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let mut o = Opts::new(net);
    o.extra = format!(
        "rotate_size = 104857600\nrotate_keep = 3\ncsv_path = \"{}\"\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\nwebhook_batch = 100\nwebhook_interval = \"100ms\"\nwebhook_timeout = \"5s\"\n",
        out.path().join("acct.csv").display(),
        hook.url
    );
    let mut h = Harness::start(one_mx(net), o).await;
    h.inject(&["ana@a.test"]).await;
    h.wait_for("delivered", "ana@a.test").await;
    h.shutdown().await;
}

/// End to end through the engine, once `Engine::start` uses `Events::start_with`.
#[tokio::test]
async fn engine_feeds_webhook_and_csv() {
    let net = 106;
    let _mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let listener = TcpListener::bind((ip(net, 1), 0)).await.expect("bind");
    let mut hook = hook(listener, vec![503]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let csv = out.path().join("acct.csv");
    let mut o = Opts::new(net);
    o.extra = format!(
        "csv_path = \"{}\"\nwebhook_url = \"{}\"\nwebhook_secret = \"{SECRET}\"\nwebhook_interval = \"100ms\"\n",
        csv.display(),
        hook.url
    );
    let mut h = Harness::start(one_mx(net), o).await;
    h.inject(&["ana@a.test", "bo@a.test"]).await;
    h.wait_for("delivered", "ana@a.test").await;
    h.wait_for("delivered", "bo@a.test").await;
    let delivered = |hook: &Hook| {
        let g = hook.got.lock().expect("lock");
        g.iter().filter(|e| e["event"] == "delivered").count()
    };
    // the first POST gets a 503: the events come with the retry
    while delivered(&hook) < 2 {
        tokio::time::timeout(WAIT, hook.accepted.changed())
            .await
            .expect("webhook events in time")
            .expect("receiver alive");
    }
    hook.assert_no_problem();
    h.shutdown().await;
    let recs = lines_of(&csv);
    assert_eq!(
        recs.iter().filter(|l| l.starts_with("d,")).count(),
        2,
        "{recs:?}"
    );
}

/// A big injection's `accepted` events go to the log writer as one batch when nobody
/// listens live; the lines are exactly those of one event per delivery, in order, and an
/// event emitted after the batch follows it.
#[tokio::test]
async fn accepted_batch_writes_the_same_lines_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let (events, task) = Events::start(&path).expect("events");
    let verp = sluice::verp::Verp::new("fb.a.test", "b", "secret-0123456789");
    let meta = Arc::new(sluice::spool::Meta {
        campaign: Some("c1".into()),
        tenant: Some("t1".into()),
        ..Default::default()
    });
    let ds: Vec<sluice::spool::Delivery> = (1..=3u64)
        .map(|id| sluice::spool::Delivery {
            id,
            body_id: 9,
            recipient: format!("r{id}@a.test").into(),
            meta: meta.clone(),
            created_ms: 0,
            expires_ms: u64::MAX,
            attempts: 0,
            next_ms: 0,
            extra: sluice::spool::Extra::boxed((id == 2).then(|| "crm-2".into()), None, Vec::new()),
        })
        .collect();
    events.emit_accepted(&ds, &verp, 1_767_323_045_000);
    events.emit(event("after", 4));
    events.close().await;
    task.await.expect("writer");
    let text = std::fs::read_to_string(&path).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (i, d) in ds.iter().enumerate() {
        let want = serde_json::to_value(sluice::delivery::outcome::base_event(
            "accepted",
            d,
            verp.envelope_of(d),
            1_767_323_045_000,
        ))
        .expect("value");
        assert_eq!(lines[i], want);
        assert_eq!(lines[i]["campaign"], "c1");
        assert_eq!(lines[i]["recipient"], format!("r{}@a.test", i + 1));
    }
    assert_eq!(lines[1]["recipient_id"], "crm-2");
    assert_eq!(lines[3]["event"], "after");
}

/// The accounting CSV rotates with the log's size and count; every file starts with the
/// header and no record is lost or cut.
#[tokio::test]
async fn accounting_csv_rotates_with_a_header_in_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("acct.csv");
    let cfg = EventsCfg {
        path: dir.path().join("events.jsonl"),
        csv_path: Some(csv.clone()),
        rotate_size: 2000,
        rotate_keep: 100,
        ..EventsCfg::default()
    };
    write_delivered(&cfg, 300).await;
    let name = |n: u32| dir.path().join(format!("acct.csv.{n}"));
    assert!(name(2).exists(), "the CSV rotated more than once");
    let mut rows = 0;
    let mut files = vec![csv.clone()];
    files.extend((1..=100).map(name).filter(|p| p.exists()));
    for p in &files {
        let text = std::fs::read_to_string(p).expect("read");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(sluice::events::CSV_HEADER),
            "{} starts with the header",
            p.display()
        );
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            p.display()
        );
        rows += lines.filter(|l| l.starts_with("d,")).count();
    }
    assert_eq!(rows, 300);
}
