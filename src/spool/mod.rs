//! The durable spool: the only owner of disk state (one redb file).
//!
//! * A message body is stored once per injection (`bodies`) with a reference count (`refs`)
//!   of the deliveries that still need it; the last delivery to finish removes it.
//! * A delivery record (`active`) is small: id, body ref, recipient, campaign, attempts, next
//!   attempt time. When it finishes it moves to `done` (kept `keep_finished` for the API).
//! * Every write goes through one writer thread that batches whatever requests are waiting
//!   into a single transaction and one fsync (group commit), then wakes every waiter. A caller
//!   is answered only after its data is durable.

pub mod codec;

use crate::clock::Clock;
use dashmap::DashMap;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const REFS: TableDefinition<u64, u64> = TableDefinition::new("refs");
const ACTIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("active");
const DONE: TableDefinition<u64, &[u8]> = TableDefinition::new("done");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Ids carry their creation time: `unix_ms << 22 | counter`, so they sort by age and
/// old finished records can be pruned by key range.
const ID_SHIFT: u32 = 22;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool database error: {0}")]
    Db(String),
    #[error("cannot open spool {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    #[error("spool record {0} is corrupt: {1}")]
    Corrupt(u64, String),
    #[error("spool writer has stopped")]
    Closed,
    #[error("message body {0} is missing from the spool")]
    MissingBody(u64),
}

impl From<redb::Error> for SpoolError {
    fn from(e: redb::Error) -> Self {
        SpoolError::Db(e.to_string())
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for SpoolError {
        fn from(e: $t) -> Self { SpoolError::Db(e.to_string()) }
    })*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Bulk,
    Transactional,
}

/// One attempt at delivering, as recorded on the delivery and in events.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Attempt {
    pub ts: u64,
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    pub response: String,
}

/// The part of a delivery shared by every recipient of an injection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    /// The VERP domain when it is not the default one (aligned sender subdomain); the
    /// envelope sender itself is recomputed from the id (`Verp::envelope_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verp_domain: Option<String>,
}

/// A queued delivery: one recipient of one injected message. Kept small (96 bytes on
/// 64-bit targets, the recipient included when it fits 30 bytes): a million of them wait
/// in a big campaign's queues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub id: u64,
    pub body_id: u64,
    /// Inline up to 30 bytes (most addresses): no allocation of its own.
    pub recipient: crate::inline_str::InlineStr,
    /// What the deliveries of one injection share (campaign, tenant, pool, priority, VERP
    /// domain): one allocation per injection instead of five fields per delivery.
    pub meta: Arc<Meta>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub attempts: u32,
    pub next_ms: u64,
    /// Recipient id, personalisation variables and attempt history: out of line, most
    /// queued deliveries carry none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Box<Extra>>,
}

/// The rarer parts of a delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Extra {
    /// The caller's id for the recipient (echoed in events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<Box<str>>,
    /// Personalisation variables (`{{name}}` placeholders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<crate::template::Vars>,
    /// The most recent attempts (at most [`MAX_HISTORY`]), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

impl Extra {
    /// `None` when there is nothing to keep.
    pub fn boxed(
        recipient_id: Option<Box<str>>,
        vars: Option<crate::template::Vars>,
        history: Vec<Attempt>,
    ) -> Option<Box<Extra>> {
        let vars = vars.filter(|v| !v.is_empty());
        if recipient_id.is_none() && vars.is_none() && history.is_empty() {
            return None;
        }
        Some(Box::new(Extra {
            recipient_id,
            vars,
            history,
        }))
    }
}

pub const MAX_HISTORY: usize = 10;

impl Delivery {
    pub fn campaign(&self) -> Option<&str> {
        self.meta.campaign.as_deref()
    }
    pub fn tenant(&self) -> Option<&str> {
        self.meta.tenant.as_deref()
    }
    pub fn pool(&self) -> Option<&str> {
        self.meta.pool.as_deref()
    }
    pub fn priority(&self) -> Priority {
        self.meta.priority
    }
    pub fn verp_domain(&self) -> Option<&str> {
        self.meta.verp_domain.as_deref()
    }

    /// The recorded attempts, oldest first.
    pub fn history(&self) -> &[Attempt] {
        self.extra.as_deref().map_or(&[], |e| e.history.as_slice())
    }

    pub fn recipient_id(&self) -> Option<&str> {
        self.extra
            .as_deref()
            .and_then(|e| e.recipient_id.as_deref())
    }

    pub fn vars(&self) -> Option<&crate::template::Vars> {
        self.extra.as_deref().and_then(|e| e.vars.as_ref())
    }

    pub fn domain(&self) -> &str {
        self.recipient
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("")
    }

    pub fn record_attempt(&mut self, a: Attempt) {
        self.attempts += 1;
        let h = &mut self.extra.get_or_insert_with(Default::default).history;
        if h.len() >= MAX_HISTORY {
            h.remove(0);
        }
        h.push(a);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalState {
    Delivered,
    Bounced,
    Expired,
    Suppressed,
    Cancelled,
}

impl FinalState {
    fn from_u8(v: u8) -> Option<FinalState> {
        [
            FinalState::Delivered,
            FinalState::Bounced,
            FinalState::Expired,
            FinalState::Suppressed,
            FinalState::Cancelled,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            FinalState::Delivered => "delivered",
            FinalState::Bounced => "bounced",
            FinalState::Expired => "expired",
            FinalState::Suppressed => "suppressed",
            FinalState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    pub state: FinalState,
    pub finished_ms: u64,
    pub delivery: Delivery,
}

/// What the spool knows of one delivery.
#[derive(Debug, Clone)]
pub enum Lookup {
    Active(Delivery),
    Finished(Finished),
}

enum Op {
    Inject {
        body_id: u64,
        body: Arc<Vec<u8>>,
        records: Vec<(u64, Vec<u8>)>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Update {
        id: u64,
        record: Vec<u8>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Finish {
        id: u64,
        body_id: u64,
        record: Vec<u8>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Kv {
        table: &'static str,
        key: String,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// Resolves when a detached write is committed (or failed).
pub type Committed = oneshot::Receiver<Result<(), SpoolError>>;

/// Handle to the spool. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Op>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
    last_id: AtomicU64,
    clock: Clock,
    body_cache: Arc<DashMap<u64, Arc<Vec<u8>>>>,
    commits: Arc<AtomicU64>,
}

const BODY_CACHE_MAX: usize = 4096;
const SPOOL_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Spool {
    /// Open (or create) the spool file and start its writer thread.
    pub fn open(path: &Path, clock: Clock, keep_finished_ms: u64) -> Result<Spool, SpoolError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| SpoolError::Open {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })?;
            }
        }
        // A bounded page cache: the queues live in memory already, the spool is written far
        // more than it is read (redb's default cache grows with the file).
        let db = Database::builder()
            .set_cache_size(SPOOL_CACHE_BYTES)
            .create(path)
            .map_err(|e| SpoolError::Open {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        {
            let tx = db.begin_write()?;
            tx.open_table(BODIES)?;
            tx.open_table(REFS)?;
            tx.open_table(ACTIVE)?;
            tx.open_table(DONE)?;
            tx.open_table(META)?;
            tx.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let w_db = db.clone();
        let w_commits = commits.clone();
        let w_clock = clock.clone();
        let body_cache: Arc<DashMap<u64, Arc<Vec<u8>>>> = Arc::new(DashMap::new());
        let w_cache = body_cache.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(w_db, rx, w_commits, w_clock, keep_finished_ms, w_cache))
            .map_err(|e| SpoolError::Open {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        Ok(Spool {
            inner: Arc::new(Inner {
                db,
                tx: std::sync::Mutex::new(Some(tx)),
                writer: std::sync::Mutex::new(Some(writer)),
                path: path.to_path_buf(),
                last_id: AtomicU64::new(0),
                clock,
                body_cache,
                commits,
            }),
        })
    }

    fn encode(&self, d: &Delivery) -> Vec<u8> {
        codec::encode(d)
    }

    fn decode(&self, id: u64, bytes: &[u8]) -> Result<Delivery, SpoolError> {
        codec::decode(id, bytes).map_err(|e| SpoolError::Corrupt(id, e.to_string()))
    }

    /// A new unique id, ordered by creation time.
    pub fn next_id(&self) -> u64 {
        let base = self.inner.clock.now_ms() << ID_SHIFT;
        let mut cur = self.inner.last_id.load(Ordering::Relaxed);
        loop {
            let next = base.max(cur + 1);
            match self.inner.last_id.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(c) => cur = c,
            }
        }
    }

    /// Creation time (unix ms) encoded in an id.
    pub fn id_time_ms(id: u64) -> u64 {
        id >> ID_SHIFT
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Number of group commits so far (each one fsync).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> Result<(), SpoolError> {
        let guard = self.inner.tx.lock().map_err(|_| SpoolError::Closed)?;
        let tx = guard.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(op).map_err(|_| SpoolError::Closed)
    }

    /// Store one body and its deliveries durably; returns once fsynced.
    pub async fn inject(
        &self,
        body_id: u64,
        body: Arc<Vec<u8>>,
        deliveries: &[Delivery],
    ) -> Result<(), SpoolError> {
        let mut records = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            records.push((d.id, self.encode(d)));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Op::Inject {
            body_id,
            body,
            records,
            reply,
        })?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Persist a changed delivery (after a deferral).
    pub async fn update(&self, d: &Delivery) -> Result<(), SpoolError> {
        self.update_detached(d)?
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    /// Move a delivery to its final state and release its hold on the body.
    pub async fn finish(&self, d: &Delivery, state: FinalState) -> Result<(), SpoolError> {
        self.finish_detached(d, state)?
            .await
            .map_err(|_| SpoolError::Closed)?
    }

    /// Like [`Spool::finish`], without waiting for the commit: the connection goes on with its
    /// next transaction while the outcome joins the next group commit. A crash before that
    /// commit means the delivery is sent again (the same as a kill mid-transaction).
    /// The returned receiver says when the commit is done.
    pub fn finish_detached(
        &self,
        d: &Delivery,
        state: FinalState,
    ) -> Result<Committed, SpoolError> {
        let mut record = vec![state as u8];
        record.extend_from_slice(&self.inner.clock.now_ms().to_le_bytes());
        record.extend_from_slice(&self.encode(d));
        let (reply, rx) = oneshot::channel();
        self.send(Op::Finish {
            id: d.id,
            body_id: d.body_id,
            record,
            reply,
        })?;
        Ok(rx)
    }

    /// Like [`Spool::update`], without waiting for the commit.
    pub fn update_detached(&self, d: &Delivery) -> Result<Committed, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Update {
            id: d.id,
            record: self.encode(d),
            reply,
        })?;
        Ok(rx)
    }

    /// The body of a message, from a small cache or the file.
    pub fn body(&self, body_id: u64) -> Result<Arc<Vec<u8>>, SpoolError> {
        if let Some(b) = self.inner.body_cache.get(&body_id) {
            return Ok(b.clone());
        }
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(BODIES)?;
        let v = t.get(body_id)?.ok_or(SpoolError::MissingBody(body_id))?;
        let body = Arc::new(v.value().to_vec());
        if self.inner.body_cache.len() < BODY_CACHE_MAX {
            self.inner.body_cache.insert(body_id, body.clone());
        }
        Ok(body)
    }

    /// Every delivery not yet finished (used once at start to rebuild the queues).
    pub fn load_active(&self) -> Result<Vec<Delivery>, SpoolError> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(ACTIVE)?;
        let mut out = Vec::new();
        // deliveries of one injection share one Meta again after a restart
        let mut shared: std::collections::HashMap<Meta, Arc<Meta>> = Default::default();
        for item in t.iter()? {
            let (k, v) = item?;
            let mut d = self.decode(k.value(), v.value())?;
            let m = shared
                .entry((*d.meta).clone())
                .or_insert_with(|| d.meta.clone())
                .clone();
            d.meta = m;
            out.push(d);
        }
        if let Some(max) = out.iter().map(|d| d.id).max() {
            self.inner.last_id.fetch_max(max, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// What the spool knows of a delivery id.
    pub fn lookup(&self, id: u64) -> Result<Option<Lookup>, SpoolError> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(ACTIVE)?;
        if let Some(v) = t.get(id)? {
            return Ok(Some(Lookup::Active(self.decode(id, v.value())?)));
        }
        let t = tx.open_table(DONE)?;
        if let Some(v) = t.get(id)? {
            let b = v.value();
            if b.len() < 9 {
                return Err(SpoolError::Corrupt(id, "short finished record".into()));
            }
            let state = FinalState::from_u8(b[0])
                .ok_or_else(|| SpoolError::Corrupt(id, format!("unknown state {}", b[0])))?;
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&b[1..9]);
            let f = Finished {
                state,
                finished_ms: u64::from_le_bytes(ts),
                delivery: self.decode(id, &b[9..])?,
            };
            return Ok(Some(Lookup::Finished(f)));
        }
        Ok(None)
    }

    /// Durably set (or with `None` remove) a key of a named key-value table (group commit).
    pub async fn kv_put(
        &self,
        table: &'static str,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Kv {
            table,
            key,
            value,
            reply,
        })?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Every entry of a named key-value table (empty if it does not exist yet).
    pub fn kv_scan(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, SpoolError> {
        let tx = self.inner.db.begin_read()?;
        let t = match tx.open_table(TableDefinition::<&str, &[u8]>::new(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One key of a named key-value table.
    pub fn kv_get(&self, table: &'static str, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let tx = self.inner.db.begin_read()?;
        let t = match tx.open_table(TableDefinition::<&str, &[u8]>::new(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// A persisted engine setting (e.g. the throughput level).
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, SpoolError> {
        let tx = self.inner.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_string()))
    }

    /// Persist an engine setting (own durable transaction).
    pub fn meta_set(&self, key: &str, value: &str) -> Result<(), SpoolError> {
        let mut tx = self.inner.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut t = tx.open_table(META)?;
            t.insert(key, value)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Size of the spool file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.path)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Percentage of the spool filesystem in use.
    pub fn disk_used_percent(&self) -> Option<f64> {
        let dir = self.inner.path.parent()?;
        disk_used_percent(dir)
    }

    /// Stop the writer (after it has flushed what it holds) and release the file.
    pub fn close(&self) {
        if let Ok(mut g) = self.inner.tx.lock() {
            g.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Percentage of a filesystem in use (as `df` shows it).
pub fn disk_used_percent(dir: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return None;
    }
    let total = st.f_blocks as f64;
    let avail = st.f_bavail as f64;
    let free = st.f_bfree as f64;
    let used = total - free;
    if used + avail <= 0.0 {
        return None;
    }
    Some(used * 100.0 / (used + avail))
}

const MAX_BATCH: usize = 8192;

fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    commits: Arc<AtomicU64>,
    clock: Clock,
    keep_finished_ms: u64,
    body_cache: Arc<DashMap<u64, Arc<Vec<u8>>>>,
) {
    let mut last_prune = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        let prune_before = if now.saturating_sub(last_prune) > 60_000 {
            last_prune = now;
            Some(now.saturating_sub(keep_finished_ms) << ID_SHIFT)
        } else {
            None
        };
        let mut released = Vec::new();
        let result = apply(&db, &batch, prune_before, &mut released);
        for b in released {
            body_cache.remove(&b);
        }
        if result.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = &result {
            tracing::error!(error = %e, ops = batch.len(), "spool commit failed");
        }
        for op in batch {
            let reply = match op {
                Op::Inject { reply, .. }
                | Op::Update { reply, .. }
                | Op::Finish { reply, .. }
                | Op::Kv { reply, .. } => reply,
            };
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(SpoolError::Db(e.to_string())),
            };
            let _ = reply.send(r);
        }
    }
}

fn apply(
    db: &Database,
    batch: &[Op],
    prune_before: Option<u64>,
    released: &mut Vec<u64>,
) -> Result<(), SpoolError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut bodies = tx.open_table(BODIES)?;
        let mut refs = tx.open_table(REFS)?;
        let mut active = tx.open_table(ACTIVE)?;
        let mut done = tx.open_table(DONE)?;
        for op in batch {
            match op {
                Op::Inject {
                    body_id,
                    body,
                    records,
                    ..
                } => {
                    bodies.insert(*body_id, body.as_slice())?;
                    refs.insert(*body_id, records.len() as u64)?;
                    for (id, rec) in records {
                        active.insert(*id, rec.as_slice())?;
                    }
                }
                Op::Update { id, record, .. } => {
                    // A delivery finished in the same batch must not come back.
                    if active.get(*id)?.is_some() {
                        active.insert(*id, record.as_slice())?;
                    }
                }
                Op::Finish {
                    id,
                    body_id,
                    record,
                    ..
                } => {
                    if active.remove(*id)?.is_none() {
                        continue;
                    }
                    done.insert(*id, record.as_slice())?;
                    let left = refs.get(*body_id)?.map(|v| v.value()).unwrap_or(1);
                    if left <= 1 {
                        refs.remove(*body_id)?;
                        bodies.remove(*body_id)?;
                        released.push(*body_id);
                    } else {
                        refs.insert(*body_id, left - 1)?;
                    }
                }
                Op::Kv { .. } => {}
            }
        }
        if let Some(cut) = prune_before {
            done.retain_in(..cut, |_, _| false)?;
        }
    }
    for op in batch {
        if let Op::Kv {
            table, key, value, ..
        } = op
        {
            let mut t = tx.open_table(TableDefinition::<&str, &[u8]>::new(table))?;
            match value {
                Some(v) => {
                    t.insert(key.as_str(), v.as_slice())?;
                }
                None => {
                    t.remove(key.as_str())?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
