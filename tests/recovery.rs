//! Durability: acknowledged deliveries survive a stop and a `kill -9`.

mod common;

use common::dns::DnsBuilder;
use common::harness::{config_text, http, ip, ipa, message, Harness, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn dns(net: u8) -> DnsBuilder {
    DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2))
}

#[tokio::test]
async fn restart_recovers_undelivered_deliveries() {
    let net = 50;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    let mut h = Harness::start(dns(net), o).await;
    // MX down: both deliveries are deferred
    h.inject(&["r1@a.test", "r2@a.test"]).await;
    h.wait_for("deferred", "r1@a.test").await;
    h.wait_for("deferred", "r2@a.test").await;
    h.restart().await;
    assert_eq!(h.engine().recovered(), 2);
    assert_eq!(h.engine().scheduler().totals().queued, 2);
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    h.advance(Duration::from_secs(70));
    h.wait_for("delivered", "r1@a.test").await;
    h.wait_for("delivered", "r2@a.test").await;
    assert_eq!(mx.transactions().len(), 2);
    // finished deliveries are not recovered again
    h.restart().await;
    assert_eq!(h.engine().recovered(), 0);
    h.shutdown().await;
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the real binary and return it with its HTTP address (read from its log).
fn spawn_sluice(config: &std::path::Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sluice");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(pos) = line.find("http=") {
                let addr: String = line[pos + 5..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("sluice did not start");
    let addr = addr.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':');
    (Proc(child), addr.parse().expect("http addr"))
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_delivery() {
    let net = 51;
    let dns = dns(net).start(ipa(net, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    let mut o = Opts::new(net);
    o.delivery = String::new();
    let text = config_text(dns.addr, &o).replace("retry = [\"1m\", \"5m\"]", "retry = [\"1s\"]");
    std::fs::write(&cfg, text).unwrap();

    let (proc1, addr) = spawn_sluice(&cfg);
    let rcpts: Vec<String> = (0..30).map(|i| format!("k{i}@a.test")).collect();
    for chunk in rcpts.chunks(10) {
        let body =
            serde_json::json!({"campaign": "crash", "recipients": chunk, "content": message("x")});
        let (code, v) = http(
            addr,
            "POST",
            "/api/v1/messages",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(code, 202, "{v}");
    }
    // acknowledged: now kill -9 (SIGKILL, no shutdown path)
    let mut proc1 = proc1;
    proc1.0.kill().expect("kill -9");
    proc1.0.wait().unwrap();

    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let (_proc2, _addr2) = spawn_sluice(&cfg);
    let txns = mx.wait_transactions(30, Duration::from_secs(30)).await;
    let got: HashSet<String> = txns.iter().flat_map(|t| t.rcpt_to.clone()).collect();
    let want: HashSet<String> = rcpts.into_iter().collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn graceful_shutdown_finishes_transactions_under_way() {
    let net = 52;
    // a slow MX: every reply takes 100 ms, so transactions are in flight at the stop
    let mx = FakeMx::start(
        ipa(net, 2),
        MX_PORT,
        MxScript {
            delay: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .await;
    let mut o = Opts::new(net);
    o.rules = Some(common::harness::catch_all(2, 100, ""));
    let mut h = Harness::start(dns(net), o).await;
    let rcpts: Vec<String> = (0..12).map(|i| format!("g{i}@a.test")).collect();
    let body = serde_json::json!({"recipients": rcpts, "content": message("x")});
    let (code, _) = http(
        h.http(),
        "POST",
        "/api/v1/messages",
        Some(&body.to_string()),
        None,
    )
    .await;
    assert_eq!(code, 202);
    h.wait_event("first delivery", |e| e.event == "delivered")
        .await;
    h.shutdown_keep_config().await; // stops while the next transactions are under way
    let before = mx.transactions().len();
    assert!(before < 12, "the stop came before the end");
    h.restart().await;
    let txns = mx.wait_transactions(12, Duration::from_secs(30)).await;
    let got: Vec<String> = txns.iter().flat_map(|t| t.rcpt_to.clone()).collect();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 12, "every delivery arrived");
    assert_eq!(got.len(), 12, "and none twice: {got:?}");
    h.shutdown().await;
}
