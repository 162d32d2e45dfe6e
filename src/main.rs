//! The `sluice` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice::{Clock, Config, Engine};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Outbound mail delivery engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine.
    Run {
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
        /// Log format on stderr: human or json.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        log_format: String,
    },
    /// Validate the config (and rules); exits non-zero with file, line and key of each error.
    Check {
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// VERP tools.
    Verp {
        #[command(subcommand)]
        cmd: VerpCmd,
    },
    /// Queue and path status of the running engine (through its API).
    Status {
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
        /// Refresh every N seconds.
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Show or set the throughput level (slow, normal, fast, very_fast, boost, custom).
    Level {
        level: Option<String>,
        /// Only for this source (a new IP warms up while the others run at full level).
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Rules of the running engine.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Bounce qualification tools.
    Bounce {
        #[command(subcommand)]
        cmd: BounceCmd,
    },
    /// Quarantined addresses of the running engine.
    Quarantine {
        #[command(subcommand)]
        cmd: QuarantineCmd,
        #[arg(long, default_value = "sluice.toml", global = true)]
        config: PathBuf,
    },
    /// A self-contained demo: engine, DNS authority and fake MX hosts on loopback, a sample
    /// campaign, live progress and a summary (under a minute, needs nothing else).
    Demo {
        #[arg(long, default_value_t = 3000)]
        recipients: usize,
    },
    /// DNS records a sender domain must publish (aligned VERP, SPF, DKIM, DMARC).
    Domain {
        #[command(subcommand)]
        cmd: DomainCmd,
        #[arg(long, default_value = "sluice.toml", global = true)]
        config: PathBuf,
    },
    /// A fast fake MX for benchmarks and demos (PIPELINING, CHUNKING; counts what it gets).
    Sink {
        #[arg(long, default_value = "127.0.0.1:2526")]
        listen: std::net::SocketAddr,
        /// Pause before handling each read, to simulate a round-trip time.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Do not offer CHUNKING (BDAT).
        #[arg(long)]
        no_chunking: bool,
        /// Per-recipient reply: SUBSTRING=CODE TEXT, e.g. "bad@=550 5.1.1 user unknown".
        #[arg(long)]
        reply: Vec<String>,
    },
    /// Load generator: inject recipients u<k>@d<k mod D>.test over HTTP or SMTP.
    BenchInject {
        /// The engine's HTTP API (batches of --batch recipients).
        #[arg(long, conflicts_with = "smtp")]
        http: Option<std::net::SocketAddr>,
        /// The engine's SMTP submission listener (pipelined sessions).
        #[arg(long)]
        smtp: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 10_000)]
        recipients: usize,
        #[arg(long, default_value_t = 100)]
        domains: usize,
        /// Recipients per HTTP request or per SMTP transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent HTTP clients or SMTP sessions.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 5120)]
        size: usize,
    },
    /// Campaigns of the running engine: list, pause, resume, cancel, rate cap.
    Campaign {
        #[command(subcommand)]
        cmd: CampaignCmd,
        #[arg(long, default_value = "sluice.toml", global = true)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// List quarantined addresses.
    List {
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Page: addresses after this one.
        #[arg(long)]
        after: Option<String>,
    },
    /// Release an address.
    Remove { address: String },
    /// Add addresses from a CSV file (address[,tenant[,reason]] per line).
    Import { file: PathBuf },
    /// Write the quarantine as CSV (to a file, or stdout).
    Export { file: Option<PathBuf> },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Print the records to publish.
    Records {
        domain: String,
        #[arg(long, default_value = "table", value_parser = ["table", "zone", "json"])]
        format: String,
    },
    /// Resolve each record and report ok / missing / wrong.
    Check { domain: String },
}

#[derive(Subcommand)]
enum CampaignCmd {
    /// Campaigns with state and counts.
    List,
    Pause {
        campaign: String,
    },
    Resume {
        campaign: String,
    },
    /// Drop the campaign's queued deliveries (each gets a `cancelled` event).
    Cancel {
        campaign: String,
    },
    /// Cap the campaign's rate (messages per hour); 0 removes the cap.
    Rate {
        campaign: String,
        messages_per_hour: u64,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Reload the MX rules file (a file that does not validate is refused).
    Reload {
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BounceCmd {
    /// Qualify an SMTP reply text or a returned message: prints {"type","reason","status","recipient"}.
    Classify {
        /// The reply text, e.g. "550 5.1.1 <a@b.example>: user unknown".
        text: Option<String>,
        /// A returned message (DSN, ARF report, auto-reply, plain bounce).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Use the bounce rules of this config (default: the built-in rules if it is absent).
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum VerpCmd {
    /// Print the delivery id a VERP address belongs to (verified with verp.secret).
    Decode {
        address: String,
        #[arg(long, default_value = "sluice.toml")]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("{e}");
            bail!("configuration {} is invalid", path.display())
        }
    }
}

fn api_call(
    config: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let cfg = load(config)?;
    let client = sluice::cli::ApiClient::from_config(&cfg);
    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let v = rt.block_on(client.call(method, path, body.as_ref()))?;
    Ok(v)
}

/// Percent-encode a path segment or query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn bounce_rules(config: &std::path::Path) -> Result<sluice::bounce::BounceRules> {
    if !config.exists() {
        return Ok(sluice::bounce::BounceRules::builtin());
    }
    let cfg = load(config)?;
    match &cfg.rules.bounce {
        Some(p) => sluice::bounce::BounceRules::load(p).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(sluice::bounce::BounceRules::builtin()),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Status { config, watch } => loop {
            let v = api_call(&config, "GET", "/api/v1/status", None)?;
            if watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", sluice::cli::render_status(&v));
            match watch {
                Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs.max(1))),
                None => return Ok(()),
            }
        },
        Cmd::Level {
            level,
            source,
            config,
        } => {
            let v = match level {
                Some(l) => api_call(
                    &config,
                    "POST",
                    "/api/v1/level",
                    Some(serde_json::json!({"level": l, "source": source})),
                )?,
                None => api_call(&config, "GET", "/api/v1/level", None)?,
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Cmd::Rules {
            cmd: RulesCmd::Reload { config },
        } => {
            let v = api_call(&config, "POST", "/api/v1/rules/reload", None)?;
            println!("{v}");
            Ok(())
        }
        Cmd::Quarantine { cmd, config } => {
            let cfg = load(&config)?;
            let client = sluice::cli::ApiClient::from_config(&cfg);
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            rt.block_on(async {
                match cmd {
                    QuarantineCmd::List {
                        reason,
                        limit,
                        after,
                    } => {
                        let mut path = format!("/api/v1/quarantine?limit={limit}");
                        if let Some(r) = reason {
                            path.push_str(&format!("&reason={}", urlencode(&r)));
                        }
                        if let Some(a) = after {
                            path.push_str(&format!("&after={}", urlencode(&a)));
                        }
                        let v = client.call("GET", &path, None).await?;
                        print!("{}", sluice::cli::render_quarantine(&v));
                    }
                    QuarantineCmd::Remove { address } => {
                        let v = client
                            .call(
                                "DELETE",
                                &format!("/api/v1/quarantine/{}", urlencode(&address)),
                                None,
                            )
                            .await?;
                        println!("{v}");
                    }
                    QuarantineCmd::Import { file } => {
                        let body = std::fs::read(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?;
                        let v = client
                            .call_text("POST", "/api/v1/quarantine/import", &body)
                            .await?;
                        println!("{v}");
                    }
                    QuarantineCmd::Export { file } => {
                        let csv = client
                            .call_text("GET", "/api/v1/quarantine/export", b"")
                            .await?;
                        match file {
                            Some(f) => std::fs::write(&f, csv)
                                .with_context(|| format!("cannot write {}", f.display()))?,
                            None => print!("{csv}"),
                        }
                    }
                }
                Ok::<(), anyhow::Error>(())
            })
        }
        Cmd::Campaign { cmd, config } => {
            let (method, path, body) = match &cmd {
                CampaignCmd::List => ("GET", "/api/v1/campaigns".to_string(), None),
                CampaignCmd::Pause { campaign } => (
                    "POST",
                    format!("/api/v1/campaigns/{}/pause", urlencode(campaign)),
                    None,
                ),
                CampaignCmd::Resume { campaign } => (
                    "POST",
                    format!("/api/v1/campaigns/{}/resume", urlencode(campaign)),
                    None,
                ),
                CampaignCmd::Cancel { campaign } => (
                    "POST",
                    format!("/api/v1/campaigns/{}/cancel", urlencode(campaign)),
                    None,
                ),
                CampaignCmd::Rate {
                    campaign,
                    messages_per_hour,
                } => (
                    "POST",
                    format!("/api/v1/campaigns/{}/rate", urlencode(campaign)),
                    Some(
                        serde_json::json!({"messages_per_hour": if *messages_per_hour == 0 { None } else { Some(*messages_per_hour) }}),
                    ),
                ),
            };
            let v = api_call(&config, method, &path, body)?;
            match cmd {
                CampaignCmd::List => print!("{}", sluice::cli::render_campaigns(&v)),
                _ => println!("{v}"),
            }
            Ok(())
        }
        Cmd::Domain { cmd, config } => {
            let cfg = load(&config)?;
            let signer = if cfg.dkim.is_empty() {
                None
            } else {
                Some(
                    sluice::dkim::Signer::load(&cfg.dkim, &cfg.base_dir)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                )
            };
            let domain_arg = match &cmd {
                DomainCmd::Records { domain, .. } | DomainCmd::Check { domain } => domain.clone(),
            };
            let domain = sluice::domain::normalize_domain(&domain_arg)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let setup =
                sluice::domain::setup_for(&cfg, signer.as_ref()).dkim_of(signer.as_ref(), &domain);
            match cmd {
                DomainCmd::Records { format, .. } => {
                    let recs = sluice::domain::records(&domain, &setup);
                    match format.as_str() {
                        "zone" => print!("{}", sluice::domain::render_zone(&recs)),
                        "json" => println!("{}", serde_json::to_string_pretty(&recs)?),
                        _ => print!("{}", sluice::domain::render_table(&recs)),
                    }
                    Ok(())
                }
                DomainCmd::Check { .. } => {
                    let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
                    let checks = rt.block_on(async {
                        let resolver = sluice::dns::Resolver::new(&cfg.dns)?;
                        Ok::<_, anyhow::Error>(
                            sluice::domain::check(&domain, &setup, resolver.inner()).await,
                        )
                    })?;
                    let mut bad = 0;
                    for c in &checks {
                        if c.status != "ok" {
                            bad += 1;
                        }
                        println!(
                            "{:<8} {:<5} {:<40} {}{}",
                            c.status,
                            c.record.rtype,
                            c.record.name,
                            c.record.purpose,
                            c.note
                                .as_ref()
                                .map(|n| format!(" ({n})"))
                                .unwrap_or_default()
                        );
                    }
                    if bad > 0 {
                        bail!(
                            "{bad} of {} records are not as they should be",
                            checks.len()
                        );
                    }
                    Ok(())
                }
            }
        }
        Cmd::Demo { recipients } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let summary = rt.block_on(sluice::demo::run(sluice::demo::DemoOptions {
                recipients,
                progress: true,
            }))?;
            println!("{summary}");
            Ok(())
        }
        Cmd::Sink {
            listen,
            delay_ms,
            no_chunking,
            reply,
        } => {
            let mut rcpt_codes = Vec::new();
            for r in reply {
                let (sub, rest) = r.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--reply {r:?}: expected SUBSTRING=CODE TEXT")
                })?;
                let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let code: u16 = code
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--reply {r:?}: {code:?} is not a reply code"))?;
                rcpt_codes.push((sub.to_string(), code, text.to_string()));
            }
            let opts = sluice::sink::SinkOptions {
                delay: (delay_ms > 0).then(|| std::time::Duration::from_millis(delay_ms)),
                chunking: !no_chunking,
                rcpt_codes,
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            rt.block_on(async move {
                let sink = sluice::sink::Sink::start(listen, opts)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("sink listening on {} (Ctrl-C to stop)", sink.addr);
                let mut last = 0;
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                            let m = sink.messages();
                            println!("messages {m}  (+{}/s)  refused {}", m - last,
                                sink.stats.refused.load(std::sync::atomic::Ordering::Relaxed));
                            last = m;
                        }
                    }
                }
                Ok::<(), anyhow::Error>(())
            })
        }
        Cmd::BenchInject {
            http,
            smtp,
            recipients,
            domains,
            batch,
            concurrency,
            size,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            rt.block_on(async move {
                let content = sluice::loadgen::body(size);
                let t0 = std::time::Instant::now();
                match (http, smtp) {
                    (Some(a), _) => sluice::loadgen::inject_http(a, recipients, domains, batch, concurrency, &content, "bench").await?,
                    (None, Some(a)) => sluice::loadgen::inject_smtp(a, recipients, domains, batch, concurrency, &content).await?,
                    (None, None) => bail!("give --http ADDR or --smtp ADDR"),
                }
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "{}",
                    serde_json::json!({"recipients": recipients, "seconds": (secs * 1000.0).round() / 1000.0,
                                       "recipients_per_second": (recipients as f64 / secs).round()})
                );
                Ok(())
            })
        }
        Cmd::Bounce {
            cmd: BounceCmd::Classify { text, file, config },
        } => {
            let rules = bounce_rules(&config)?;
            let v = match (text, file) {
                (_, Some(f)) => {
                    let raw = std::fs::read(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    sluice::bounce::classify_file_json(&raw, &rules)
                }
                (Some(t), None) => sluice::bounce::classify_text_json(&t, &rules),
                (None, None) => bail!("give the reply text or --file MESSAGE.eml"),
            };
            println!("{v}");
            Ok(())
        }
        Cmd::Check { config } => {
            let cfg = load(&config)?;
            let rules = match sluice::engine::load_rules(&cfg) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    bail!("MX rules are invalid");
                }
            };
            println!(
                "{}: ok ({} rules, {} backoff rules)",
                rules.source.display(),
                rules.rules.len(),
                rules.backoffs.len()
            );
            match &cfg.rules.bounce {
                Some(p) => match sluice::bounce::BounceRules::load(p) {
                    Ok(b) => println!("{}: ok ({} bounce rules)", p.display(), b.rules().len()),
                    Err(e) => {
                        eprintln!("{e}");
                        bail!("bounce rules are invalid");
                    }
                },
                None => println!("(built-in bounce rules)"),
            }
            // providers reject a HELO that does not match the sending IP's reverse DNS
            let named: Vec<_> = cfg.sources.iter().filter(|s| s.ip.is_some()).collect();
            if !named.is_empty() {
                let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
                rt.block_on(async {
                    let Ok(resolver) = sluice::dns::Resolver::new(&cfg.dns) else {
                        return;
                    };
                    for s in named {
                        let (Some(ip), helo) = (s.ip, s.helo.as_deref().unwrap_or(&cfg.hostname)) else {
                            continue;
                        };
                        let ptr = tokio::time::timeout(std::time::Duration::from_secs(3), resolver.reverse(ip)).await;
                        match ptr {
                            Ok(Ok(names)) if names.iter().any(|n| n.eq_ignore_ascii_case(helo)) => {}
                            Ok(Ok(names)) if names.is_empty() => eprintln!(
                                "warning: source {:?} ({ip}) has no reverse DNS; providers expect it to be {helo:?}",
                                s.name
                            ),
                            Ok(Ok(names)) => eprintln!(
                                "warning: source {:?} ({ip}) reverse DNS is {} but its helo is {helo:?}; providers reject that",
                                s.name,
                                names.join(", ")
                            ),
                            Ok(Err(e)) => eprintln!("warning: cannot check reverse DNS of source {:?} ({ip}): {e}", s.name),
                            Err(_) => eprintln!("warning: reverse DNS of source {:?} ({ip}) timed out", s.name),
                        }
                    }
                });
            }
            if !cfg.dkim.is_empty() {
                match sluice::dkim::Signer::load(&cfg.dkim, &cfg.base_dir) {
                    Ok(s) => println!("DKIM: {} signing keys loaded", s.len()),
                    Err(e) => {
                        eprintln!("{}: {e}", config.display());
                        bail!("DKIM keys are invalid (mail would not be signed)");
                    }
                }
            }
            println!(
                "{}: ok (hostname {}, http {}, smtp {}, spool {})",
                config.display(),
                cfg.hostname,
                cfg.listen.http,
                cfg.listen
                    .smtp
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
                cfg.spool.path.display()
            );
            Ok(())
        }
        Cmd::Verp {
            cmd: VerpCmd::Decode { address, config },
        } => {
            let cfg = load(&config)?;
            let v = cfg.verp();
            match v.decode(&address) {
                Ok(id) => {
                    println!("{}", sluice::verp::id_str(id));
                    Ok(())
                }
                Err(e) => bail!("{address}: {e}"),
            }
        }
        Cmd::Run { config, log_format } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if log_format == "json" {
                builder.json().init();
            } else {
                builder.init();
            }
            let _ = rustls::crypto::ring::default_provider().install_default();
            let cfg = load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            rt.block_on(async move {
                let engine = Engine::start(cfg, Clock::System)
                    .await
                    .context("cannot start sluice")?;
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("cannot install SIGTERM handler")?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                engine.shutdown().await;
                Ok(())
            })
        }
    }
}
