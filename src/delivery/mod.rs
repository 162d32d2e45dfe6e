//! Delivery: one task per outgoing connection.
//!
//! A connection task serves one destination: it resolves the MX plan, walks the targets in
//! order (backup MX on refusal, timeout, a 421 greeting, a 4xx to EHLO or to the first MAIL),
//! then carries deliveries from the destination's ready queue, one transaction each, up to
//! `messages_per_connection`, and quits.

pub mod client;
pub mod outcome;
pub mod tls;

use crate::clock::Clock;
use crate::config::{Config, TlsMode};
use crate::dns::{ordered_targets, Resolver, Target};
use crate::events::Events;
use crate::queue::Scheduler;
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
}

/// Spawns a connection task for every request from the scheduler.
pub async fn run_dispatcher(
    ctx: Arc<Ctx>,
    mut requests: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            req = requests.recv() => match req {
                Some(dest) => {
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        let permit = ctx.connections.clone().acquire_owned().await;
                        if permit.is_ok() {
                            serve_destination(&ctx, &dest).await;
                        }
                        ctx.sched.connection_closed(&dest);
                    });
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    tasks.shutdown().await;
}

/// Finishes deliveries that expired while queued.
pub async fn run_expiry(
    ctx: Arc<Ctx>,
    mut expired: mpsc::UnboundedReceiver<Delivery>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            d = expired.recv() => match d {
                Some(d) => ctx.expired(d).await,
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
    fn params(&self, ip: IpAddr) -> Params {
        let d = &self.cfg.delivery;
        let broken = self
            .tls_broken
            .get(&ip)
            .map(|until| *until > self.clock.now_ms())
            .unwrap_or(false);
        Params {
            helo: self.cfg.hostname.clone(),
            connect_timeout: d.connect_timeout.0,
            command_timeout: d.command_timeout.0,
            data_timeout: d.data_timeout.0,
            source_ip: d.source_ip,
            starttls: d.tls == TlsMode::Opportunistic && !broken,
        }
    }
}

enum HostResult {
    /// The queue is empty or the connection carried its share: done.
    Done,
    /// Try the next host (the reason is kept for the deferral if all fail).
    Next(AttemptInfo),
}

/// Serve one destination over one connection (with fallback across its MX targets).
pub async fn serve_destination(ctx: &Ctx, dest: &str) {
    let plan = match ctx.dns.plan(dest).await {
        Ok(p) => p,
        Err(f) => {
            let (code, enh) = f.status();
            let info = AttemptInfo {
                code: Some(code),
                enhanced: Some(enh.to_string()),
                response: format!("{code} {enh} {f}"),
                ..AttemptInfo::default()
            };
            for d in ctx.sched.drain(dest) {
                if f.is_permanent() {
                    ctx.bounced(d, info.clone()).await;
                } else {
                    ctx.deferred(d, info.clone()).await;
                }
            }
            return;
        }
    };
    let mut last = AttemptInfo {
        code: Some(451),
        enhanced: Some("4.4.0".into()),
        response: format!("451 4.4.0 no usable MX address for {dest}"),
        ..AttemptInfo::default()
    };
    for target in ordered_targets(&plan) {
        match serve_host(ctx, dest, &target).await {
            HostResult::Done => return,
            HostResult::Next(info) => last = info,
        }
    }
    // Every host failed: the whole ready queue waits for the next attempt.
    for d in ctx.sched.drain(dest) {
        ctx.deferred(d, last.clone()).await;
    }
}

async fn serve_host(ctx: &Ctx, dest: &str, target: &Target) -> HostResult {
    let addr = SocketAddr::new(target.ip, ctx.cfg.delivery.port);
    let mut session = match Session::connect(addr, &target.host, ctx.params(target.ip)).await {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, SessionError::Tls(_)) {
                let until =
                    ctx.clock.now_ms() + ctx.cfg.delivery.tls_broken_for.0.as_millis() as u64;
                ctx.tls_broken.insert(target.ip, until);
                tracing::info!(mx = %target.host, ip = %target.ip, error = %e, "STARTTLS failed; next attempts go without TLS");
            } else {
                tracing::debug!(mx = %target.host, ip = %target.ip, error = %e, "MX host failed");
            }
            return HostResult::Next(info_for(Some(target), None, &e.as_reply(), None));
        }
    };
    let local = Some(session.local);
    let mpc = ctx.cfg.delivery.messages_per_connection;
    let mut sent = 0u32;
    loop {
        if sent >= mpc {
            session.quit().await;
            return HostResult::Done;
        }
        let Some(d) = ctx.sched.next_for(dest) else {
            session.quit().await;
            return HostResult::Done;
        };
        let body = match ctx.spool.body(d.body_id) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "message body unreadable");
                let r = Reply {
                    code: 451,
                    enhanced: Some("4.3.0".into()),
                    text: format!("local error: {e}"),
                };
                ctx.deferred(d, info_for(None, None, &r, None)).await;
                continue;
            }
        };
        let tls = session.tls_version().map(str::to_string);
        match session
            .transaction(&d.envelope_from, &d.recipient, &body)
            .await
        {
            Ok(TxnOutcome::Accepted(r)) => {
                ctx.delivered(d, info_for(Some(target), local, &r, tls.as_deref()))
                    .await;
            }
            Ok(TxnOutcome::Refused(stage, r)) => {
                let info = info_for(Some(target), local, &r, tls.as_deref());
                if stage == "MAIL" && r.is_transient() && sent == 0 {
                    // The host will not take mail from us now: its backup may.
                    ctx.sched.requeue_front(d);
                    session.quit().await;
                    return HostResult::Next(info);
                }
                if r.is_permanent() {
                    ctx.bounced(d, info).await;
                } else {
                    ctx.deferred(d, info.clone()).await;
                    if r.code == 421 {
                        // The server is closing the connection.
                        return HostResult::Next(info);
                    }
                }
            }
            Err(e) => {
                let info = info_for(Some(target), local, &e.as_reply(), tls.as_deref());
                ctx.deferred(d, info.clone()).await;
                return HostResult::Next(info);
            }
        }
        sent += 1;
    }
}
