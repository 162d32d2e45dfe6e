//! Remote rules sync: a valid file replaces the rules; an invalid one is refused and the
//! running rules stay (event, metric).

mod common;

use common::dns::DnsBuilder;
use common::harness::{catch_all, Harness, Opts};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-file HTTP server whose body can be changed.
async fn serve(body: Arc<Mutex<String>>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn sync_replaces_valid_rules_and_refuses_broken_ones() {
    let net = 135;
    let body = Arc::new(Mutex::new(catch_all(7, 50, "")));
    let addr = serve(body.clone()).await;
    let mut o = Opts::new(net);
    o.manual_clock = true;
    o.rules = Some(catch_all(2, 10, ""));
    let mut h = Harness::start(DnsBuilder::new(), o).await;
    h.shutdown_keep_config().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "[rules]\n",
        &format!("[rules]\nsync_url = \"http://{addr}/mx-rules.toml\"\nsync_interval = \"1d\"\n"),
    );
    std::fs::write(&h.config_path, text).unwrap();
    h.restart().await;
    let ev = h.wait_event("synced", |e| e.event == "rules_synced").await;
    assert!(
        ev.message.as_deref().unwrap().contains("1 rules"),
        "{:?}",
        ev.message
    );
    assert_eq!(h.engine().scheduler().rules().rules[0].max_connections, 7);
    // the local file was replaced too
    let local = std::fs::read_to_string(h.dir.path().join("rules/mx-rules.toml")).unwrap();
    assert!(local.contains("max_connections = 7"));

    // the next day the remote file is broken: refused, the running rules stay
    *body.lock().unwrap() = "[[rule]]\nname = \"default\"\nmx = [\"*\"]\nmax_connections = -5\nmessages_per_connection = 1\n".into();
    h.advance(Duration::from_secs(86_400));
    let ev = h
        .wait_event("refused", |e| e.event == "rules_sync_failed")
        .await;
    assert!(
        ev.message.as_deref().unwrap().contains("max_connections"),
        "{:?}",
        ev.message
    );
    assert_eq!(h.engine().scheduler().rules().rules[0].max_connections, 7);
    let (_, m) = common::harness::http_raw(h.http(), "GET", "/metrics", None, None).await;
    assert!(String::from_utf8_lossy(&m).contains("sluice_rule_sync_failures_total{rules=\"mx\"} 1"));
    h.shutdown().await;
}
