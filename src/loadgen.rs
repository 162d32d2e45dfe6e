//! Load generation for benchmarks and `sluice bench-inject`: HTTP batches and pipelined SMTP
//! submission sessions, with recipients `u<k>@d<k mod domains>.test`. Point it at your own
//! sluice and sink only.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connection to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("sluice refused the injection: {0}")]
    Refused(String),
}

/// A ~`size`-byte message.
pub fn body(size: usize) -> String {
    format!(
        "From: Shop <news@shop.test>\r\nSubject: bench\r\nMessage-ID: <bench@shop.test>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n{}",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do.\r\n".repeat(size / 66)
    )
}

/// Minimal HTTP POST; returns the status code.
pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<u16, LoadError> {
    let io = |e| LoadError::Io(addr, e);
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Inject recipients `range` (u<k>@d<k % domains>.test) over HTTP in batches, `conc` clients.
pub async fn inject_http(
    addr: SocketAddr,
    total: usize,
    domains: usize,
    batch: usize,
    conc: usize,
    content: &str,
    campaign: &str,
) -> Result<(), LoadError> {
    let per = total.div_ceil(conc);
    let mut tasks = Vec::new();
    for c in 0..conc {
        let content = content.to_string();
        let campaign = campaign.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = c * per;
            let end = ((c + 1) * per).min(total);
            while i < end {
                let hi = (i + batch).min(end);
                let rcpts: Vec<String> = (i..hi).map(|k| format!("u{k}@d{}.test", k % domains)).collect();
                let req = serde_json::json!({"campaign": campaign, "recipients": rcpts, "content": content});
                let code = post(addr, "/api/v1/messages", req.to_string().as_bytes()).await?;
                if code != 202 {
                    return Err(LoadError::Refused(format!("HTTP {code}")));
                }
                i = hi;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| LoadError::Refused(e.to_string()))??;
    }
    Ok(())
}

/// Inject over SMTP submission: `sessions` concurrent sessions, transactions of `per_txn`
/// recipients, pipelined envelopes.
pub async fn inject_smtp(
    addr: SocketAddr,
    total: usize,
    domains: usize,
    per_txn: usize,
    sessions: usize,
    content: &str,
) -> Result<(), LoadError> {
    let per = total.div_ceil(sessions);
    let mut tasks = Vec::new();
    for c in 0..sessions {
        let content = content.to_string();
        tasks.push(tokio::spawn(async move {
            let io = |e| LoadError::Io(addr, e);
            let mut s = TcpStream::connect(addr).await.map_err(io)?;
            // no Nagle: the message and its terminator must not wait for a delayed ACK
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            let mut pending = Vec::new();
            async fn replies(
                addr: SocketAddr,
                s: &mut TcpStream,
                buf: &mut [u8],
                pending: &mut Vec<u8>,
                n: usize,
            ) -> Result<(), LoadError> {
                let mut got = 0;
                while got < n {
                    while let Some(p) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=p).collect();
                        if line.len() >= 4 && line[3] == b' ' {
                            if line[0] != b'2' && line[0] != b'3' {
                                return Err(LoadError::Refused(
                                    String::from_utf8_lossy(&line).trim().to_string(),
                                ));
                            }
                            got += 1;
                        }
                        if got == n {
                            return Ok(());
                        }
                    }
                    let k = s.read(buf).await.map_err(|e| LoadError::Io(addr, e))?;
                    if k == 0 {
                        return Err(LoadError::Refused("connection closed".into()));
                    }
                    pending.extend_from_slice(&buf[..k]);
                }
                Ok(())
            }
            replies(addr, &mut s, &mut buf, &mut pending, 1).await?;
            s.write_all(b"EHLO inject.test\r\n").await.map_err(io)?;
            replies(addr, &mut s, &mut buf, &mut pending, 1).await?;
            let mut i = c * per;
            let end = ((c + 1) * per).min(total);
            while i < end {
                let hi = (i + per_txn).min(end);
                let mut cmd = String::from("MAIL FROM:<news@shop.test>\r\n");
                for k in i..hi {
                    cmd.push_str(&format!("RCPT TO:<u{k}@d{}.test>\r\n", k % domains));
                }
                cmd.push_str("DATA\r\n");
                s.write_all(cmd.as_bytes()).await.map_err(io)?;
                replies(addr, &mut s, &mut buf, &mut pending, 2 + hi - i).await?;
                let mut data = Vec::with_capacity(content.len() + 5);
                data.extend_from_slice(content.as_bytes());
                data.extend_from_slice(b"\r\n.\r\n");
                s.write_all(&data).await.map_err(io)?;
                replies(addr, &mut s, &mut buf, &mut pending, 1).await?;
                i = hi;
            }
            let _ = s.write_all(b"QUIT\r\n").await;
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| LoadError::Refused(e.to_string()))??;
    }
    Ok(())
}
