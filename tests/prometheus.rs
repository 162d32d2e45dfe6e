//! Monitoring and deployment files under deploy/: promtool checks and alert unit tests, a
//! real Prometheus scraping an in-process engine, the metric names the dashboard and the
//! alerts use, and the validity of the dashboard, YAML, container and systemd files.
//! Each test that starts an engine owns 127.N.0.0/24 with N in 90..99.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`) and python3 with PyYAML;
//! .ci/run installs them. `systemd-analyze` is optional.

mod common;

use common::dns::DnsBuilder;
use common::harness::{http, http_raw, ip, ipa, Harness, Opts, MX_PORT};
use common::mx::{FakeMx, MxScript};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(rel: &str) -> String {
    let p = deploy(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A program on PATH, or None.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A program the tests cannot do without: a clear failure when it is missing.
fn required(name: &str, install: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("`{name}` not found on PATH: install it ({install}); .ci/run does this before the tests")
    })
}

fn promtool() -> PathBuf {
    required("promtool", "apt-get install prometheus")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deliver one message to a.test through a fake MX; the engine is left running.
async fn engine_with_one_delivery(net: u8) -> (Harness, FakeMx) {
    let mx = FakeMx::start(ipa(net, 2), MX_PORT, MxScript::default()).await;
    let dns = DnsBuilder::new()
        .mx("a.test", 10, "mx1.a.test")
        .a("mx1.a.test", ip(net, 2));
    let mut h = Harness::start(dns, Opts::new(net)).await;
    h.inject(&["ana@a.test"]).await;
    h.wait_for("delivered", "ana@a.test").await;
    (h, mx)
}

// ---------------------------------------------------------------- a. promtool

#[test]
fn promtool_accepts_scrape_configs_and_alert_rules() {
    let promtool = promtool();
    for cfg in ["prometheus.yml", "prometheus.compose.yml"] {
        run(Command::new(&promtool)
            .args(["check", "config"])
            .arg(deploy(cfg)));
    }
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("alerts.yml")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 5 rules found"), "{text}");
}

#[test]
fn alert_rules_fire_on_synthetic_series() {
    // deploy/alerts_test.yml: each alert fires when it should and stays quiet on a healthy
    // engine (labels and rendered annotations included).
    run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(deploy("alerts_test.yml")));
}

// ---------------------------------------------------------------- b. real Prometheus

/// Kills and reaps the Prometheus child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Percent-encode a PromQL query for a URL query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_a_delivery_from_a_running_engine() {
    let prometheus = required("prometheus", "apt-get install prometheus");
    let net = 90;
    let (h, mx) = engine_with_one_delivery(net).await;
    assert_eq!(mx.transactions().len(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    let alerts = deploy("alerts.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n",
            alerts = alerts.display(),
            target = h.http()
        ),
    )
    .expect("write prometheus config");
    let port = free_port();
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", prometheus.display()));
    let guard = ChildGuard(child);
    let log_text =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // Prometheus starts, scrapes every second: poll its query API (bounded).
    let query = format!(
        "/api/v1/query?query={}",
        urlencode("sluice_deliveries_total{job=\"sluice\", result=\"delivered\"}")
    );
    let mut last = Value::Null;
    let mut found = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tokio::net::TcpStream::connect(web).await.is_err() {
            continue;
        }
        let (code, v) = http(web, "GET", &query, None, None).await;
        if code == 200 {
            let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
            found = results.iter().any(|r| {
                r["metric"]["rule"] == "default"
                    && r["metric"]["instance"] == h.http().to_string()
                    && r["value"][1] == "1"
            });
        }
        last = v;
        if found {
            break;
        }
    }
    assert!(
        found,
        "Prometheus never saw sluice_deliveries_total{{rule=\"default\",result=\"delivered\"}} = 1; last answer: {last}\n--- prometheus log\n{}",
        log_text()
    );

    // The target is up and the alert rules evaluate without error against the real series.
    let (code, v) = http(
        web,
        "GET",
        &format!("/api/v1/query?query={}", urlencode("up{job=\"sluice\"}")),
        None,
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
    let mut rules = Value::Null;
    let mut healthy = false;
    for _ in 0..40 {
        let (code, v) = http(web, "GET", "/api/v1/rules", None, None).await;
        assert_eq!(code, 200, "{v}");
        let all: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules = v;
        if all.len() == 5 && all.iter().all(|r| r["health"] == "ok") {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(healthy, "alert rules not all loaded and healthy: {rules}");
    // A healthy engine fires nothing (SluiceDown included).
    let (_, v) = http(web, "GET", "/api/v1/alerts", None, None).await;
    let firing: Vec<&Value> = v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "alerts firing: {firing:?}");

    drop(guard);
    h.shutdown().await;
}

// ---------------------------------------------------------------- c. metric names

/// Every `sluice_*` metric family named in `text`, histogram series suffixes stripped.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find("sluice_") {
        // only whole tokens: not preceded by an identifier character
        let before = rest[..pos].chars().next_back();
        let tail = &rest[pos..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let mut name = tail[..len].trim_end_matches('_');
            for suffix in ["_bucket", "_sum", "_count"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            out.insert(name.to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// Metric families announced by `# HELP <name>` lines of a /metrics page.
fn help_families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let net = 91;
    let (h, _mx) = engine_with_one_delivery(net).await;
    let (code, page) = http_raw(h.http(), "GET", "/metrics", None, None).await;
    assert_eq!(code, 200);
    let page = String::from_utf8(page).expect("utf-8 metrics");
    let live = help_families(&page);
    assert!(live.contains("sluice_deliveries_total"), "{page}");
    assert!(
        page.contains("sluice_deliveries_total{result=\"delivered\",rule=\"default\"} 1"),
        "{page}"
    );

    for file in ["grafana/sluice.json", "alerts.yml"] {
        let used = referenced_metrics(&read(file));
        assert!(used.len() >= 3, "{file}: too few metrics found: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|n| !live.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "deploy/{file} uses {missing:?}, which sluice's /metrics does not announce (# HELP).\nannounced: {live:?}"
        );
    }
    h.shutdown().await;
}

#[test]
fn metric_name_extraction() {
    let got = referenced_metrics(
        "rate(sluice_a_total[5m]) / x_sluice_no + sluice_lat_seconds_bucket{le} sluice_b_sum sluice_c_count sluice_",
    );
    let want: BTreeSet<String> = [
        "sluice_a_total",
        "sluice_lat_seconds",
        "sluice_b",
        "sluice_c",
        "sluice",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- d. file validity

#[test]
fn dashboard_is_valid_and_has_the_expected_panels() {
    let dash: Value = serde_json::from_str(&read("grafana/sluice.json")).expect("dashboard JSON");
    assert_eq!(dash["uid"], "sluice-overview");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "the DS_PROMETHEUS datasource variable is missing"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {id}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(!e.trim().is_empty());
            assert_eq!(
                e.matches('(').count(),
                e.matches(')').count(),
                "unbalanced: {e}"
            );
            exprs.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
        }
    }
    let has = |title: &str, needle: &str| {
        assert!(
            exprs.iter().any(|(t, e)| t == title && e.contains(needle)),
            "no panel {title:?} querying {needle:?}"
        )
    };
    has(
        "Throughput by result",
        "sum by (result) (rate(sluice_deliveries_total",
    );
    has("Queue depth by state", "sum by (state) (sluice_queue_size");
    has(
        "Connections vs limits per rule",
        "sluice_connections_active",
    );
    has("Connections vs limits per rule", "sluice_connections_limit");
    has(
        "Bounce reasons",
        "sum by (reason) (increase(sluice_bounces_total",
    );
    has(
        "Delivery latency percentiles (delivered)",
        "histogram_quantile(0.99, sum by (le) (rate(sluice_delivery_latency_seconds_bucket",
    );
    has("Throughput level per source", "sluice_throughput_level{");
}

/// Load YAML files (all documents) with PyYAML; returns each file's documents as JSON.
fn load_yaml(files: &[PathBuf]) -> Vec<Vec<Value>> {
    let python = required("python3", "apt-get install python3");
    let script = "import json, sys, yaml\nprint(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))";
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("run python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'yaml'"),
        "PyYAML is missing: pip install pyyaml (.ci/run does)"
    );
    assert!(out.status.success(), "YAML does not load: {err}");
    serde_json::from_slice(&out.stdout).expect("python JSON")
}

#[test]
fn yaml_files_load_and_hang_together() {
    let names = [
        "prometheus.yml",
        "prometheus.compose.yml",
        "alerts.yml",
        "alerts_test.yml",
        "docker-compose.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/sluice.yml",
        "k8s/statefulset.yaml",
    ];
    let files: Vec<PathBuf> = names.iter().map(|n| deploy(n)).collect();
    let docs = load_yaml(&files);
    let doc = |name: &str| -> &Vec<Value> { &docs[names.iter().position(|n| *n == name).unwrap()] };

    let prom = &doc("prometheus.yml")[0];
    assert_eq!(prom["scrape_configs"][0]["job_name"], "sluice");
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "127.0.0.1:8025"
    );
    assert_eq!(prom["rule_files"][0], "alerts.yml");

    // docker compose: three services, every bind-mounted file exists next to the compose file.
    let compose = &doc("docker-compose.yml")[0];
    for s in ["sluice", "prometheus", "grafana"] {
        assert!(
            compose["services"][s].is_object(),
            "compose service {s} missing"
        );
    }
    assert_eq!(
        compose["services"]["sluice"]["build"]["dockerfile"],
        "deploy/Dockerfile"
    );
    for (name, svc) in compose["services"].as_object().unwrap() {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(deploy(src).exists(), "compose {name}: {src} does not exist");
            }
        }
    }

    let ds = &doc("grafana/provisioning/datasources/prometheus.yml")[0];
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert_eq!(ds["datasources"][0]["uid"], "prometheus");
    let dp = &doc("grafana/provisioning/dashboards/sluice.yml")[0];
    let path = dp["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(
        compose["services"]["grafana"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v
                .as_str()
                .unwrap()
                .contains(&format!("./grafana/sluice.json:{path}/"))),
        "compose must mount the dashboard under the provider path {path}"
    );

    // Kubernetes: ConfigMap, Services, a StatefulSet with a spool PVC and /healthz probes.
    let k8s = doc("k8s/statefulset.yaml");
    let kind = |k: &str| -> Vec<&Value> { k8s.iter().filter(|d| d["kind"] == k).collect() };
    assert_eq!(kind("ConfigMap").len(), 1);
    assert!(!kind("Service").is_empty());
    let sts = kind("StatefulSet");
    assert_eq!(sts.len(), 1);
    let spec = &sts[0]["spec"];
    let pvc = &spec["volumeClaimTemplates"][0];
    let c = &spec["template"]["spec"]["containers"][0];
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["name"] == pvc["metadata"]["name"] && m["mountPath"] == "/var/lib/sluice"));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    assert!(k8s
        .iter()
        .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == spec["serviceName"]));
}

/// `sluice check` a config that names rules/mx-rules.toml relative to itself (as in the
/// image, where rules/ sits in /etc/sluice).
fn sluice_check(config_text: &str, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo().join("rules"), dir.path().join("rules")).expect("symlink");
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, config_text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run sluice check");
    assert!(
        out.status.success(),
        "{what} fails `sluice check`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn container_configs_pass_sluice_check() {
    sluice_check(&read("sluice.docker.toml"), "deploy/sluice.docker.toml");
    let k8s = load_yaml(&[deploy("k8s/statefulset.yaml")]);
    let cm = k8s[0]
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let text = cm["data"]["sluice.toml"].as_str().expect("sluice.toml key");
    sluice_check(text, "the k8s ConfigMap's sluice.toml");
}

#[test]
fn dockerfile_is_consistent() {
    let text = read("Dockerfile");
    // Join continuation lines, drop comments.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage build: {from:?}");
    assert!(
        from[0].starts_with("FROM rust:1.95-bookworm AS builder"),
        "{}",
        from[0]
    );
    assert_eq!(*from[1], "FROM debian:bookworm-slim");
    let runtime: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("FROM debian"))
        .copied()
        .collect();
    let has = |prefix: &str| runtime.iter().any(|l| l.starts_with(prefix));
    assert!(has("USER sluice"), "runs as the sluice user");
    assert!(has("VOLUME /var/lib/sluice"));
    assert!(has("EXPOSE 8025 2525"));
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK") && l.contains("http://127.0.0.1:8025/healthz")));
    assert!(runtime.iter().any(|l| l.starts_with("ENTRYPOINT")
        && l.contains(r#""/usr/local/bin/sluice", "run", "--config", "/etc/sluice/sluice.toml""#)));
    // Every COPY from the build context (the repository root) names something that exists.
    for l in &lines {
        let Some(args) = l.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    // The runtime config is the one whose validity container_configs_pass_sluice_check proves.
    assert!(lines.contains(&"COPY deploy/sluice.docker.toml /etc/sluice/sluice.toml"));
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("note: systemd-analyze not installed; deploy/sluice.service not verified");
        return;
    };
    // verify insists that ExecStart binaries exist: point them at the built one.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("sluice.service");
    let text =
        read("sluice.service").replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    std::fs::write(&unit, text).expect("write unit");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and unparsable values are only warnings (exit 0): fail on any line
    // about the unit file itself.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("sluice.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify deploy/sluice.service:\n{err}"
    );
}
