//! Delivery events: one JSON object per line in `[events] path`, and an in-process broadcast
//! (tests and the API await outcomes instead of sleeping).

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

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
}

/// Cheap-to-clone handle that publishes events.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Arc<Event>>,
    bcast: broadcast::Sender<Arc<Event>>,
}

impl Events {
    /// Open the log file (append) and start the writer task.
    pub fn start(path: &Path) -> Result<(Events, tokio::task::JoinHandle<()>), EventsError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| EventsError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| EventsError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (bcast, _) = broadcast::channel(65536);
        let handle = tokio::task::spawn_blocking(move || writer(file, rx));
        Ok((Events { tx, bcast }, handle))
    }

    pub fn emit(&self, e: Event) {
        let e = Arc::new(e);
        let _ = self.bcast.send(e.clone());
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bcast.subscribe()
    }
}

fn writer(file: std::fs::File, mut rx: mpsc::UnboundedReceiver<Arc<Event>>) {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    while let Some(e) = rx.blocking_recv() {
        write_one(&mut out, &e);
        while let Ok(e) = rx.try_recv() {
            write_one(&mut out, &e);
        }
        if let Err(err) = out.flush() {
            tracing::error!(error = %err, "cannot write event log");
        }
    }
    let _ = out.flush();
}

fn write_one(out: &mut impl Write, e: &Event) {
    match serde_json::to_vec(e) {
        Ok(mut line) => {
            line.push(b'\n');
            if let Err(err) = out.write_all(&line) {
                tracing::error!(error = %err, "cannot write event log");
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot encode event"),
    }
}
