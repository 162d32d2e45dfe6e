//! `sluice sink`: a fast fake MX for benchmarks and demos. It speaks ESMTP with PIPELINING
//! and CHUNKING (the same server core as sluice's own listeners), accepts and counts, and can
//! answer per-recipient codes or delay every read to simulate a network round trip.
//! Bind it to loopback or a lab network only.

use crate::smtp_server::{serve, Handler};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the sink has received.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Pause before handling each read (simulated round-trip time).
    pub delay: Option<Duration>,
    /// Offer CHUNKING (BDAT); PIPELINING is always offered.
    pub chunking: bool,
    /// `(substring, code, text)`: a recipient containing the substring gets this reply.
    pub rcpt_codes: Vec<(String, u16, String)>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            delay: None,
            chunking: true,
            rcpt_codes: Vec::new(),
        }
    }
}

pub struct SinkHandler {
    pub stats: Arc<SinkStats>,
    pub opts: SinkOptions,
}

impl Handler for SinkHandler {
    fn hostname(&self) -> &str {
        "sink.sluice"
    }
    fn max_size(&self) -> usize {
        64 * 1024 * 1024
    }
    fn max_rcpt(&self) -> usize {
        100_000
    }
    fn read_delay(&self) -> Option<Duration> {
        self.opts.delay
    }
    fn chunking(&self) -> bool {
        self.opts.chunking
    }
    fn rcpt(&self, _peer: SocketAddr, address: &str) -> Result<String, String> {
        for (sub, code, text) in &self.opts.rcpt_codes {
            if address.contains(sub.as_str()) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(format!("{code} {text}"));
            }
        }
        Ok(address.to_string())
    }
    async fn data(&self, _peer: SocketAddr, rcpts: Vec<String>, data: Vec<u8>) -> String {
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        self.stats
            .recipients
            .fetch_add(rcpts.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        "250 2.0.0 ok".into()
    }
}

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    pub stats: Arc<SinkStats>,
    stop: watch::Sender<bool>,
}

impl Sink {
    pub async fn start(addr: SocketAddr, opts: SinkOptions) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(SinkStats::default());
        let (stop, rx) = watch::channel(false);
        let handler = Arc::new(SinkHandler {
            stats: stats.clone(),
            opts,
        });
        tokio::spawn(serve(listener, handler, rx));
        Ok(Sink { addr, stats, stop })
    }

    pub fn messages(&self) -> u64 {
        self.stats.messages.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
