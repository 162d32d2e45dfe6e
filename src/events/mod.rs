//! Delivery events: one JSON object per line in `[events] path`, an in-process broadcast
//! (tests and the API await outcomes instead of sleeping), and optionally a PowerMTA-style
//! accounting CSV and a batched, signed, persisted webhook.
//!
//! # `[events]` keys
//!
//! | key | default | meaning |
//! |-----|---------|---------|
//! | `path` | `"events.jsonl"` | JSON-lines log, one event per line, opened in append mode. |
//! | `rotate_size` | `0` (never) | When the log passes this many bytes it is rotated: `events.jsonl` → `events.jsonl.1`, `.1` → `.2`, … and a new file is opened. Rotation happens between two complete lines after a flush, so no line is lost or split. Applies to the JSON log only (not the CSV). |
//! | `rotate_keep` | `10` | Rotated files kept; the oldest beyond it is dropped (`0` = rotated data is deleted). |
//! | `csv_path` | none | PowerMTA-compatible accounting CSV (see below). |
//! | `webhook_url` | none | `http://host[:port]/path` or `https://…` receiving batched events. |
//! | `webhook_secret` | none | Key of the `X-Sluice-Signature: sha256=<hex>` header (HMAC-SHA256 of the exact body bytes). Without a secret the header is not sent. |
//! | `webhook_batch` | `500` | Maximum events per POST. |
//! | `webhook_interval` | `"1s"` | Maximum wait before a partial batch is sent. |
//! | `webhook_timeout` | `"10s"` | Timeout of one POST (connect, TLS handshake, request, response head). |
//! | `webhook_ca_file` | `/etc/ssl/certs/ca-certificates.crt` | PEM bundle of the CAs trusted for `https://` webhooks. |
//!
//! Relative `csv_path` / `webhook_ca_file` are taken from the working directory unless the
//! config loader resolves them against the config folder.
//!
//! # Log rotation and reopening
//!
//! Besides size-based rotation, [`Events::reopen`] closes and reopens the log and the CSV by
//! name, for an external `logrotate` that renames the files (no `copytruncate` needed).
//!
//! # Webhook
//!
//! Every event is POSTed (`Content-Type: application/json`) in a JSON array of at most
//! `webhook_batch` events, in the order they were emitted. A batch is sent as soon as it is
//! full or when its oldest event has waited `webhook_interval`.
//!
//! * When a spool is given ([`Events::start_with`]), each event is first written durably to
//!   the spool table `webhook_outbox` (key = zero-padded sequence number) and only removed
//!   after the endpoint answered 2xx; at start, whatever the outbox holds is sent first. A
//!   platform outage or a restart therefore loses no event; a crash between the 2xx and the
//!   removal can resend a batch (at least once across a crash).
//! * Connection errors, timeouts, 5xx and 429 are retried with exponential backoff (1 s
//!   doubling up to 5 min) until they succeed; the writer of the JSON-lines log never waits
//!   for the webhook.
//! * **Any other 4xx drops the batch** (it would never succeed); it is logged at error level.
//! * During a long outage at most 100 000 events are kept in memory; the rest stays in the
//!   outbox and is read back as the backlog drains.
//! * [`Events::close`] stops the webhook after every emitted event has reached the outbox; if
//!   the endpoint is healthy, what is queued is sent first (for up to `webhook_timeout`),
//!   the rest waits in the outbox for the next start.
//! * The client speaks HTTP/1.1, one request per connection (`Connection: close`); it reads
//!   only the status line. `https://` verifies the server with the CA bundle above.
//! * Without a spool ([`Events::start`]) the webhook queue lives in memory only.
//!
//! # Accounting CSV
//!
//! `csv_path` gets a header line (written when the file is empty) and one record per delivery
//! outcome, in PowerMTA accounting style: `type` is `d` (delivered), `b` (bounced: refused
//! during delivery or returned later), `t` (transient: deferred) or `f` (feedback-loop
//! complaint: a bounce whose reason is `complaint`). Columns: `type, timeLogged, timeQueued,
//! orig, rcpt, orcpt, dsnAction, dsnStatus, dsnDiag, dsnMta, bounceCat, srcType, srcMta,
//! dlvType, dlvSourceIp, dlvDestinationIp, dlvEsmtpAvailable, dlvSize, vmta, jobId, envId,
//! queue, vmtaPool, header_x-id`. Filled: `timeLogged` (event time), `timeQueued` (from the
//! delivery id), `orig` (envelope sender), `rcpt`, `dsnAction` (`relayed` / `failed` /
//! `delayed`), `dsnStatus` (enhanced code), `dsnDiag` (`smtp;` + reply), `dsnMta` (MX),
//! `bounceCat` (bounce reason), `srcType` (`smtp`), `dlvType` (`smtp`, or `returned` for
//! bounces and complaints received by mail), `dlvSourceIp`, `dlvDestinationIp`, `jobId`
//! (campaign), `envId` (delivery id), `header_x-id` (recipient id). Fields with a comma, a
//! quote, CR or LF are quoted, quotes doubled (RFC 4180). Other events make no record.

mod csv;
pub mod http;
mod log;
mod webhook;

pub use csv::{csv_record, CSV_HEADER};

use crate::config::EventsCfg;
use crate::delivery::outcome::base_event;
use crate::spool::{Delivery, Spool};
use crate::verp::Verp;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// One event. Delivery events fill the delivery fields; attempt fields are null when they do
/// not apply. Every event has `ts` and `event`.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Event {
    pub ts: String,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub recipient: Option<String>,
    pub recipient_id: Option<String>,
    pub envelope_from: Option<String>,
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub source_ip: Option<String>,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub response: Option<String>,
    pub attempt: Option<u32>,
    pub tls: Option<String>,
    /// For deferred / bounced / expired: the qualification of the last reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_reason: Option<String>,
    /// For bounces: "smtp" (reply during delivery) or "returned" (bounce mail / FBL report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_source: Option<String>,
    /// For `deferred`: when the next attempt is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// For engine-level events: a human-readable message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot open event log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("[events] {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot read the webhook outbox: {0}")]
    Outbox(#[from] crate::spool::SpoolError),
}

/// Message to the log writer thread.
pub(crate) enum LogMsg {
    Event(Arc<Event>),
    /// The `accepted` events of one injection, built one at a time by the writer.
    Accepted(Box<Accepted>),
    Reopen,
    Close(oneshot::Sender<()>),
}

/// What [`Events::emit_accepted`] hands to the log writer.
pub(crate) struct Accepted {
    ts_ms: u64,
    deliveries: Vec<Delivery>,
    verp: Verp,
}

impl Accepted {
    /// The events, one at a time.
    pub(crate) fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.deliveries
            .iter()
            .map(|d| base_event("accepted", d, self.verp.envelope_of(d), self.ts_ms))
    }
}

/// Message to the webhook outbox task.
pub(crate) enum HookMsg {
    Event(Arc<Event>),
    Close(oneshot::Sender<()>),
}

/// Cheap-to-clone handle that publishes events.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<LogMsg>,
    hook: Option<mpsc::UnboundedSender<HookMsg>>,
    bcast: broadcast::Sender<Arc<Event>>,
}

impl Events {
    /// Open the log file (append) and start the writer task; no rotation, CSV or webhook.
    pub fn start(path: &Path) -> Result<(Events, tokio::task::JoinHandle<()>), EventsError> {
        let cfg = EventsCfg {
            path: path.to_path_buf(),
            ..EventsCfg::default()
        };
        Events::start_with(&cfg, None)
    }

    /// Start every output configured in `cfg`. With a spool, webhook events are persisted
    /// in its `webhook_outbox` table until delivered (and what it holds is sent first).
    /// Must run inside a Tokio runtime. The handle ends when every output has stopped
    /// (after [`Events::close`], or once every `Events` clone is dropped).
    pub fn start_with(
        cfg: &EventsCfg,
        spool: Option<Spool>,
    ) -> Result<(Events, tokio::task::JoinHandle<()>), EventsError> {
        let hook_cfg = match &cfg.webhook_url {
            Some(url) if !url.trim().is_empty() => Some(webhook::HookCfg::new(cfg, url)?),
            _ => None,
        };
        let writer = log::LogWriter::open(cfg)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (bcast, _) = broadcast::channel(65536);
        let log_task = tokio::task::spawn_blocking(move || writer.run(rx));
        let (hook, hook_task) = match hook_cfg {
            Some(h) => {
                let (htx, task) = webhook::start(h, spool)?;
                (Some(htx), Some(task))
            }
            None => (None, None),
        };
        let handle = tokio::spawn(async move {
            let _ = log_task.await;
            if let Some(t) = hook_task {
                let _ = t.await;
            }
        });
        Ok((Events { tx, hook, bcast }, handle))
    }

    pub fn emit(&self, e: Event) {
        let e = Arc::new(e);
        let _ = self.bcast.send(e.clone());
        if let Some(h) = &self.hook {
            let _ = h.send(HookMsg::Event(e.clone()));
        }
        let _ = self.tx.send(LogMsg::Event(e));
    }

    /// The `accepted` events of one injection. Without a live subscriber or a webhook they
    /// travel to the log writer as one message holding copies of the deliveries and are
    /// built there one at a time: a 100,000-recipient request no longer parks 100,000 full
    /// events (eight allocations each) in the writer's channel. Same lines, same order.
    pub fn emit_accepted(&self, deliveries: &[Delivery], verp: &Verp, ts_ms: u64) {
        if self.hook.is_some() || self.bcast.receiver_count() > 0 {
            for d in deliveries {
                self.emit(base_event("accepted", d, verp.envelope_of(d), ts_ms));
            }
            return;
        }
        let _ = self.tx.send(LogMsg::Accepted(Box::new(Accepted {
            ts_ms,
            deliveries: deliveries.to_vec(),
            verp: verp.clone(),
        })));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bcast.subscribe()
    }

    /// Close and reopen the log (and the CSV) by name, after the events emitted so far are
    /// written — for an external rotation that renamed the files (e.g. on SIGUSR1).
    pub fn reopen(&self) {
        let _ = self.tx.send(LogMsg::Reopen);
    }

    /// Stop every output: the events emitted before this call are written to the log, the
    /// CSV and (when configured) the webhook outbox, then the tasks end. Events emitted after
    /// it are only broadcast. Call it before closing the spool. Calling it twice is harmless.
    pub async fn close(&self) {
        let (log_ack, log_done) = oneshot::channel();
        let log_sent = self.tx.send(LogMsg::Close(log_ack)).is_ok();
        let hook_done = match &self.hook {
            Some(h) => {
                let (ack, done) = oneshot::channel();
                h.send(HookMsg::Close(ack)).ok().map(|_| done)
            }
            None => None,
        };
        if log_sent {
            let _ = log_done.await;
        }
        if let Some(d) = hook_done {
            let _ = d.await;
        }
    }
}
