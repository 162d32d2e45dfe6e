//! Loopback test doubles: an in-process DNS authority and scriptable fake MX hosts, used by
//! the test suite and by `sluice demo`; never bind anything but loopback.
//!
//! - [`dns`]: an authoritative DNS server (hickory-server) serving MX, A and TXT records from
//!   memory, plus a server that never answers (DNS timeout).
//! - [`mx`]: a tiny hand-written SMTP server whose replies follow a script (greylisting,
//!   per-recipient rejections, 421 greetings, stalls...) and which records what it received
//!   (transactions, connections, peak concurrency).
//! - [`api_request`]: a tiny HTTP client for the engine's API.

pub mod dns;
pub mod mx;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Minimal HTTP/1.1 client for the engine's API on loopback (`Connection: close`, JSON body).
/// Returns the status and the JSON answer (`Null` when the body is not JSON). Gives up after
/// 15 s.
pub async fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, serde_json::Value)> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 15 s"))??;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("malformed HTTP response".into()))?;
    let head = String::from_utf8_lossy(&out[..end]);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status line: {head}")))?;
    let mut payload = out[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    let json = serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
    Ok((code, json))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        let Some(chunk) = b.get(nl + 2..nl + 2 + size) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.extend_from_slice(chunk);
        b = b.get(nl + 4 + size..).unwrap_or_default();
    }
    out
}
