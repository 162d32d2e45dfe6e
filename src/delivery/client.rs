//! The outgoing SMTP session, as an explicit state machine.
//!
//! ```text
//! Connecting ─▶ Greeting ─▶ Ehlo ─▶ [StartTls ─▶ Ehlo] ─▶ Ready ⇄ Transaction ─▶ Quit ─▶ Closed
//! ```
//! Replies are parsed with `smtp-proto` (multi-line replies, enhanced status codes, EHLO
//! capabilities); TLS is `tokio-rustls` (ring). Every read has a timeout. When the server
//! offers PIPELINING, MAIL, RCPT and DATA go out in one write (RFC 2920), saving two round
//! trips per message.
//!
//! Why not lettre: it hides the banner and most EHLO extensions (SIZE, PIPELINING), has no
//! pipelining, no per-command timeouts and does not expose the negotiated TLS version; an MTA
//! needs all of them. The session interface (`connect` / `transaction` / `quit`) keeps the
//! rest of the engine independent of this implementation.

use super::tls;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, EXT_CHUNKING, EXT_PIPELINING, EXT_SIZE, EXT_START_TLS};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Greeting,
    Ehlo,
    StartTls,
    Ready,
    Transaction,
    Quit,
    Closed,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Connecting => "connect",
            State::Greeting => "greeting",
            State::Ehlo => "EHLO",
            State::StartTls => "STARTTLS",
            State::Ready => "ready",
            State::Transaction => "transaction",
            State::Quit => "QUIT",
            State::Closed => "closed",
        }
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// "550 5.1.1 text" as the remote server sent it (lines joined by spaces).
    pub fn line(&self) -> String {
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text),
            None => format!("{} {}", self.code, self.text),
        }
    }
    fn local(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.into()),
            text: text.into(),
        }
    }
}

/// Why a session or a command failed without a usable reply.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("timed out in {0}")]
    Timeout(&'static str),
    #[error("connection lost in {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("connection closed by server in {0}")]
    Closed(&'static str),
    #[error("protocol error in {0}: {1}")]
    Protocol(&'static str, String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("server replied to {0}: {1}")]
    Rejected(&'static str, String, Reply),
}

impl SessionError {
    /// The reply behind this error, if the server sent one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Rejected(_, _, r) => Some(r),
            _ => None,
        }
    }
    /// An SMTP-like reply describing a local failure, for events.
    pub fn as_reply(&self) -> Reply {
        match self {
            SessionError::Rejected(_, _, r) => r.clone(),
            SessionError::Connect(..) => Reply::local(451, "4.4.1", self.to_string()),
            SessionError::Timeout(_) => Reply::local(451, "4.4.2", self.to_string()),
            SessionError::Tls(_) => Reply::local(451, "4.7.5", self.to_string()),
            _ => Reply::local(451, "4.4.2", self.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Params {
    pub helo: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub source_ip: Option<IpAddr>,
    /// Try STARTTLS when offered.
    pub starttls: bool,
    /// Fail the session when STARTTLS is not offered or fails.
    pub require_tls: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => write_flush(s, data).await,
            Stream::Tls(s) => write_flush(s.as_mut(), data).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}

/// The outcome of one transaction (one recipient).
#[derive(Debug)]
pub enum TxnOutcome {
    /// The server took the message (the reply after the data).
    Accepted(Reply),
    /// The server refused at `stage` ("MAIL", "RCPT" or "DATA"); the session is still usable.
    Refused(&'static str, Reply),
}

/// An open SMTP session to one MX address.
pub struct Session {
    stream: Stream,
    state: State,
    rbuf: Vec<u8>,
    rpos: usize,
    caps: u32,
    max_size: usize,
    tls_version: Option<String>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub banner: Reply,
    params: Params,
    transactions: u32,
}

impl Session {
    /// Connect, read the banner, EHLO, and STARTTLS when offered and wanted.
    pub async fn connect(
        peer: SocketAddr,
        tls_name: &str,
        params: Params,
    ) -> Result<Session, SessionError> {
        let socket = if peer.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| SessionError::Connect(peer, e))?;
        if let Some(ip) = params.source_ip {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| SessionError::Connect(peer, e))?;
        }
        let tcp = match tokio::time::timeout(params.connect_timeout, socket.connect(peer)).await {
            Err(_) => return Err(SessionError::Timeout("connect")),
            Ok(Err(e)) => return Err(SessionError::Connect(peer, e)),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|e| SessionError::Connect(peer, e))?;
        let mut s = Session {
            stream: Stream::Plain(tcp),
            state: State::Greeting,
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            caps: 0,
            max_size: 0,
            tls_version: None,
            peer,
            local,
            banner: Reply::local(0, "0.0.0", ""),
            params,
            transactions: 0,
        };
        let banner = s.read_reply("greeting", s.params.command_timeout).await?;
        if !banner.is_positive() {
            return Err(s.reject("greeting", banner));
        }
        s.banner = banner;
        s.ehlo().await?;
        if s.params.starttls && s.caps & EXT_START_TLS != 0 {
            s.starttls(tls_name).await?;
            s.ehlo().await?;
        } else if s.params.require_tls {
            return Err(SessionError::Tls(
                "TLS is required for this destination but STARTTLS is not offered".into(),
            ));
        }
        s.state = State::Ready;
        Ok(s)
    }

    fn reject(&mut self, stage: &'static str, r: Reply) -> SessionError {
        SessionError::Rejected(stage, self.state.as_str().to_string(), r)
    }

    async fn ehlo(&mut self) -> Result<(), SessionError> {
        self.state = State::Ehlo;
        let cmd = format!("EHLO {}\r\n", self.params.helo);
        self.write("EHLO", cmd.as_bytes()).await?;
        let raw = self
            .read_raw_reply("EHLO", self.params.command_timeout)
            .await?;
        let reply = to_reply(&raw)?;
        if reply.is_positive() {
            if let Ok(e) = EhloResponse::parse(&mut raw.iter()) {
                self.caps = e.capabilities;
                self.max_size = e.size;
            }
            return Ok(());
        }
        if reply.is_permanent() {
            // Old servers: fall back to HELO.
            let cmd = format!("HELO {}\r\n", self.params.helo);
            self.write("HELO", cmd.as_bytes()).await?;
            let r = self.read_reply("HELO", self.params.command_timeout).await?;
            if r.is_positive() {
                self.caps = 0;
                return Ok(());
            }
            return Err(self.reject("HELO", r));
        }
        Err(self.reject("EHLO", reply))
    }

    async fn starttls(&mut self, name: &str) -> Result<(), SessionError> {
        self.state = State::StartTls;
        self.write("STARTTLS", b"STARTTLS\r\n").await?;
        let r = self
            .read_reply("STARTTLS", self.params.command_timeout)
            .await?;
        if !r.is_positive() {
            return Err(SessionError::Tls(format!("STARTTLS refused: {}", r.line())));
        }
        let tcp = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(t) => t,
            other => {
                self.stream = other;
                return Err(SessionError::Tls("already encrypted".into()));
            }
        };
        let connector = tls::connector();
        let server_name = tls::server_name(name, self.peer.ip());
        let tls = tokio::time::timeout(
            self.params.command_timeout,
            connector.connect(server_name, tcp),
        )
        .await
        .map_err(|_| SessionError::Tls("handshake timed out".into()))?
        .map_err(|e| SessionError::Tls(e.to_string()))?;
        self.tls_version = tls
            .get_ref()
            .1
            .protocol_version()
            .map(|v| tls::version_name(v).to_string());
        self.stream = Stream::Tls(Box::new(tls));
        self.rbuf.clear();
        self.rpos = 0;
        Ok(())
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn tls_version(&self) -> Option<&str> {
        self.tls_version.as_deref()
    }
    pub fn pipelining(&self) -> bool {
        self.caps & EXT_PIPELINING != 0
    }
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// One transaction: MAIL FROM, one RCPT TO, DATA, the message.
    ///
    /// `Err` means the session is unusable (timeout, I/O, protocol); the caller must drop it.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpt: &str,
        message: &[u8],
    ) -> Result<TxnOutcome, SessionError> {
        self.state = State::Transaction;
        let size = if self.caps & EXT_SIZE != 0 {
            format!(" SIZE={}", message.len())
        } else {
            String::new()
        };
        let mail = format!("MAIL FROM:<{from}>{size}\r\n");
        let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
        let t = self.params.command_timeout;
        if self.pipelining() && self.caps & EXT_CHUNKING != 0 {
            return self.transaction_bdat(&mail, &rcpt_cmd, message).await;
        }
        let (mail_r, rcpt_r, data_r) = if self.pipelining() {
            let mut batch = Vec::with_capacity(mail.len() + rcpt_cmd.len() + 6);
            batch.extend_from_slice(mail.as_bytes());
            batch.extend_from_slice(rcpt_cmd.as_bytes());
            batch.extend_from_slice(b"DATA\r\n");
            self.write("MAIL", &batch).await?;
            let m = self.read_reply("MAIL", t).await?;
            let r = self.read_reply("RCPT", t).await?;
            let d = self.read_reply("DATA", t).await?;
            (m, Some(r), Some(d))
        } else {
            self.write("MAIL", mail.as_bytes()).await?;
            let m = self.read_reply("MAIL", t).await?;
            if !m.is_positive() {
                (m, None, None)
            } else {
                self.write("RCPT", rcpt_cmd.as_bytes()).await?;
                let r = self.read_reply("RCPT", t).await?;
                if !r.is_positive() {
                    (m, Some(r), None)
                } else {
                    self.write("DATA", b"DATA\r\n").await?;
                    let d = self.read_reply("DATA", t).await?;
                    (m, Some(r), Some(d))
                }
            }
        };
        let failed = if !mail_r.is_positive() {
            Some(("MAIL", mail_r))
        } else if let Some(r) = rcpt_r.filter(|r| !r.is_positive()) {
            Some(("RCPT", r))
        } else {
            match data_r {
                Some(d) if d.code == 354 => None,
                Some(d) => Some(("DATA", d)),
                None => Some(("DATA", Reply::local(554, "5.5.1", "no DATA reply"))),
            }
        };
        if let Some((stage, reply)) = failed {
            // Leave the session clean for the next transaction.
            self.write("RSET", b"RSET\r\n").await?;
            let _ = self.read_reply("RSET", t).await?;
            self.state = State::Ready;
            return Ok(TxnOutcome::Refused(stage, reply));
        }
        let stuffed = dot_stuff(message);
        self.write("DATA", &stuffed).await?;
        let r = self.read_reply("DATA", self.params.data_timeout).await?;
        self.state = State::Ready;
        self.transactions += 1;
        if r.is_positive() {
            Ok(TxnOutcome::Accepted(r))
        } else {
            Ok(TxnOutcome::Refused("DATA", r))
        }
    }

    /// PIPELINING + CHUNKING (RFC 3030): MAIL, RCPT, `BDAT <n> LAST` and the message go out
    /// in one write — the whole transaction in one round trip, no dot-stuffing.
    async fn transaction_bdat(
        &mut self,
        mail: &str,
        rcpt_cmd: &str,
        message: &[u8],
    ) -> Result<TxnOutcome, SessionError> {
        let t = self.params.command_timeout;
        let bdat = format!("BDAT {} LAST\r\n", message.len());
        let mut batch =
            Vec::with_capacity(mail.len() + rcpt_cmd.len() + bdat.len() + message.len());
        batch.extend_from_slice(mail.as_bytes());
        batch.extend_from_slice(rcpt_cmd.as_bytes());
        batch.extend_from_slice(bdat.as_bytes());
        batch.extend_from_slice(message);
        self.write("MAIL", &batch).await?;
        let m = self.read_reply("MAIL", t).await?;
        let r = self.read_reply("RCPT", t).await?;
        let d = self.read_reply("DATA", self.params.data_timeout).await?;
        self.state = State::Ready;
        let failed = if !m.is_positive() {
            Some(("MAIL", m))
        } else if !r.is_positive() {
            Some(("RCPT", r))
        } else if !d.is_positive() {
            Some(("DATA", d.clone()))
        } else {
            None
        };
        match failed {
            None => {
                self.transactions += 1;
                Ok(TxnOutcome::Accepted(d))
            }
            Some((stage, reply)) => {
                self.write("RSET", b"RSET\r\n").await?;
                let _ = self.read_reply("RSET", t).await?;
                Ok(TxnOutcome::Refused(stage, reply))
            }
        }
    }

    /// Say goodbye (best effort, short timeout) and close.
    pub async fn quit(mut self) {
        self.state = State::Quit;
        if self.write("QUIT", b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply("QUIT", Duration::from_secs(5)).await;
        }
        self.state = State::Closed;
    }

    async fn write(&mut self, stage: &'static str, data: &[u8]) -> Result<(), SessionError> {
        match tokio::time::timeout(self.params.command_timeout, self.stream.write_all(data)).await {
            Err(_) => Err(SessionError::Timeout(stage)),
            Ok(Err(e)) => Err(SessionError::Io(stage, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(
        &mut self,
        stage: &'static str,
        t: Duration,
    ) -> Result<Reply, SessionError> {
        let raw = self.read_raw_reply(stage, t).await?;
        to_reply(&raw)
    }

    /// Read one complete (possibly multi-line) reply and return its raw bytes.
    async fn read_raw_reply(
        &mut self,
        stage: &'static str,
        t: Duration,
    ) -> Result<Vec<u8>, SessionError> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(end) = reply_end(&self.rbuf[self.rpos..]) {
                let raw = self.rbuf[self.rpos..self.rpos + end].to_vec();
                self.rpos += end;
                if self.rpos == self.rbuf.len() {
                    self.rbuf.clear();
                    self.rpos = 0;
                }
                return Ok(raw);
            }
            if self.rbuf.len() - self.rpos > 64 * 1024 {
                return Err(SessionError::Protocol(stage, "reply too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(SessionError::Timeout(stage)),
                Ok(Err(e)) => return Err(SessionError::Io(stage, e)),
                Ok(Ok(0)) => return Err(SessionError::Closed(stage)),
                Ok(Ok(n)) => n,
            };
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Length of the first complete reply in `buf` (through the final line's LF), if any.
fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl + 1];
        start += nl + 1;
        // "250-..." continues, "250 ..." or "250\r\n" ends
        if line.len() < 4 || line[3] != b'-' {
            return Some(start);
        }
    }
    None
}

fn to_reply(raw: &[u8]) -> Result<Reply, SessionError> {
    let mut rr = ResponseReceiver::default();
    let r = rr
        .parse(&mut raw.iter())
        .map_err(|e| SessionError::Protocol("reply", format!("{e:?}")))?;
    let enhanced = if r.esc[0] != 0 {
        Some(format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]))
    } else {
        None
    };
    let text = r
        .message
        .lines()
        .map(|l| {
            // strip the repeated enhanced code of continuation lines
            let l = l.trim();
            match &enhanced {
                Some(e) => l.strip_prefix(e.as_str()).map(str::trim).unwrap_or(l),
                None => l,
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Reply {
        code: r.code,
        enhanced,
        text,
    })
}

/// Dot-stuff a message and append the terminating `CRLF.CRLF`.
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    let mut at_line_start = true;
    for &b in msg {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let r =
            to_reply(b"550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again.\r\n")
                .unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "The email account does not exist. Try again.");
        let r = to_reply(b"250 ok\r\n").unwrap();
        assert_eq!((r.code, r.enhanced, r.text.as_str()), (250, None, "ok"));
    }

    #[test]
    fn reply_boundaries() {
        assert_eq!(reply_end(b"250-a\r\n250 b\r\n354 go\r\n"), Some(14));
        assert_eq!(reply_end(b"250-a\r\n250"), None);
        assert_eq!(reply_end(b"220\r\n"), Some(5));
    }

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
    }
}
