//! A tiny HTTP/1.1 client for the webhook: one POST per connection, status line only.

use hmac::{KeyInit, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The system CA bundle used for `https://` when `webhook_ca_file` is not set.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Longest response head line accepted.
const MAX_STATUS_LINE: usize = 8192;

/// Where the webhook goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Host name or IP (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Value of the `Host` header.
    pub authority: String,
}

/// Parse `http://host[:port][/path][?query]` (or `https://`).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("http://") {
        (false, &url[7..])
    } else if lower.starts_with("https://") {
        (true, &url[8..])
    } else {
        return Err("must start with http:// or https://".into());
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err("must not contain user information".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']').ok_or("has an unclosed [")?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has junk after the IPv6 address".into()),
        };
        (&v6[..close], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("has an invalid port {p:?}"))?,
        None if https => 443,
        None => 80,
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("has spaces or control characters in its path".into());
    }
    Ok(Target {
        https,
        host: host.to_string(),
        port,
        path,
        authority: authority.to_string(),
    })
}

/// A TLS connector trusting the CAs of a PEM bundle.
pub fn tls_connector(ca_file: &Path) -> Result<TlsConnector, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem).filter_map(|c| c.ok());
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("no CA certificate in {}", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Lowercase hex HMAC-SHA256 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut m = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length
        Err(_) => return String::new(),
    };
    m.update(body);
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The webhook client.
#[derive(Clone)]
pub struct Client {
    pub target: Target,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Client {
    pub fn new(target: Target, tls: Option<TlsConnector>, timeout: Duration) -> Client {
        Client {
            target,
            tls,
            timeout,
        }
    }

    /// POST a JSON body; the HTTP status, or why there is none.
    pub async fn post(&self, body: &[u8], signature: Option<&str>) -> Result<u16, String> {
        match tokio::time::timeout(self.timeout, self.exchange(body, signature)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn exchange(&self, body: &[u8], signature: Option<&str>) -> Result<u16, String> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            t.path,
            t.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if let Some(sig) = signature {
            req.push_str("X-Sluice-Signature: sha256=");
            req.push_str(sig);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(t.host.clone())
                    .map_err(|e| format!("invalid TLS name {:?}: {e}", t.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", t.host))?;
                roundtrip(stream, &bytes).await
            }
            None => roundtrip(tcp, &bytes).await,
        }
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &[u8]) -> Result<u16, String> {
    s.write_all(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    s.flush()
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            return parse_status(&head[..end]);
        }
        if head.len() > MAX_STATUS_LINE {
            return Err("response status line too long".into());
        }
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            return Err("connection closed without a response".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn parse_status(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("not an HTTP response: {line:?}"));
    }
    code.parse::<u16>()
        .map_err(|_| format!("not an HTTP response: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/hook?x=1").expect("url");
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8080, "/hook?x=1")
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_url("HTTPS://events.example.com").expect("url");
        assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
        let t = parse_url("http://[::1]:9/p").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://x:0/").is_err());
        assert!(parse_url("http:///p").is_err());
        assert!(parse_url("http://u:p@x/").is_err());
    }

    #[test]
    fn status() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content"), Ok(204));
        assert!(parse_status(b"SSH-2.0").is_err());
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
