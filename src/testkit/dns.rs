//! In-process authoritative DNS server on loopback (hickory-server 0.26).
//!
//! Everything lives in a single zone, `test.` by default ([`DnsBuilder::with_origin`] picks
//! another one, e.g. `demo.`); names passed to the builder are given without the trailing dot
//! ("a.test", "mx1.a.test"). Queries for names outside the zone are answered with REFUSED by
//! the catalog, which is handy to simulate a DNS failure. [`start_silent`] gives a server that
//! never answers (DNS timeout).
//!
//! Only loopback addresses can be bound: starting on any other address is an error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// Default zone origin every record lives under.
pub const ORIGIN: &str = "test.";
/// Negative-caching TTL (SOA minimum and SOA record TTL).
pub const NEGATIVE_TTL: u32 = 60;
const SERIAL: u32 = 1;

/// Turn "a.test" / "a.test." into an absolute `Name`, or say why it is not a DNS name.
pub fn try_name(s: &str) -> Result<Name, String> {
    if s == "." {
        return Ok(Name::root());
    }
    let abs = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_str(&abs).map_err(|e| format!("bad DNS name {s:?}: {e}"))
}

/// Turn "a.test" / "a.test." into an absolute `Name`.
///
/// # Panics
/// If `s` is not a valid DNS name (names are literals written by the test author).
pub fn name(s: &str) -> Name {
    try_name(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Refuse anything but loopback: the test doubles must never be reachable from outside.
pub(crate) fn ensure_loopback(ip: IpAddr, what: &str) -> io::Result<()> {
    if ip.is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: {ip} is not a loopback address (test doubles bind loopback only)"),
        ))
    }
}

/// Records of one zone, served by [`DnsBuilder::start`].
pub struct DnsBuilder {
    origin: String,
    ttl: u32,
    records: Vec<Record>,
    /// The first invalid name given to the builder, reported by `start`.
    error: Option<String>,
}

impl Default for DnsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsBuilder {
    /// Zone "test." with an SOA (negative TTL 60). Default record TTL 300.
    pub fn new() -> Self {
        Self::with_origin(ORIGIN)
    }

    /// Zone `origin` (e.g. "demo" or "demo.") with an SOA (negative TTL 60). Default record
    /// TTL 300. Records added must lie under `origin`.
    pub fn with_origin(origin: &str) -> Self {
        let origin = origin.trim_end_matches('.');
        let mut b = DnsBuilder {
            origin: format!("{origin}."),
            ttl: 300,
            records: Vec::new(),
            error: None,
        };
        let names = (
            try_name(&b.origin),
            try_name(&format!("ns.{origin}")),
            try_name(&format!("hostmaster.{origin}")),
        );
        match names {
            (Ok(zone), Ok(ns), Ok(hostmaster)) => {
                let soa = SOA::new(ns, hostmaster, SERIAL, 3600, 600, 86400, NEGATIVE_TTL);
                b.records
                    .push(Record::from_rdata(zone, NEGATIVE_TTL, RData::SOA(soa)));
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => b.error = Some(e),
        }
        b
    }

    fn push(mut self, owner: &str, rdata: Result<RData, String>) -> Self {
        match (try_name(owner), rdata) {
            (Ok(n), Ok(rdata)) => self.records.push(Record::from_rdata(n, self.ttl, rdata)),
            (Err(e), _) | (_, Err(e)) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// TTL for records added after this call (default 300).
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = secs;
        self
    }

    pub fn mx(self, domain: &str, pref: u16, host: &str) -> Self {
        let rdata = try_name(host).map(|h| RData::MX(MX::new(pref, h)));
        self.push(domain, rdata)
    }

    /// RFC 7505 null MX: `MX 0 .`
    pub fn null_mx(self, domain: &str) -> Self {
        self.push(domain, Ok(RData::MX(MX::new(0, Name::root()))))
    }

    pub fn a(self, host: &str, ip: Ipv4Addr) -> Self {
        self.push(host, Ok(RData::A(A(ip))))
    }

    pub fn aaaa(self, host: &str, ip: std::net::Ipv6Addr) -> Self {
        self.push(host, Ok(RData::AAAA(AAAA(ip))))
    }

    /// A TXT record; values over 255 bytes are split into several character-strings
    /// (as DKIM keys need), which resolvers join again.
    pub fn txt(self, name: &str, text: &str) -> Self {
        let chunks = text.as_bytes().chunks(255).collect();
        self.push(name, Ok(RData::TXT(TXT::from_bytes(chunks))))
    }

    pub fn cname(self, alias: &str, target: &str) -> Self {
        let rdata = try_name(target).map(|t| RData::CNAME(CNAME(t)));
        self.push(alias, rdata)
    }

    /// Serve the zone on UDP and TCP, same (ephemeral) port, on `bind_ip`.
    ///
    /// # Panics
    /// If a name given to the builder is invalid or the sockets cannot be bound; use
    /// [`DnsBuilder::try_start`] to get the error instead.
    pub async fn start(self, bind_ip: IpAddr) -> DnsServer {
        self.try_start(bind_ip)
            .await
            .unwrap_or_else(|e| panic!("DNS test server on {bind_ip}: {e}"))
    }

    /// Serve the zone on UDP and TCP, same (ephemeral) port, on the loopback address
    /// `bind_ip`.
    pub async fn try_start(self, bind_ip: IpAddr) -> io::Result<DnsServer> {
        if let Some(e) = self.error {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        ensure_loopback(bind_ip, "DNS test server")?;
        let origin =
            try_name(&self.origin).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        for r in self.records {
            zone.upsert_mut(r, SERIAL);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(origin),
            vec![Arc::new(zone) as Arc<dyn ZoneHandler>],
        );

        let (udp, tcp) = bind_udp_tcp(bind_ip).await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 4096);
        Ok(DnsServer {
            addr,
            server: Some(server),
        })
    }
}

/// Bind UDP on port 0, then TCP on the same port (retrying if that TCP port is taken).
async fn bind_udp_tcp(ip: IpAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("bind UDP on {ip}: {e}")))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("could not bind UDP+TCP on the same port on {ip}: {last_err:?}"),
    ))
}

/// Running DNS server; shut down on drop or via [`DnsServer::stop`].
pub struct DnsServer {
    pub addr: SocketAddr,
    server: Option<Server<Catalog>>,
}

impl DnsServer {
    pub async fn stop(mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.shutdown_gracefully().await;
        }
    }

    /// A hickory resolver that only talks to this server (no cache, short timeout).
    pub fn resolver(&self) -> TokioResolver {
        resolver_for(self.addr)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            // Cancel the listener tasks; dropping the Server also aborts its JoinSet.
            s.shutdown_token().cancel();
        }
    }
}

/// Build a resolver that queries only `addr` (UDP+TCP), with caching disabled,
/// 1 s timeout and a single attempt.
///
/// # Panics
/// If hickory cannot build the resolver (it only fails on an invalid configuration, and this
/// one is fixed).
pub fn resolver_for(addr: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 1;
    hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap_or_else(|e| panic!("build a resolver for the DNS test server {addr}: {e}"))
}

/// A "DNS server" that accepts UDP datagrams and TCP connections but never
/// answers anything (simulates a DNS timeout). Sockets live as long as the guard.
pub struct SilentDns {
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

/// Bind a UDP+TCP socket pair on `bind_ip` (same port) that never answers.
/// TCP connections complete the handshake via the kernel backlog but are never
/// accepted/served.
///
/// # Panics
/// If `bind_ip` is not loopback or the sockets cannot be bound.
pub async fn start_silent(bind_ip: IpAddr) -> SilentDns {
    let bound = match ensure_loopback(bind_ip, "silent DNS server") {
        Ok(()) => bind_udp_tcp(bind_ip).await,
        Err(e) => Err(e),
    };
    let (udp, tcp) = bound.unwrap_or_else(|e| panic!("silent DNS server on {bind_ip}: {e}"));
    let addr = udp
        .local_addr()
        .unwrap_or_else(|e| panic!("silent DNS server on {bind_ip}: local address: {e}"));
    SilentDns {
        addr,
        _udp: udp,
        _tcp: tcp,
    }
}
