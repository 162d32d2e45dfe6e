//! Delivery: one task per outgoing connection, plus the DNS resolution and expiry tasks.
//!
//! A connection task serves one queue — (path, source, MX site). It walks the site's
//! targets in order (backup MX on refusal, timeout, a 421 greeting when the rule allows, a
//! 4xx to EHLO or to the first MAIL), then carries deliveries from the queue, one
//! transaction each, while the path's limits allow, up to `messages_per_connection`; it
//! waits up to the rule's `idle_timeout` for more work, then quits.

pub mod client;
pub mod outcome;
pub mod tls;

use crate::clock::Clock;
use crate::config::{Config, TlsMode};
use crate::dns::{ordered_targets, Resolver, Target};
use crate::events::Events;
use crate::queue::{ConnInfo, Next, Scheduler};
use crate::rules::{BackoffAction, RuleTls};
use crate::spool::{Delivery, Spool};
use client::{Params, Reply, Session, SessionError, TxnOutcome};
use dashmap::DashMap;
use outcome::AttemptInfo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// Everything a connection task needs.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub sched: Arc<Scheduler>,
    pub spool: Spool,
    pub dns: Arc<Resolver>,
    pub events: Events,
    pub clock: Clock,
    /// MX addresses whose STARTTLS failed, until (clock ms).
    pub tls_broken: DashMap<IpAddr, u64>,
    pub connections: Arc<Semaphore>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub quarantine: Arc<crate::quarantine::Quarantine>,
    pub campaigns: Arc<crate::campaign::Campaigns>,
    pub renderer: Arc<crate::render::Renderer>,
    pub verp: crate::verp::Verp,
}

/// Run `work` as a task for every request until the channel closes or shutdown; returns the
/// tasks still running.
async fn spawn_each<T, F, Fut>(
    mut requests: mpsc::UnboundedReceiver<T>,
    mut shutdown: watch::Receiver<bool>,
    work: F,
) -> JoinSet<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            req = requests.recv() => match req {
                Some(r) => {
                    tasks.spawn(work(r));
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    tasks
}

/// Spawns a connection task for every request from the scheduler.
pub async fn run_dispatcher(
    ctx: Arc<Ctx>,
    requests: mpsc::UnboundedReceiver<u64>,
    shutdown: watch::Receiver<bool>,
) {
    let c = ctx.clone();
    let mut tasks = spawn_each(requests, shutdown, move |qid| {
        let ctx = c.clone();
        async move {
            let mut established = false;
            if let Ok(_permit) = ctx.connections.clone().acquire_owned().await {
                if let Some(info) = ctx.sched.conn_info(qid) {
                    established = serve_queue(&ctx, qid, &info).await;
                }
            }
            ctx.sched.connection_closed(qid, established);
        }
    })
    .await;
    // Graceful stop: no new transaction starts; those under way finish (bounded), so no
    // delivery is lost or sent twice.
    ctx.sched.set_paused(true);
    let grace = ctx
        .cfg
        .delivery
        .data_timeout
        .0
        .min(std::time::Duration::from_secs(60));
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still busy after the grace period; aborting them");
    }
    tasks.shutdown().await;
}

/// Resolves domains for the scheduler (concurrently; answers are cached by the resolver).
pub async fn run_resolver(
    ctx: Arc<Ctx>,
    requests: mpsc::UnboundedReceiver<String>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = spawn_each(requests, shutdown, move |domain| {
        let ctx = ctx.clone();
        async move { resolve(&ctx, domain).await }
    })
    .await;
    tasks.shutdown().await;
}

/// Resolve one domain and route (or fail) the deliveries waiting for it.
async fn resolve(ctx: &Ctx, domain: String) {
    let plan = match ctx.cfg.delivery.relay_host {
        // a smarthost: every domain goes to one address, no MX lookup
        Some(ip) => Ok(Arc::new(vec![crate::dns::MxHost {
            name: ip.to_string(),
            preference: 0,
            addrs: vec![ip],
        }])),
        None => ctx.dns.plan(&domain).await,
    };
    let label = match &plan {
        Ok(_) => "ok",
        Err(crate::dns::DnsFailure::NoDomain(_)) => "nxdomain",
        Err(crate::dns::DnsFailure::NullMx(_)) => "null_mx",
        Err(crate::dns::DnsFailure::NoMailHost(_)) => "no_mail_host",
        Err(crate::dns::DnsFailure::Temporary(..)) => "temporary",
    };
    ctx.metrics.dns.with_label_values(&[label]).inc();
    let failed = ctx.sched.resolved(&domain, &plan);
    if let Err(f) = plan {
        let (code, enh) = f.status();
        let info = AttemptInfo {
            code: Some(code),
            enhanced: Some(enh.to_string()),
            response: format!("{code} {enh} {f}"),
            ..AttemptInfo::default()
        };
        for d in failed {
            if f.is_permanent() {
                ctx.bounced(d, info.clone(), None).await;
            } else {
                ctx.deferred(d, info.clone(), None).await;
            }
        }
    }
}

/// Finishes deliveries that expired while queued.
pub async fn run_expiry(
    ctx: Arc<Ctx>,
    mut expired: mpsc::UnboundedReceiver<(Delivery, Option<u64>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            d = expired.recv() => match d {
                Some((d, qid)) => ctx.expired(d, qid).await,
                None => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn info_for(
    t: Option<&Target>,
    local: Option<SocketAddr>,
    r: &Reply,
    tls: Option<&str>,
) -> AttemptInfo {
    AttemptInfo {
        mx: t.map(|t| t.host.clone()),
        ip: t.map(|t| t.ip.to_string()),
        source_ip: local.map(|l| l.ip().to_string()),
        code: Some(r.code),
        enhanced: r.enhanced.clone(),
        response: r.line(),
        tls: tls.map(str::to_string),
    }
}

impl Ctx {
    fn params(&self, ip: IpAddr, info: &ConnInfo) -> Params {
        let d = &self.cfg.delivery;
        let broken = self
            .tls_broken
            .get(&ip)
            .map(|until| *until > self.clock.now_ms())
            .unwrap_or(false);
        let tls = match info.rule.tls {
            RuleTls::Off => false,
            RuleTls::Required => true,
            RuleTls::Opportunistic => d.tls == TlsMode::Opportunistic && !broken,
        };
        Params {
            helo: info.helo.clone(),
            connect_timeout: d.connect_timeout.0,
            command_timeout: d.command_timeout.0,
            data_timeout: d.data_timeout.0,
            source_ip: info.source_ip,
            starttls: tls,
            require_tls: info.rule.tls == RuleTls::Required,
        }
    }

    /// Check a negative reply against the backoff rules; a connection-level 421 also makes
    /// the whole path wait (then it resumes at the backoff rule's factor, or half speed).
    fn react(&self, qid: u64, info: &ConnInfo, r: &Reply) {
        let rules = self.sched.rules();
        let text = r.line();
        let matched = rules.backoff_for(&info.rule.name, r.code, &text);
        if r.code == 421 {
            let first = info
                .rule
                .retry
                .as_ref()
                .and_then(|v| v.first().copied())
                .or_else(|| self.cfg.delivery.retry.first().map(|d| d.0))
                .unwrap_or(std::time::Duration::from_secs(300));
            let ms = (first.as_millis() as u64).min(300_000);
            let (factor, step, name) = match matched {
                Some(b) if b.action == BackoffAction::Backoff => {
                    (b.factor, b.duration.as_millis() as u64, b.name.as_str())
                }
                _ => (0.5, ms.max(60_000), "connection-level deferral"),
            };
            self.sched.defer_path(
                qid,
                ms,
                factor,
                step,
                name,
                &format!("421 ({})", truncate(&text, 80)),
            );
            if let Some(b) = matched.filter(|b| b.action == BackoffAction::Suspend) {
                self.sched
                    .backoff(qid, b, &format!("{} ({})", b.name, truncate(&text, 80)));
            }
        } else if let Some(b) = matched {
            self.sched
                .backoff(qid, b, &format!("{} ({})", b.name, truncate(&text, 80)));
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

enum HostResult {
    /// The queue is empty or the connection carried its share: done.
    Done,
    /// Try the next host; `network` says the failure was reaching it, not a reply.
    Next(AttemptInfo, bool),
    /// Stop trying hosts: the path was told to wait.
    Stop(AttemptInfo),
}

/// Serve one queue over one connection (with fallback across its MX targets). Returns
/// whether a connection was established.
pub async fn serve_queue(ctx: &Ctx, qid: u64, info: &ConnInfo) -> bool {
    let mut last = AttemptInfo {
        code: Some(451),
        enhanced: Some("4.4.0".into()),
        response: "451 4.4.0 no usable MX address".into(),
        ..AttemptInfo::default()
    };
    let mut all_network = true;
    let mut stopped = false;
    let mut established = false;
    for target in ordered_targets(&info.targets) {
        if info.ipv4_only && !target.ip.is_ipv4() {
            continue;
        }
        match serve_host(ctx, qid, info, &target, &mut established).await {
            HostResult::Done => return established,
            HostResult::Next(i, network) => {
                all_network &= network;
                last = i;
            }
            HostResult::Stop(i) => {
                last = i;
                all_network = false;
                stopped = true;
                break;
            }
        }
    }
    if last.code == Some(421) && !stopped {
        let r = Reply {
            code: 421,
            enhanced: last.enhanced.clone(),
            text: last.response.clone(),
        };
        ctx.react(qid, info, &r);
    }
    // Every host failed. A source that cannot reach the site leaves its share to the others.
    let stuck = if all_network {
        ctx.sched.unreachable(qid)
    } else {
        ctx.sched.drain(qid)
    };
    for d in stuck {
        ctx.deferred(d, last.clone(), Some(qid)).await;
    }
    established
}

async fn serve_host(
    ctx: &Ctx,
    qid: u64,
    info: &ConnInfo,
    target: &Target,
    established: &mut bool,
) -> HostResult {
    let addr = SocketAddr::new(target.ip, ctx.cfg.delivery.port);
    let mut session = match Session::connect(addr, &target.host, ctx.params(target.ip, info)).await
    {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, SessionError::Tls(_)) && info.rule.tls != RuleTls::Required {
                let until =
                    ctx.clock.now_ms() + ctx.cfg.delivery.tls_broken_for.0.as_millis() as u64;
                ctx.tls_broken.insert(target.ip, until);
                tracing::info!(mx = %target.host, ip = %target.ip, error = %e, "STARTTLS failed; next attempts go without TLS");
            }
            let network = matches!(
                e,
                SessionError::Connect(..) | SessionError::Timeout("connect")
            );
            let reply = e.as_reply();
            if let Some(r) = e.reply() {
                if r.code == 421 && info.rule.fallback_on_421 {
                    // try the backup; the path waits only if every host says 421
                    return HostResult::Next(info_for(Some(target), None, &reply, None), false);
                }
                ctx.react(qid, info, r);
                if r.code == 421 {
                    return HostResult::Stop(info_for(Some(target), None, &reply, None));
                }
            }
            return HostResult::Next(info_for(Some(target), None, &reply, None), network);
        }
    };
    if !*established {
        *established = true;
        ctx.sched.connection_ready(qid);
    }
    let local = Some(session.local);
    let mut sent = 0u32;
    loop {
        let d = match ctx.sched.next_for(qid, sent) {
            Next::Deliver(d) => d,
            Next::Stop => break,
            Next::Wait(ms) => {
                // the hourly rate's next token is near: keep the connection for it
                ctx.clock.sleep(std::time::Duration::from_millis(ms)).await;
                ctx.sched.paced(qid);
                continue;
            }
            Next::Empty => {
                // wait for more work up to the idle timeout
                let notified = info.notify.notified();
                if tokio::time::timeout(info.rule.idle_timeout, notified)
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        if let Some(reason) = ctx
            .quarantine
            .blocked(d.tenant(), &d.recipient, ctx.clock.now_ms())
        {
            ctx.suppressed(d, &reason, Some(qid)).await;
            continue;
        }
        let body = match ctx.spool.body(d.body_id) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "message body unreadable");
                let r = Reply {
                    code: 451,
                    enhanced: Some("4.3.0".into()),
                    text: format!("local error: {e}"),
                };
                ctx.deferred(d, info_for(None, None, &r, None), Some(qid))
                    .await;
                continue;
            }
        };
        let body = match ctx.renderer.render(&d, &body) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot render message");
                let r = Reply {
                    code: 451,
                    enhanced: Some("4.3.0".into()),
                    text: format!("local error: {e}"),
                };
                ctx.deferred(d, info_for(None, None, &r, None), Some(qid))
                    .await;
                continue;
            }
        };
        let tls = session.tls_version().map(str::to_string);
        match session
            .transaction(&ctx.verp.envelope_of(&d), &d.recipient, &body)
            .await
        {
            Ok(TxnOutcome::Accepted(r)) => {
                ctx.sched.path_success(qid);
                ctx.delivered(
                    d,
                    info_for(Some(target), local, &r, tls.as_deref()),
                    Some(qid),
                )
                .await;
            }
            Ok(TxnOutcome::Refused(stage, r)) => {
                let ai = info_for(Some(target), local, &r, tls.as_deref());
                ctx.react(qid, info, &r);
                if stage == "MAIL" && r.is_transient() && sent == 0 {
                    // The host will not take mail from us now: its backup may.
                    ctx.sched.requeue_front(qid, d);
                    session.quit().await;
                    return HostResult::Next(ai, false);
                }
                if r.is_permanent() {
                    ctx.bounced(d, ai, Some(qid)).await;
                } else {
                    ctx.deferred(d, ai.clone(), Some(qid)).await;
                    if r.code == 421 {
                        // The server is closing the connection; the path waits.
                        return HostResult::Stop(ai);
                    }
                }
            }
            Err(e) => {
                let ai = info_for(Some(target), local, &e.as_reply(), tls.as_deref());
                ctx.deferred(d, ai.clone(), Some(qid)).await;
                return HostResult::Next(ai, false);
            }
        }
        sent += 1;
    }
    session.quit().await;
    HostResult::Done
}
