//! CLI commands that talk to a running engine: status, level, rules reload.

mod common;

use common::dns::DnsBuilder;
use common::harness::{Harness, Opts};
use std::process::Command;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn status_and_level_talk_to_the_running_engine() {
    let net = 70;
    let mut o = Opts::new(net);
    o.extra = "[api]\ntoken = \"cli-token-0123456789abcdef\"\n".into();
    let h = Harness::start(DnsBuilder::new(), o).await;
    // a config for the CLI that names the engine's actual port
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"{}\"", h.http()),
    );
    let cli_cfg = h.dir.path().join("cli.toml");
    std::fs::write(&cli_cfg, text).unwrap();
    let cfg = cli_cfg.to_str().unwrap().to_string();

    let (code, out, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice(&["status", "--config", &cfg])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued 0") && out.contains("PATH"), "{out}");

    let (code, out, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice(&["level", "fast", "--config", &cfg])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"fast\""), "{out}");
    assert_eq!(h.engine().scheduler().levels().0.as_str(), "fast");

    let (code, _, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || sluice(&["level", "warp", "--config", &cfg])
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("unknown level"), "{err}");

    let (code, out, err) =
        tokio::task::spawn_blocking(move || sluice(&["rules", "reload", "--config", &cfg]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded"), "{out}");
    h.shutdown().await;
}

#[tokio::test]
async fn sink_and_bench_inject_reproduce_a_run() {
    let net = 71;
    let mut dns = DnsBuilder::new().a("mx.sink.test", common::harness::ip(net, 10));
    for d in 0..10 {
        dns = dns.mx(&format!("d{d}.test"), 10, "mx.sink.test");
    }
    let mut sink = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "sink",
            "--listen",
            &format!(
                "{}:{}",
                common::harness::ip(net, 10),
                common::harness::MX_PORT
            ),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sink");
    // wait until the sink says it listens
    let stderr = sink.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default()
    })
    .await
    .unwrap();
    assert!(line.contains("sink listening"), "{line}");
    let mut h = Harness::start(dns, Opts::new(net)).await;
    let addr = h.http().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        sluice(&[
            "bench-inject",
            "--http",
            &addr,
            "--recipients",
            "200",
            "--domains",
            "10",
            "--batch",
            "50",
            "--size",
            "2000",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"recipients\":200"), "{out}");
    for i in [0, 99, 199] {
        h.wait_for("delivered", &format!("u{i}@d{}.test", i % 10))
            .await;
    }
    let _ = sink.kill();
    let _ = sink.wait();
    h.shutdown().await;
}
