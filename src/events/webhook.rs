//! The webhook: a durable outbox in the spool, then batched signed POSTs with backoff.
//!
//! Two tasks: the *outbox* task numbers events, writes them to the spool table
//! [`OUTBOX`] and hands them on; the *sender* task batches, POSTs, and deletes what was
//! accepted. Only persisted events reach the sender, so whatever it has not sent is in the
//! outbox.

use super::http::{self, Client};
use super::{EventsError, HookMsg};
use crate::config::EventsCfg;
use crate::spool::Spool;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Spool table of events not yet accepted by the endpoint (key: 20-digit sequence number).
pub const OUTBOX: &str = "webhook_outbox";
/// Events held in memory by the sender; beyond, they wait in the outbox.
const MEM_CAP: usize = 100_000;
/// Events taken from the channel per outbox group commit.
const PERSIST_CHUNK: usize = 4096;

pub(super) struct HookCfg {
    client: Client,
    secret: Option<Vec<u8>>,
    batch: usize,
    interval: Duration,
    timeout: Duration,
    mem_cap: usize,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl HookCfg {
    pub(super) fn new(cfg: &EventsCfg, url: &str) -> Result<HookCfg, EventsError> {
        let target = http::parse_url(url).map_err(|message| EventsError::Config {
            key: "webhook_url",
            message,
        })?;
        let tls = if target.https {
            let ca = cfg
                .webhook_ca_file
                .clone()
                .unwrap_or_else(|| http::SYSTEM_CA_FILE.into());
            let c = http::tls_connector(&ca).map_err(|message| EventsError::Config {
                key: "webhook_ca_file",
                message: format!("https webhook: {message}"),
            })?;
            Some(c)
        } else {
            None
        };
        if cfg.webhook_batch == 0 {
            return Err(EventsError::Config {
                key: "webhook_batch",
                message: "must be at least 1".into(),
            });
        }
        let timeout = cfg.webhook_timeout.0;
        if timeout.is_zero() {
            return Err(EventsError::Config {
                key: "webhook_timeout",
                message: "must be more than 0".into(),
            });
        }
        Ok(HookCfg {
            client: Client::new(target, tls, timeout),
            secret: cfg
                .webhook_secret
                .as_ref()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec()),
            batch: cfg.webhook_batch,
            interval: cfg.webhook_interval.0,
            timeout,
            mem_cap: MEM_CAP,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        })
    }
}

fn key(seq: u64) -> String {
    format!("{seq:020}")
}

struct Item {
    seq: u64,
    body: Vec<u8>,
    at: Instant,
    /// Written to the outbox (false without a spool or when the write failed).
    durable: bool,
}

/// Start the outbox and sender tasks; the sender first sends what the outbox holds.
pub(super) fn start(
    cfg: HookCfg,
    spool: Option<Spool>,
) -> Result<(mpsc::UnboundedSender<HookMsg>, JoinHandle<()>), EventsError> {
    let mut backlog = Vec::new();
    if let Some(sp) = &spool {
        for (k, v) in sp.kv_scan(OUTBOX)? {
            match k.parse::<u64>() {
                Ok(seq) => backlog.push((seq, v)),
                Err(_) => tracing::warn!(key = %k, "ignoring a malformed webhook outbox key"),
            }
        }
    }
    let last = backlog.last().map(|(s, _)| *s).unwrap_or(0);
    if !backlog.is_empty() {
        tracing::info!(events = backlog.len(), "webhook outbox: resending events");
    }
    let persisted = Arc::new(AtomicU64::new(last));
    let (tx, rx) = mpsc::unbounded_channel();
    let (items_tx, items_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sender = Sender {
        queue: VecDeque::new(),
        high: 0,
        spilled: false,
        backoff: None,
        persisted: persisted.clone(),
        rx: items_rx,
        stop: stop_rx,
        spool: spool.clone(),
        cfg,
    };
    sender.take_backlog(backlog);
    let sender_task = tokio::spawn(sender.run());
    let outbox = Outbox {
        spool,
        seq: last,
        persisted,
        out: items_tx,
    };
    let task = tokio::spawn(outbox.run(rx, stop_tx, sender_task));
    Ok((tx, task))
}

struct Outbox {
    spool: Option<Spool>,
    seq: u64,
    /// Highest sequence number whose whole group is in the outbox.
    persisted: Arc<AtomicU64>,
    out: mpsc::UnboundedSender<Vec<Item>>,
}

impl Outbox {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<HookMsg>,
        stop: watch::Sender<bool>,
        sender: JoinHandle<()>,
    ) {
        let mut close_ack = None;
        while let Some(first) = rx.recv().await {
            let mut items = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    HookMsg::Event(e) => match serde_json::to_vec(&*e) {
                        Ok(body) => {
                            self.seq += 1;
                            items.push(Item {
                                seq: self.seq,
                                body,
                                at: Instant::now(),
                                durable: false,
                            });
                        }
                        Err(err) => tracing::error!(error = %err, "cannot encode event"),
                    },
                    HookMsg::Close(ack) => {
                        close_ack = Some(ack);
                        break;
                    }
                }
                if items.len() < PERSIST_CHUNK {
                    next = rx.try_recv().ok();
                }
            }
            self.persist(&mut items).await;
            self.persisted.store(self.seq, Ordering::Release);
            let _ = self.out.send(items);
            if close_ack.is_some() {
                break;
            }
        }
        let _ = stop.send(true);
        let _ = sender.await;
        if let Some(ack) = close_ack {
            let _ = ack.send(());
        }
    }

    /// Write a group to the outbox (one group commit); mark what made it.
    async fn persist(&self, items: &mut [Item]) {
        let Some(sp) = &self.spool else { return };
        let mut set = JoinSet::new();
        for it in items.iter() {
            let sp = sp.clone();
            let (seq, body) = (it.seq, it.body.clone());
            set.spawn(async move { (seq, sp.kv_put(OUTBOX, key(seq), Some(body)).await) });
        }
        let mut ok = HashSet::new();
        let mut failed = 0usize;
        let mut last_err = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok((seq, Ok(()))) => {
                    ok.insert(seq);
                }
                Ok((_, Err(e))) => {
                    failed += 1;
                    last_err = Some(e.to_string());
                }
                Err(e) => {
                    failed += 1;
                    last_err = Some(e.to_string());
                }
            }
        }
        if let Some(err) = last_err {
            tracing::error!(events = failed, error = %err, "cannot write the webhook outbox; these events are kept in memory only");
        }
        for it in items.iter_mut() {
            it.durable = ok.contains(&it.seq);
        }
    }
}

enum Sent {
    Done,
    Retry,
}

struct Sender {
    cfg: HookCfg,
    spool: Option<Spool>,
    queue: VecDeque<Item>,
    /// Highest sequence number taken into memory (from the channel or the outbox).
    high: u64,
    /// Durable events were left in the outbox (memory full): read them back when empty.
    spilled: bool,
    /// Current retry delay while the endpoint fails.
    backoff: Option<Duration>,
    persisted: Arc<AtomicU64>,
    rx: mpsc::UnboundedReceiver<Vec<Item>>,
    stop: watch::Receiver<bool>,
}

impl Sender {
    /// Take outbox entries above `high` (sorted), up to the memory cap; ready to send now.
    fn take_backlog(&mut self, entries: Vec<(u64, Vec<u8>)>) {
        let now = Instant::now();
        let ready = now.checked_sub(self.cfg.interval).unwrap_or(now);
        let limit = self.persisted.load(Ordering::Acquire);
        self.spilled = false;
        for (seq, body) in entries {
            if seq <= self.high || seq > limit {
                continue;
            }
            if self.queue.len() >= self.cfg.mem_cap {
                self.spilled = true;
                break;
            }
            self.high = seq;
            self.queue.push_back(Item {
                seq,
                body,
                at: ready,
                durable: true,
            });
        }
    }

    fn accept(&mut self, items: Vec<Item>) {
        for it in items {
            if it.seq <= self.high {
                continue; // already read back from the outbox
            }
            if it.durable {
                if self.spilled {
                    continue;
                }
                if self.spool.is_some() && self.queue.len() >= self.cfg.mem_cap {
                    tracing::warn!(
                        "webhook backlog over {} events; the rest waits in the outbox",
                        self.cfg.mem_cap
                    );
                    self.spilled = true;
                    continue;
                }
                self.high = it.seq;
            } else if !self.spilled {
                self.high = it.seq;
            }
            self.queue.push_back(it);
        }
    }

    async fn run(mut self) {
        let mut stopping = false;
        while !stopping && !*self.stop.borrow() {
            if self.queue.is_empty() && self.spilled {
                self.reload().await;
                continue;
            }
            let ready = self.queue.front().map(|f| {
                (
                    self.queue.len() >= self.cfg.batch || f.at.elapsed() >= self.cfg.interval,
                    f.at + self.cfg.interval,
                )
            });
            match ready {
                Some((true, _)) => {
                    if let Sent::Retry = self.send_batch().await {
                        stopping = self.back_off().await;
                    }
                }
                Some((false, deadline)) => {
                    tokio::select! {
                        m = self.rx.recv() => match m {
                            Some(items) => self.accept(items),
                            None => stopping = true,
                        },
                        _ = tokio::time::sleep_until(deadline) => {}
                        r = self.stop.changed() => stopping = r.is_err() || *self.stop.borrow(),
                    }
                }
                None => {
                    tokio::select! {
                        m = self.rx.recv() => match m {
                            Some(items) => self.accept(items),
                            None => stopping = true,
                        },
                        r = self.stop.changed() => stopping = r.is_err() || *self.stop.borrow(),
                    }
                }
            }
        }
        self.final_flush().await;
    }

    /// Wait out the backoff (still taking new events); true when told to stop.
    async fn back_off(&mut self) -> bool {
        let d = match self.backoff {
            None => self.cfg.backoff_min,
            Some(d) => (d * 2).min(self.cfg.backoff_max),
        };
        self.backoff = Some(d);
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(items) => self.accept(items),
                    None => return true,
                },
                _ = tokio::time::sleep_until(until) => return false,
                r = self.stop.changed() => {
                    if r.is_err() || *self.stop.borrow() {
                        return true;
                    }
                }
            }
        }
    }

    /// On close: if the endpoint is healthy, send what is queued (for up to the timeout).
    async fn final_flush(&mut self) {
        while let Ok(items) = self.rx.try_recv() {
            self.accept(items);
        }
        if self.backoff.is_some() {
            return;
        }
        let end = Instant::now() + self.cfg.timeout;
        while !self.queue.is_empty() && Instant::now() < end {
            if let Sent::Retry = self.send_batch().await {
                return;
            }
        }
    }

    /// Read the outbox back once memory has drained.
    async fn reload(&mut self) {
        let Some(sp) = self.spool.clone() else {
            self.spilled = false;
            return;
        };
        match tokio::task::spawn_blocking(move || sp.kv_scan(OUTBOX)).await {
            Ok(Ok(entries)) => {
                let entries = entries
                    .into_iter()
                    .filter_map(|(k, v)| k.parse::<u64>().ok().map(|s| (s, v)))
                    .collect();
                self.take_backlog(entries);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                self.back_off().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                self.back_off().await;
            }
        }
    }

    /// POST the oldest events (up to a batch).
    async fn send_batch(&mut self) -> Sent {
        let n = self.queue.len().min(self.cfg.batch);
        let size: usize = self.queue.iter().take(n).map(|i| i.body.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 2);
        body.push(b'[');
        for (i, it) in self.queue.iter().take(n).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&it.body);
        }
        body.push(b']');
        let sig = self.cfg.secret.as_ref().map(|k| http::signature(k, &body));
        let url = &self.cfg.client.target;
        match self.cfg.client.post(&body, sig.as_deref()).await {
            Ok(code) if (200..300).contains(&code) => {
                if self.backoff.take().is_some() {
                    tracing::info!(host = %url.host, "webhook delivers again");
                }
                self.remove(n).await;
                Sent::Done
            }
            Ok(code) if (400..500).contains(&code) && code != 429 => {
                tracing::error!(
                    host = %url.host, status = code, events = n,
                    "webhook refused a batch (4xx); it is dropped"
                );
                self.remove(n).await;
                Sent::Done
            }
            Ok(code) => {
                tracing::warn!(host = %url.host, status = code, events = n, "webhook failed; will retry");
                Sent::Retry
            }
            Err(e) => {
                tracing::warn!(host = %url.host, error = %e, events = n, "webhook failed; will retry");
                Sent::Retry
            }
        }
    }

    /// Forget the first `n` events and delete them from the outbox (one group commit).
    async fn remove(&mut self, n: usize) {
        let done: Vec<Item> = self.queue.drain(..n).collect();
        let Some(sp) = &self.spool else { return };
        let mut set = JoinSet::new();
        for it in done.iter().filter(|i| i.durable) {
            let sp = sp.clone();
            let seq = it.seq;
            set.spawn(async move { sp.kv_put(OUTBOX, key(seq), None).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot delete sent events from the webhook outbox")
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot delete sent events from the webhook outbox")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accept requests, answer 200, return the count of events per request.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<Vec<u64>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/h", l.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= h + 4 + len {
                            let v: Vec<serde_json::Value> =
                                serde_json::from_slice(&buf[h + 4..h + 4 + len]).expect("json");
                            let seqs = v
                                .iter()
                                .filter_map(|e| e["message"].as_str()?.parse().ok())
                                .collect();
                            let _ = tx.send(seqs);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    /// A tiny memory cap: events spill to the outbox and come back, in order, once.
    #[tokio::test]
    async fn spill_to_outbox_and_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&dir.path().join("s.redb"), crate::Clock::System, 86_400_000)
            .expect("spool");
        let (url, mut rx) = receiver().await;
        let cfg = EventsCfg {
            webhook_batch: 7,
            webhook_interval: crate::config::Dur(Duration::from_millis(20)),
            ..EventsCfg::default()
        };
        let mut h = HookCfg::new(&cfg, &url).expect("cfg");
        h.mem_cap = 10;
        let (tx, task) = start(h, Some(spool.clone())).expect("start");
        for i in 0..200u64 {
            let e = Event {
                event: "x".into(),
                message: Some(i.to_string()),
                ..Event::default()
            };
            let _ = tx.send(HookMsg::Event(Arc::new(e)));
        }
        let mut got = Vec::new();
        while got.len() < 200 {
            let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("in time")
                .expect("receiver");
            assert!(batch.len() <= 7);
            got.extend(batch);
        }
        assert_eq!(got, (0..200).collect::<Vec<u64>>());
        let (ack, done) = tokio::sync::oneshot::channel();
        let _ = tx.send(HookMsg::Close(ack));
        done.await.expect("closed");
        task.await.expect("task");
        assert!(spool.kv_scan(OUTBOX).expect("scan").is_empty());
        spool.close();
    }
}
