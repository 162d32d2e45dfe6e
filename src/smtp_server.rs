//! A small ESMTP server core (PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES) shared by
//! the submission listener and the feedback (bounce) listener. Commands are parsed with
//! `smtp-proto`; what to accept is decided by a [`Handler`].

use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, RequestReceiver,
};
use smtp_proto::Request;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_ERRORS: u32 = 20;

/// Decides what a listener accepts. Replies are full lines without CRLF ("550 5.7.1 ...").
pub trait Handler: Send + Sync + 'static {
    fn hostname(&self) -> &str;
    fn max_size(&self) -> usize;
    fn max_rcpt(&self) -> usize;
    /// May a transaction start? (e.g. back-pressure)
    fn mail(&self, _from: &str) -> Result<(), String> {
        Ok(())
    }
    /// Accept a recipient (returning it normalised) or refuse it with a reply line.
    fn rcpt(&self, peer: SocketAddr, address: &str) -> Result<String, String>;
    /// Offer CHUNKING (BDAT, RFC 3030).
    fn chunking(&self) -> bool {
        true
    }
    /// Pause before handling each read (simulated network round trip; benchmarks only).
    fn read_delay(&self) -> Option<Duration> {
        None
    }
    /// Take a complete message; returns the reply line.
    fn data(
        &self,
        peer: SocketAddr,
        rcpts: Vec<String>,
        data: Vec<u8>,
    ) -> impl Future<Output = String> + Send;
}

/// Accept connections until shutdown; one task per session.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    sessions.spawn(async move {
                        if let Err(e) = session(stream, peer, handler).await {
                            tracing::debug!(%peer, error = %e, "SMTP session ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SMTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    sessions.shutdown().await;
}

enum Mode {
    Command,
    Data(DataReceiver),
    Discard(DummyDataReceiver),
    /// Receiving a BDAT chunk (RFC 3030).
    Bdat(BdatReceiver),
    /// Swallowing a BDAT chunk that will be refused with this reply.
    BdatSkip(DummyDataReceiver, String),
}

struct Txn {
    mail: bool,
    rcpts: Vec<String>,
    data: Vec<u8>,
}

impl Txn {
    /// Hand the complete message to the handler; the transaction ends. Returns the reply
    /// line with its CRLF.
    async fn deliver<H: Handler>(&mut self, handler: &H, peer: SocketAddr) -> String {
        let content = std::mem::take(&mut self.data);
        let rcpts = std::mem::take(&mut self.rcpts);
        self.mail = false;
        let mut reply = handler.data(peer, rcpts, content).await;
        reply.push_str("\r\n");
        reply
    }
}

async fn session<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let host = handler.hostname().to_string();
    let max_size = handler.max_size();
    let max_rcpt = handler.max_rcpt();
    stream
        .write_all(format!("220 {host} ESMTP sluice\r\n").as_bytes())
        .await?;
    let mut rr = RequestReceiver::default();
    let mut mode = Mode::Command;
    let mut helo = false;
    let mut errors = 0u32;
    let mut txn = Txn {
        mail: false,
        rcpts: Vec::new(),
        data: Vec::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(1024);
    loop {
        let mut n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => {
                stream.write_all(b"421 4.4.2 idle timeout\r\n").await?;
                return Ok(());
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        if let Some(d) = handler.read_delay() {
            // one simulated round trip per flight: what the peer sent in the same flight
            // (already arrived after the delay) is read without a second delay
            tokio::time::sleep(d).await;
            while n < buf.len() {
                match stream.try_read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
        }
        let mut iter = buf[..n].iter();
        let mut quit = false;
        while iter.len() > 0 && !quit {
            match &mut mode {
                Mode::Data(dr) => {
                    if dr.ingest(&mut iter, &mut txn.data) {
                        mode = Mode::Command;
                        let reply = txn.deliver(&*handler, peer).await;
                        out.extend_from_slice(reply.as_bytes());
                    } else if txn.data.len() > max_size {
                        mode = Mode::Discard(DummyDataReceiver::new_data(dr));
                        txn.data = Vec::new();
                    }
                }
                Mode::Bdat(br) => {
                    if br.ingest(&mut iter, &mut txn.data) {
                        let last = br.is_last;
                        mode = Mode::Command;
                        if last {
                            let reply = txn.deliver(&*handler, peer).await;
                            out.extend_from_slice(reply.as_bytes());
                        } else {
                            out.extend_from_slice(b"250 2.0.0 chunk received\r\n");
                        }
                    }
                }
                Mode::BdatSkip(dd, reply) => {
                    if dd.ingest(&mut iter) {
                        out.extend_from_slice(reply.as_bytes());
                        out.extend_from_slice(b"\r\n");
                        mode = Mode::Command;
                    }
                }
                Mode::Discard(dd) => {
                    if dd.ingest(&mut iter) {
                        mode = Mode::Command;
                        txn = Txn {
                            mail: false,
                            rcpts: Vec::new(),
                            data: Vec::new(),
                        };
                        out.extend_from_slice(
                            format!(
                                "552 5.3.4 message exceeds the size limit of {max_size} bytes\r\n"
                            )
                            .as_bytes(),
                        );
                    }
                }
                Mode::Command => match rr.ingest(&mut iter) {
                    Ok(req) => {
                        let reply = match req {
                            Request::Ehlo { .. } => {
                                helo = true;
                                txn = Txn {
                                    mail: false,
                                    rcpts: Vec::new(),
                                    data: Vec::new(),
                                };
                                format!(
                                    "250-{host} at your service\r\n250-PIPELINING\r\n250-SIZE {max_size}\r\n250-8BITMIME\r\n{}250 ENHANCEDSTATUSCODES\r\n",
                                    if handler.chunking() { "250-CHUNKING\r\n" } else { "" }
                                )
                            }
                            Request::Helo { .. } => {
                                helo = true;
                                txn = Txn {
                                    mail: false,
                                    rcpts: Vec::new(),
                                    data: Vec::new(),
                                };
                                format!("250 {host}\r\n")
                            }
                            Request::Mail { from } => {
                                if !helo {
                                    "503 5.5.1 say EHLO first\r\n".to_string()
                                } else if txn.mail {
                                    "503 5.5.1 nested MAIL command\r\n".to_string()
                                } else if from.size > max_size {
                                    format!("552 5.3.4 message size {} exceeds the limit of {max_size}\r\n", from.size)
                                } else if let Err(reply) = handler.mail(&from.address) {
                                    format!("{reply}\r\n")
                                } else {
                                    txn.mail = true;
                                    "250 2.1.0 sender ok\r\n".to_string()
                                }
                            }
                            Request::Rcpt { to } => {
                                if !txn.mail {
                                    "503 5.5.1 need MAIL before RCPT\r\n".to_string()
                                } else if txn.rcpts.len() >= max_rcpt {
                                    "452 4.5.3 too many recipients\r\n".to_string()
                                } else {
                                    match handler.rcpt(peer, &to.address) {
                                        Ok(a) => {
                                            txn.rcpts.push(a);
                                            "250 2.1.5 recipient ok\r\n".to_string()
                                        }
                                        Err(reply) => format!("{reply}\r\n"),
                                    }
                                }
                            }
                            Request::Data => {
                                if txn.rcpts.is_empty() {
                                    "554 5.5.1 no valid recipients\r\n".to_string()
                                } else {
                                    mode = Mode::Data(DataReceiver::new());
                                    txn.data.clear();
                                    "354 end data with <CR><LF>.<CR><LF>\r\n".to_string()
                                }
                            }
                            Request::Bdat {
                                chunk_size,
                                is_last,
                            } => {
                                if !txn.mail || txn.rcpts.is_empty() {
                                    mode = Mode::BdatSkip(
                                        DummyDataReceiver::new_bdat(chunk_size),
                                        "503 5.5.1 need MAIL and RCPT before BDAT".into(),
                                    );
                                    String::new()
                                } else if txn.data.len() + chunk_size > max_size {
                                    txn = Txn {
                                        mail: false,
                                        rcpts: Vec::new(),
                                        data: Vec::new(),
                                    };
                                    mode = Mode::BdatSkip(
                                        DummyDataReceiver::new_bdat(chunk_size),
                                        format!("552 5.3.4 message exceeds the size limit of {max_size} bytes"),
                                    );
                                    String::new()
                                } else if chunk_size == 0 {
                                    if is_last {
                                        txn.deliver(&*handler, peer).await
                                    } else {
                                        "250 2.0.0 empty chunk\r\n".to_string()
                                    }
                                } else {
                                    mode = Mode::Bdat(BdatReceiver::new(chunk_size, is_last));
                                    String::new()
                                }
                            }
                            Request::Rset => {
                                txn = Txn {
                                    mail: false,
                                    rcpts: Vec::new(),
                                    data: Vec::new(),
                                };
                                "250 2.0.0 reset\r\n".to_string()
                            }
                            Request::Noop { .. } => "250 2.0.0 ok\r\n".to_string(),
                            Request::Vrfy { .. } => "252 2.1.5 cannot verify\r\n".to_string(),
                            Request::Quit => {
                                quit = true;
                                "221 2.0.0 bye\r\n".to_string()
                            }
                            other => {
                                errors += 1;
                                format!("502 5.5.1 {} not implemented\r\n", other.name())
                            }
                        };
                        out.extend_from_slice(reply.as_bytes());
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                    Err(e) => {
                        errors += 1;
                        let msg = match e {
                            smtp_proto::Error::UnknownCommand => {
                                "500 5.5.2 unknown command".to_string()
                            }
                            smtp_proto::Error::ResponseTooLong => {
                                "500 5.5.2 line too long".to_string()
                            }
                            smtp_proto::Error::InvalidSenderAddress => {
                                "501 5.1.7 bad sender address".to_string()
                            }
                            smtp_proto::Error::InvalidRecipientAddress => {
                                "501 5.1.3 bad recipient address".to_string()
                            }
                            smtp_proto::Error::SyntaxError { syntax } => {
                                format!("501 5.5.4 syntax: {syntax}")
                            }
                            smtp_proto::Error::InvalidParameter { param } => {
                                format!("501 5.5.4 invalid parameter {param}")
                            }
                            smtp_proto::Error::UnsupportedParameter { param } => {
                                format!("555 5.5.4 unsupported parameter {param}")
                            }
                            other => format!("500 5.5.2 {other:?}"),
                        };
                        out.extend_from_slice(msg.as_bytes());
                        out.extend_from_slice(b"\r\n");
                        if errors >= MAX_ERRORS {
                            out.extend_from_slice(b"421 4.7.0 too many errors\r\n");
                            quit = true;
                        }
                    }
                },
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
}
