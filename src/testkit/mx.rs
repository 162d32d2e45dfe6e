//! Scriptable fake MX host: a tiny hand-written SMTP server on plain tokio.
//!
//! Connection *refusal* is simulated by simply not starting a `FakeMx` on that
//! IP/port (on loopback the kernel then answers RST / ECONNREFUSED).
//!
//! RCPT reply precedence: `fail_first_rcpt` greylisting (counter is global to
//! the FakeMx and reset by `set_script`) -> first matching `rcpt_replies`
//! entry -> `Behaviour::RefuseRcpt` -> `250 2.1.5 Ok`.
//!
//! `Behaviour` is evaluated when a connection is accepted (Greet421, Stall);
//! everything else is re-read from the current script for every command, so
//! `set_script` also affects subsequent commands on open connections.
//!
//! Only loopback addresses can be bound: starting on any other address is an error.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

const HOSTNAME: &str = "fake-mx.test";
const MAX_LINE: usize = 1 << 20;

/// How to treat a connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Normal SMTP server.
    Accept,
    /// "421 4.3.2 Service not available" then close.
    Greet421,
    /// Accept TCP, never send anything (socket kept open until the peer closes or FakeMx drops).
    Stall,
    /// Every RCPT gets this reply, e.g. `(550, "5.1.1 User unknown")`.
    RefuseRcpt(u16, String),
}

#[derive(Clone, Debug)]
pub struct MxScript {
    pub behaviour: Behaviour,
    /// If the recipient address contains the substring -> reply code + text.
    pub rcpt_replies: Vec<(String, u16, String)>,
    /// First N RCPTs overall get "451 4.7.1 Greylisted, try again later".
    pub fail_first_rcpt: u32,
    /// Override the final reply after the DATA body (only a 250 records a Txn).
    pub data_reply: Option<(u16, String)>,
    /// Override the reply to MAIL FROM (a code >= 400 leaves no transaction open).
    pub mail_reply: Option<(u16, String)>,
    /// Advertise STARTTLS but answer "454 4.7.0 TLS not available" to it.
    pub starttls: bool,
    /// Sleep before every reply (simulated RTT), including the greeting.
    pub delay: Option<Duration>,
}

impl Default for MxScript {
    fn default() -> Self {
        MxScript {
            behaviour: Behaviour::Accept,
            rcpt_replies: Vec::new(),
            fail_first_rcpt: 0,
            data_reply: None,
            mail_reply: None,
            starttls: false,
            delay: None,
        }
    }
}

/// A completed transaction (DATA answered with 250).
#[derive(Clone, Debug)]
pub struct Txn {
    pub mail_from: String,
    /// Accepted recipients only.
    pub rcpt_to: Vec<String>,
    /// Dot-unstuffed body, without the terminating ".\r\n".
    pub data: Vec<u8>,
    pub peer: SocketAddr,
    pub helo: String,
}

struct State {
    script: MxScript,
    rcpt_seen_for_greylist: u32,
    txns: Vec<Txn>,
    /// When each transaction of `txns` completed, and on which connection (index in `conns`).
    txn_times: Vec<Instant>,
    txn_conns: Vec<usize>,
    /// Per connection (index in `conns`): still counted as open.
    open: Vec<bool>,
    conns: Vec<SocketAddr>,
    rcpts: Vec<String>,
    tasks: Vec<AbortHandle>,
    /// Connections open right now, and the most ever open at once.
    active: usize,
    peak: usize,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn script(&self) -> MxScript {
        self.lock().script.clone()
    }
    /// The connection `conn` no longer counts as open (idempotent).
    fn close(&self, conn: usize) {
        let mut st = self.lock();
        if let Some(open) = st.open.get_mut(conn) {
            if std::mem::replace(open, false) {
                st.active -= 1;
            }
        }
    }
}

pub struct FakeMx {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: AbortHandle,
}

impl FakeMx {
    /// Listen on `ip:port` (`port` may be 0; read the real one from `addr`).
    ///
    /// # Panics
    /// If `ip` is not loopback or the port cannot be bound; use [`FakeMx::try_start`] to get
    /// the error instead.
    pub async fn start(ip: IpAddr, port: u16, script: MxScript) -> FakeMx {
        Self::try_start(ip, port, script)
            .await
            .unwrap_or_else(|e| panic!("FakeMx: bind {ip}:{port}: {e}"))
    }

    /// Listen on the loopback address `ip:port` (`port` may be 0; read the real one from
    /// `addr`).
    pub async fn try_start(ip: IpAddr, port: u16, script: MxScript) -> std::io::Result<FakeMx> {
        super::dns::ensure_loopback(ip, "FakeMx")?;
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script,
                rcpt_seen_for_greylist: 0,
                txns: Vec::new(),
                txn_times: Vec::new(),
                txn_conns: Vec::new(),
                open: Vec::new(),
                conns: Vec::new(),
                rcpts: Vec::new(),
                tasks: Vec::new(),
                active: 0,
                peak: 0,
            }),
            notify: Notify::new(),
        });
        let sh = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let sh2 = sh.clone();
                let mut st = sh.lock();
                let conn = st.conns.len();
                st.conns.push(peer);
                st.open.push(true);
                st.active += 1;
                st.peak = st.peak.max(st.active);
                st.tasks.retain(|t| !t.is_finished());
                let h = tokio::spawn(async move {
                    let _ = serve(stream, peer, conn, sh2.clone()).await;
                    sh2.close(conn);
                });
                st.tasks.push(h.abort_handle());
            }
        })
        .abort_handle();
        Ok(FakeMx {
            addr,
            shared,
            accept_task,
        })
    }

    /// The most connections that were ever open at the same time. A session counts as
    /// closed once the client sent QUIT (so a client that opens its next connection as soon
    /// as it has the 221 is not counted twice).
    pub fn peak_connections(&self) -> usize {
        self.shared.lock().peak
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        self.shared.lock().active
    }

    /// The most transactions any one connection carried.
    pub fn max_transactions_per_connection(&self) -> usize {
        let st = self.shared.lock();
        let mut per = vec![0usize; st.conns.len()];
        for &c in &st.txn_conns {
            if let Some(n) = per.get_mut(c) {
                *n += 1;
            }
        }
        per.into_iter().max().unwrap_or(0)
    }

    /// Replace the script (new connections / subsequent commands). Resets the
    /// greylisting counter used by `fail_first_rcpt`.
    pub fn set_script(&self, script: MxScript) {
        let mut st = self.shared.lock();
        st.script = script;
        st.rcpt_seen_for_greylist = 0;
    }

    pub fn transactions(&self) -> Vec<Txn> {
        self.shared.lock().txns.clone()
    }

    /// When each transaction of [`FakeMx::transactions`] completed (same order).
    pub fn transaction_times(&self) -> Vec<Instant> {
        self.shared.lock().txn_times.clone()
    }

    pub fn connections(&self) -> Vec<SocketAddr> {
        self.shared.lock().conns.clone()
    }

    /// Every RCPT address seen (accepted or not), in order.
    pub fn rcpt_attempts(&self) -> Vec<String> {
        self.shared.lock().rcpts.clone()
    }

    /// Wait until at least `n` transactions completed.
    ///
    /// # Panics
    /// After `timeout`, with what the host saw so far (this is a test assertion).
    pub async fn wait_transactions(&self, n: usize, timeout: Duration) -> Vec<Txn> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if st.txns.len() >= n {
                    return st.txns.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = self.shared.lock();
                panic!(
                    "FakeMx {}: timed out after {:?} waiting for {} transaction(s); got {} \
                     (connections: {:?}, rcpt attempts: {:?}, txns: {:?})",
                    self.addr,
                    timeout,
                    n,
                    st.txns.len(),
                    st.conns,
                    st.rcpts,
                    st.txns
                );
            }
        }
    }
}

impl Drop for FakeMx {
    fn drop(&mut self) {
        self.accept_task.abort();
        for t in self.shared.lock().tasks.drain(..) {
            t.abort();
        }
    }
}

async fn reply(w: &mut OwnedWriteHalf, sh: &Shared, text: &str) -> std::io::Result<()> {
    if let Some(d) = sh.script().delay {
        tokio::time::sleep(d).await;
    }
    w.write_all(text.as_bytes()).await?;
    w.flush().await
}

fn line(code: u16, text: &str) -> String {
    format!("{code} {text}\r\n")
}

/// Address between '<' and '>' after the "FROM:"/"TO:" prefix; falls back to the
/// first whitespace-separated token if there are no brackets.
fn parse_path(arg: &str) -> Option<String> {
    let arg = arg.trim_start();
    if let Some(rest) = arg.strip_prefix('<') {
        let end = rest.find('>')?;
        Some(rest[..end].to_string())
    } else {
        arg.split_whitespace().next().map(str::to_string)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

async fn read_line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await
        .ok()?;
    (n > 0).then_some(buf)
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: usize,
    sh: Arc<Shared>,
) -> std::io::Result<()> {
    let behaviour = sh.script().behaviour;
    let (rd, mut w) = stream.into_split();
    let mut r = BufReader::new(rd);

    match behaviour {
        Behaviour::Stall => {
            // Never send anything; keep the socket open until the peer goes away.
            let mut sink = [0u8; 4096];
            while r.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        Behaviour::Greet421 => {
            reply(&mut w, &sh, "421 4.3.2 Service not available\r\n").await?;
            w.shutdown().await?;
            return Ok(());
        }
        Behaviour::Accept | Behaviour::RefuseRcpt(..) => {}
    }

    reply(&mut w, &sh, &format!("220 {HOSTNAME} ESMTP fake\r\n")).await?;

    let mut helo = String::new();
    let mut mail_from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();

    while let Some(raw) = read_line(&mut r).await {
        let cmd_line = String::from_utf8_lossy(&raw);
        let cmd_line = cmd_line.trim_end_matches(['\r', '\n']);
        let verb = cmd_line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = cmd_line.get(verb.len()..).unwrap_or("").trim();

        match verb.as_str() {
            "EHLO" => {
                helo = arg.to_string();
                let mut caps = vec![
                    format!("{HOSTNAME} greets {arg}"),
                    "PIPELINING".into(),
                    "SIZE 52428800".into(),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if sh.script().starttls {
                    caps.push("STARTTLS".into());
                }
                let n = caps.len();
                let text: String = caps
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect();
                reply(&mut w, &sh, &text).await?;
            }
            "HELO" => {
                helo = arg.to_string();
                reply(&mut w, &sh, &line(250, HOSTNAME)).await?;
            }
            "STARTTLS" => {
                reply(&mut w, &sh, &line(454, "4.7.0 TLS not available")).await?;
            }
            "MAIL" => {
                let Some(path) = strip_prefix_ci(arg, "FROM:").and_then(parse_path) else {
                    reply(&mut w, &sh, &line(501, "5.5.4 Syntax: MAIL FROM:<address>")).await?;
                    continue;
                };
                if mail_from.is_some() {
                    reply(&mut w, &sh, &line(503, "5.5.1 Nested MAIL command")).await?;
                    continue;
                }
                rcpts.clear();
                match sh.script().mail_reply {
                    Some((code, text)) => {
                        if code < 400 {
                            mail_from = Some(path);
                        }
                        reply(&mut w, &sh, &line(code, &text)).await?;
                    }
                    None => {
                        mail_from = Some(path);
                        reply(&mut w, &sh, &line(250, "2.1.0 Ok")).await?;
                    }
                }
            }
            "RCPT" => {
                let Some(path) = strip_prefix_ci(arg, "TO:").and_then(parse_path) else {
                    reply(&mut w, &sh, &line(501, "5.5.4 Syntax: RCPT TO:<address>")).await?;
                    continue;
                };
                if mail_from.is_none() {
                    reply(&mut w, &sh, &line(503, "5.5.1 Need MAIL command")).await?;
                    continue;
                }
                let (code, text) = {
                    let mut st = sh.lock();
                    st.rcpts.push(path.clone());
                    if st.rcpt_seen_for_greylist < st.script.fail_first_rcpt {
                        st.rcpt_seen_for_greylist += 1;
                        (451, "4.7.1 Greylisted, try again later".to_string())
                    } else if let Some((_, c, t)) = st
                        .script
                        .rcpt_replies
                        .iter()
                        .find(|(sub, _, _)| path.contains(sub.as_str()))
                    {
                        (*c, t.clone())
                    } else if let Behaviour::RefuseRcpt(c, t) = &st.script.behaviour {
                        (*c, t.clone())
                    } else {
                        (250, "2.1.5 Ok".to_string())
                    }
                };
                if (200..300).contains(&code) {
                    rcpts.push(path);
                }
                reply(&mut w, &sh, &line(code, &text)).await?;
            }
            "DATA" => {
                if mail_from.is_none() || rcpts.is_empty() {
                    reply(&mut w, &sh, &line(554, "5.5.1 No valid recipients")).await?;
                    continue;
                }
                reply(&mut w, &sh, &line(354, "End data with <CR><LF>.<CR><LF>")).await?;
                let mut data = Vec::new();
                loop {
                    let Some(l) = read_line(&mut r).await else {
                        return Ok(()); // peer went away mid-DATA
                    };
                    if l == b".\r\n" || l == b".\n" {
                        break;
                    }
                    let body = l.strip_prefix(b".").unwrap_or(&l);
                    data.extend_from_slice(body);
                }
                let (code, text) = sh
                    .script()
                    .data_reply
                    .unwrap_or((250, "2.0.0 Ok queued".to_string()));
                if code == 250 {
                    let txn = Txn {
                        mail_from: mail_from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut rcpts),
                        data,
                        peer,
                        helo: helo.clone(),
                    };
                    let mut st = sh.lock();
                    st.txns.push(txn);
                    st.txn_times.push(Instant::now());
                    st.txn_conns.push(conn);
                    drop(st);
                    sh.notify.notify_waiters();
                }
                mail_from = None;
                rcpts.clear();
                reply(&mut w, &sh, &line(code, &text)).await?;
            }
            "RSET" => {
                mail_from = None;
                rcpts.clear();
                reply(&mut w, &sh, &line(250, "2.0.0 Ok")).await?;
            }
            "NOOP" => reply(&mut w, &sh, &line(250, "2.0.0 Ok")).await?,
            "QUIT" => {
                sh.close(conn);
                reply(&mut w, &sh, &line(221, "2.0.0 Bye")).await?;
                w.shutdown().await?;
                return Ok(());
            }
            _ => {
                reply(&mut w, &sh, &line(500, "5.5.2 Command not recognized")).await?;
            }
        }
    }
    Ok(())
}
