//! Wires the parts together: spool → scheduler → delivery, intake (HTTP, SMTP), events.

use crate::api::{self, ApiState};
use crate::bounce::{BounceRules, BounceRulesError};
use crate::campaign::Campaigns;
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{self, Ctx};
use crate::dns::{DnsSetupError, Resolver};
use crate::events::{Event, Events, EventsError};
use crate::intake::{smtp, Intake};
use crate::metrics::{Metrics, MetricsError};
use crate::quarantine::Quarantine;
use crate::queue::{Scheduler, Source};
use crate::rules::{Level, RuleSet, RulesError};
use crate::spool::{Spool, SpoolError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("MX rules: {0}")]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("bounce rules: {0}")]
    BounceRules(#[from] BounceRulesError),
    #[error("DKIM: {0}")]
    Dkim(#[from] crate::dkim::DkimError),
}

/// The bounce rules the config points at (or the built-in ones).
pub fn load_bounce_rules(cfg: &Config) -> Result<BounceRules, BounceRulesError> {
    match &cfg.rules.bounce {
        Some(p) => BounceRules::load(p),
        None => Ok(BounceRules::builtin()),
    }
}

/// The MX rules the config points at (or the built-in ones).
pub fn load_rules(cfg: &Config) -> Result<RuleSet, RulesError> {
    match &cfg.rules.mx {
        Some(p) => RuleSet::load(p),
        None => RuleSet::builtin(),
    }
}

/// Configured sources, or one `default` source with the OS-chosen address.
pub fn sources_of(cfg: &Config) -> Vec<Source> {
    if cfg.sources.is_empty() {
        return vec![Source {
            name: "default".into(),
            ip: None,
            helo: cfg.hostname.clone(),
            weight: 1,
            ipv4_only: false,
            warmup: Vec::new(),
        }];
    }
    cfg.sources
        .iter()
        .map(|s| Source {
            name: s.name.clone(),
            ip: s.ip,
            helo: s.helo.clone().unwrap_or_else(|| cfg.hostname.clone()),
            weight: s.weight.max(1),
            ipv4_only: s.ipv4_only,
            warmup: s
                .warmup
                .iter()
                .map(|w| crate::queue::warmup::Step {
                    level: Level::parse(&w.level).unwrap_or(Level::Slow),
                    daily_cap: w.daily_cap,
                })
                .collect(),
        })
        .collect()
}

/// Levels as configured (global, per source).
pub fn configured_levels(cfg: &Config) -> (Level, HashMap<String, Level>) {
    let level = Level::parse(&cfg.rules.level).unwrap_or_default();
    let per = cfg
        .sources
        .iter()
        .filter_map(|s| {
            s.level
                .as_deref()
                .and_then(Level::parse)
                .map(|l| (s.name.clone(), l))
        })
        .collect();
    (level, per)
}

/// Reload the MX rules file; a file that does not validate is refused and the running
/// rules stay. Returns the number of rules now in force.
pub fn reload_rules(cfg: &Config, sched: &Scheduler) -> Result<usize, RulesError> {
    let rules = load_rules(cfg)?;
    let n = rules.rules.len();
    sched.set_rules(Arc::new(rules));
    Ok(n)
}

/// Reload the bounce rules into the quarantine; a file that does not validate is refused.
pub fn reload_bounce_rules(cfg: &Config, q: &Quarantine) -> Result<usize, BounceRulesError> {
    let rules = load_bounce_rules(cfg)?;
    let n = rules.rules().len();
    q.set_rules(Arc::new(rules));
    Ok(n)
}

/// A running engine.
pub struct Engine {
    http_addr: SocketAddr,
    smtp_addr: Option<SocketAddr>,
    bounce_addr: Option<SocketAddr>,
    public_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    spool: Spool,
    events: Events,
    sched: Arc<Scheduler>,
    recovered: usize,
}

impl Engine {
    /// Open the spool, recover its deliveries, bind the listeners and start every task.
    pub async fn start(cfg: Config, clock: Clock) -> Result<Engine, EngineError> {
        let cfg = Arc::new(cfg);
        let spool = Spool::open(
            &cfg.spool.path,
            clock.clone(),
            cfg.spool.retention.0.as_millis() as u64,
        )?;
        let (events, _events_task) = Events::start_with(&cfg.events, Some(spool.clone()))?;
        let dns = Arc::new(Resolver::new(&cfg.dns)?);
        let rules = Arc::new(load_rules(&cfg)?);
        let sources = sources_of(&cfg);
        let pools = cfg
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.sources.clone()))
            .collect();
        let (mut level, mut source_levels) = configured_levels(&cfg);
        if let Some(saved) = spool.meta_get("level")? {
            if let Some(l) = Level::parse(&saved) {
                level = l;
            }
        }
        for src in &sources {
            if let Some(saved) = spool.meta_get(&format!("level:{}", src.name))? {
                if let Some(l) = Level::parse(&saved) {
                    source_levels.insert(src.name.clone(), l);
                }
            }
        }
        let metrics = Arc::new(Metrics::new()?);
        let bounce_rules = Arc::new(load_bounce_rules(&cfg)?);
        let quarantine = Arc::new(Quarantine::open(spool.clone(), bounce_rules)?);
        let campaigns = Arc::new(Campaigns::open(spool.clone(), cfg.campaigns.clone())?);
        let mut tr = Vec::new();
        for r in crate::bounce::Reason::ALL {
            for t in ["hard", "soft", "ignored"] {
                tr.push((t, r.as_str()));
            }
        }
        metrics.init_bounce(&tr);
        let (sched, feeds) = Scheduler::new(
            clock.clone(),
            crate::queue::Setup {
                sources,
                pools,
                rules,
                level,
                source_levels,
                warmup_limits: crate::queue::warmup::Limits {
                    max_bounce_ratio: cfg.rules.warmup_max_bounce_ratio,
                    max_deferral_ratio: cfg.rules.warmup_max_deferral_ratio,
                },
            },
            metrics.clone(),
            campaigns.clone(),
        );
        crate::queue::warmup::load(&sched, &spool)?;
        let (shutdown, shutdown_rx) = watch::channel(false);

        let http = TcpListener::bind(cfg.listen.http)
            .await
            .map_err(|e| EngineError::Listen(cfg.listen.http, e))?;
        let http_addr = http
            .local_addr()
            .map_err(|e| EngineError::Listen(cfg.listen.http, e))?;
        let smtp_listener = match cfg.listen.smtp {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| EngineError::Listen(a, e))?,
            ),
            None => None,
        };
        let smtp_addr = smtp_listener.as_ref().and_then(|l| l.local_addr().ok());
        let bounce_listener = match cfg.listen.bounce {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| EngineError::Listen(a, e))?,
            ),
            None => None,
        };
        let bounce_addr = bounce_listener.as_ref().and_then(|l| l.local_addr().ok());

        // Recover what was queued before a stop or crash.
        let recovered = {
            let s = spool.clone();
            tokio::task::spawn_blocking(move || s.load_active())
                .await
                .map_err(|e| SpoolError::Db(e.to_string()))??
        };
        let recovered_n = recovered.len();
        if recovered_n > 0 {
            tracing::info!(
                deliveries = recovered_n,
                "recovered queued deliveries from the spool"
            );
        }
        for d in &recovered {
            campaigns.on_recovered(d.campaign(), d.tenant());
        }
        sched.add_many(recovered);

        let signer = if cfg.dkim.is_empty() {
            None
        } else {
            Some(Arc::new(crate::dkim::Signer::load(
                &cfg.dkim,
                &cfg.base_dir,
            )?))
        };
        let renderer = Arc::new(crate::render::Renderer::new(
            cfg.unsubscribe.clone(),
            cfg.events.feedback_id.clone(),
            signer,
            cfg.delivery.dkim_on_error,
        ));
        let public_listener = match cfg.listen.public {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| EngineError::Listen(a, e))?,
            ),
            None => None,
        };
        let public_addr = public_listener.as_ref().and_then(|l| l.local_addr().ok());
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            sched: sched.clone(),
            spool: spool.clone(),
            dns,
            events: events.clone(),
            clock: clock.clone(),
            tls_broken: Default::default(),
            connections: Arc::new(Semaphore::new(cfg.delivery.max_connections as usize)),
            metrics: metrics.clone(),
            quarantine: quarantine.clone(),
            campaigns: campaigns.clone(),
            renderer,
            verp: cfg.verp(),
        });
        crate::memory::configure();
        let reclaim = crate::memory::Reclaim::new();
        let intake = Arc::new(Intake {
            cfg: cfg.clone(),
            spool: spool.clone(),
            sched: sched.clone(),
            events: events.clone(),
            verp: cfg.verp(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            quarantine: quarantine.clone(),
            campaigns: campaigns.clone(),
            reclaim: reclaim.clone(),
        });

        let mut tasks = vec![
            tokio::spawn(sched.clone().run_timer(shutdown_rx.clone())),
            tokio::spawn(reclaim.run(shutdown_rx.clone())),
            tokio::spawn(campaigns.clone().keep(shutdown_rx.clone())),
            tokio::spawn(crate::queue::warmup::keep(
                sched.clone(),
                spool.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(delivery::run_dispatcher(
                ctx.clone(),
                feeds.connect,
                shutdown_rx.clone(),
            )),
        ];
        tasks.push(tokio::spawn(delivery::run_resolver(
            ctx.clone(),
            feeds.resolve,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(delivery::run_expiry(
            ctx.clone(),
            feeds.expired,
            shutdown_rx.clone(),
        )));
        if let Some(l) = smtp_listener {
            let handler = Arc::new(smtp::SubmissionHandler {
                intake: intake.clone(),
                allow: cfg.smtp_allow(),
            });
            tasks.push(tokio::spawn(crate::smtp_server::serve(
                l,
                handler,
                shutdown_rx.clone(),
            )));
        }
        if let Some(l) = bounce_listener {
            let fbl_local = cfg
                .verp
                .fbl_address
                .as_ref()
                .map(|a| a.split('@').next().unwrap_or(a).to_ascii_lowercase());
            let handler = Arc::new(crate::feedback::FeedbackHandler {
                hostname: cfg.hostname.clone(),
                verp: cfg.verp(),
                fbl_local,
                spool: spool.clone(),
                quarantine: quarantine.clone(),
                events: events.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                campaigns: campaigns.clone(),
            });
            tasks.push(tokio::spawn(crate::smtp_server::serve(
                l,
                handler,
                shutdown_rx.clone(),
            )));
        }
        if let (Some(l), Some(u)) = (public_listener, &cfg.unsubscribe) {
            let state = Arc::new(crate::public::PublicState {
                tokens: crate::unsubscribe::Tokens::new(&u.secret),
                quarantine: quarantine.clone(),
                events: events.clone(),
                clock: clock.clone(),
            });
            let router = crate::public::router(state);
            let mut prx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let r = axum::serve(l, router)
                    .with_graceful_shutdown(async move {
                        let _ = prx.changed().await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "public listener failed");
                }
            }));
        }
        if cfg.rules.sync_url.is_some() || cfg.rules.bounce_sync_url.is_some() {
            let sync = crate::rules_sync::Sync {
                cfg: cfg.clone(),
                sched: sched.clone(),
                quarantine: quarantine.clone(),
                metrics: metrics.clone(),
                events: events.clone(),
                clock: clock.clone(),
            };
            tasks.push(tokio::spawn(sync.run(shutdown_rx.clone())));
        }
        let router = api::router(Arc::new(ApiState {
            intake: intake.clone(),
            ctx: ctx.clone(),
            token: cfg.api.token.clone(),
        }));
        let reload_ctx = (
            cfg.clone(),
            sched.clone(),
            metrics.clone(),
            quarantine.clone(),
        );
        let mut hup_rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        match reload_rules(&reload_ctx.0, &reload_ctx.1) {
                            Ok(n) => {
                                reload_ctx.2.reloads.with_label_values(&["mx", "ok"]).inc();
                                tracing::info!(rules = n, "rules reloaded (SIGHUP)")
                            }
                            Err(e) => {
                                reload_ctx.2.reloads.with_label_values(&["mx", "refused"]).inc();
                                tracing::error!(error = %e, "rules reload refused; the running rules stay")
                            }
                        }
                        match reload_bounce_rules(&reload_ctx.0, &reload_ctx.3) {
                            Ok(n) => {
                                reload_ctx.2.reloads.with_label_values(&["bounce", "ok"]).inc();
                                tracing::info!(rules = n, "bounce rules reloaded (SIGHUP)")
                            }
                            Err(e) => {
                                reload_ctx.2.reloads.with_label_values(&["bounce", "refused"]).inc();
                                tracing::error!(error = %e, "bounce rules reload refused; the running rules stay")
                            }
                        }
                    }
                    _ = hup_rx.changed() => return,
                }
            }
        }));
        let mut srx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(http, router)
                .with_graceful_shutdown(async move {
                    let _ = srx.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        tracing::info!(http = %http_addr, smtp = ?smtp_addr, "sluice started");
        Ok(Engine {
            http_addr,
            smtp_addr,
            bounce_addr,
            public_addr,
            shutdown,
            tasks,
            spool,
            events,
            sched,
            recovered: recovered_n,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    pub fn smtp_addr(&self) -> Option<SocketAddr> {
        self.smtp_addr
    }
    /// The public (unsubscribe) listener, when configured.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public_addr
    }
    /// The feedback (bounce) listener, when configured.
    pub fn bounce_addr(&self) -> Option<SocketAddr> {
        self.bounce_addr
    }
    /// Deliveries recovered from the spool at start.
    pub fn recovered(&self) -> usize {
        self.recovered
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// Stop listeners and connections, flush the spool and release its file.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.events.close().await;
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
    }
}
