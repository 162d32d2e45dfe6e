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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
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
            let v = sluice::verp::Verp::new(&cfg.verp.domain, &cfg.verp.prefix, &cfg.verp.secret);
            match v.decode(&address) {
                Ok(id) => {
                    println!("{}", sluice::verp::id_str(id));
                    Ok(())
                }
                Err(e) => bail!("{address}: {e}"),
            }
        }
        Cmd::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
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
