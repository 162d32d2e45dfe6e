//! In-process authoritative DNS server on loopback (hickory-server 0.26).
//!
//! Everything lives in the single zone `test.`; names passed to the builder
//! are given without the trailing dot ("a.test", "mx1.a.test"). Queries for
//! names outside `test.` are answered with REFUSED by the catalog, which is
//! handy to simulate a DNS failure. [`start_silent`] gives a server that never
//! answers (DNS timeout).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hickory_server::proto::rr::rdata::{A, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// Zone origin every record lives under.
pub const ORIGIN: &str = "test.";
/// Negative-caching TTL (SOA minimum and SOA record TTL).
pub const NEGATIVE_TTL: u32 = 60;
const SERIAL: u32 = 1;

/// Turn "a.test" / "a.test." into an absolute `Name`.
pub fn name(s: &str) -> Name {
    if s == "." {
        return Name::root();
    }
    let abs = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_str(&abs).unwrap_or_else(|e| panic!("bad DNS name {s:?}: {e}"))
}

pub struct DnsBuilder {
    ttl: u32,
    records: Vec<Record>,
}

impl Default for DnsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsBuilder {
    /// Zone "test." with an SOA (negative TTL 60). Default record TTL 300.
    pub fn new() -> Self {
        let origin = name(ORIGIN);
        let soa = SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            SERIAL,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        );
        DnsBuilder {
            ttl: 300,
            records: vec![Record::from_rdata(origin, NEGATIVE_TTL, RData::SOA(soa))],
        }
    }

    fn push(mut self, owner: &str, rdata: RData) -> Self {
        self.records
            .push(Record::from_rdata(name(owner), self.ttl, rdata));
        self
    }

    /// TTL for records added after this call (default 300).
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = secs;
        self
    }

    pub fn mx(self, domain: &str, pref: u16, host: &str) -> Self {
        self.push(domain, RData::MX(MX::new(pref, name(host))))
    }

    /// RFC 7505 null MX: `MX 0 .`
    pub fn null_mx(self, domain: &str) -> Self {
        self.push(domain, RData::MX(MX::new(0, Name::root())))
    }

    pub fn a(self, host: &str, ip: Ipv4Addr) -> Self {
        self.push(host, RData::A(A(ip)))
    }

    pub fn txt(self, name: &str, text: &str) -> Self {
        self.push(name, RData::TXT(TXT::new(vec![text.to_string()])))
    }

    /// Serve the zone on UDP and TCP, same (ephemeral) port, on `bind_ip`.
    pub async fn start(self, bind_ip: IpAddr) -> DnsServer {
        let origin = name(ORIGIN);
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

        let (udp, tcp) = bind_udp_tcp(bind_ip).await;
        let addr = udp.local_addr().expect("udp local_addr");
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 4096);
        DnsServer {
            addr,
            server: Some(server),
        }
    }
}

/// Bind UDP on port 0, then TCP on the same port (retrying if that TCP port is taken).
async fn bind_udp_tcp(ip: IpAddr) -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("bind UDP on {ip}: {e}"));
        let port = udp.local_addr().expect("udp local_addr").port();
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("could not bind UDP+TCP on the same port on {ip}: {last_err:?}");
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
    .expect("build resolver")
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
pub async fn start_silent(bind_ip: IpAddr) -> SilentDns {
    let (udp, tcp) = bind_udp_tcp(bind_ip).await;
    let addr = udp.local_addr().expect("udp local_addr");
    SilentDns {
        addr,
        _udp: udp,
        _tcp: tcp,
    }
}
