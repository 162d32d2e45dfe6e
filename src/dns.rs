//! MX resolution: a recipient domain becomes an ordered connection plan.
//!
//! * MX hosts in preference order; hosts of equal preference are shuffled on every use.
//! * No MX record (NODATA) → implicit MX: the domain's own A/AAAA (RFC 5321 §5.1).
//! * Null MX (`MX 0 .`, RFC 7505) and NXDOMAIN are permanent: the delivery bounces.
//! * SERVFAIL, REFUSED or a timeout is temporary: the delivery is deferred.
//! * Answers are cached for their TTL (negative answers for the SOA's negative TTL).

use crate::config::DnsCfg;
use dashmap::DashMap;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no usable plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFailure {
    #[error("domain {0} does not exist (NXDOMAIN)")]
    NoDomain(String),
    #[error("domain {0} accepts no mail (null MX, RFC 7505)")]
    NullMx(String),
    #[error("domain {0} has no MX and no address record")]
    NoMailHost(String),
    #[error("DNS lookup for {0} failed temporarily: {1}")]
    Temporary(String, String),
}

impl DnsFailure {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsFailure::Temporary(..))
    }

    /// SMTP-style code and enhanced status that describe this failure in events.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            DnsFailure::NoDomain(_) => (550, "5.1.2"),
            DnsFailure::NullMx(_) => (556, "5.1.10"),
            DnsFailure::NoMailHost(_) => (550, "5.1.2"),
            DnsFailure::Temporary(..) => (451, "4.4.3"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("cannot build DNS resolver: {0}")]
    Build(String),
}

type Cached = (Result<Arc<Vec<MxHost>>, DnsFailure>, Instant);

/// Shared MX resolver with its own plan cache.
pub struct Resolver {
    inner: TokioResolver,
    cache: DashMap<String, Cached>,
}

const TEMP_FAILURE_CACHE: Duration = Duration::from_secs(5);
const NEGATIVE_CACHE_MAX: Duration = Duration::from_secs(3600);
const NEGATIVE_CACHE_DEFAULT: Duration = Duration::from_secs(300);

impl Resolver {
    pub fn new(cfg: &DnsCfg) -> Result<Resolver, DnsSetupError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5));
        opts.attempts = 2;
        opts.cache_size = 10_000;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsSetupError::Build(e.to_string()))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let inner = builder
            .with_options(opts)
            .build()
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        Ok(Resolver {
            inner,
            cache: DashMap::new(),
        })
    }

    /// MX hosts of `domain` in preference order (not shuffled; see [`ordered_targets`]).
    pub async fn plan(&self, domain: &str) -> Result<Arc<Vec<MxHost>>, DnsFailure> {
        let key = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(hit) = self.cache.get(&key).map(|e| e.value().clone()) {
            if hit.1 > Instant::now() {
                return hit.0;
            }
        }
        let (result, until) = self.resolve(&key).await;
        self.cache.insert(key, (result.clone(), until));
        result
    }

    /// The underlying resolver (for other record types, e.g. `sluice domain check`).
    pub fn inner(&self) -> &TokioResolver {
        &self.inner
    }

    /// The reverse DNS (PTR) names of an address.
    pub async fn reverse(&self, ip: IpAddr) -> Result<Vec<String>, String> {
        let name = hickory_resolver::proto::rr::Name::from(ip);
        match self
            .inner
            .lookup(name, hickory_resolver::proto::rr::RecordType::PTR)
            .await
        {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => {
                        Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Number of cached plans.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    async fn resolve(&self, domain: &str) -> (Result<Arc<Vec<MxHost>>, DnsFailure>, Instant) {
        let fqdn = format!("{domain}.");
        let now = Instant::now();
        match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut until = lookup.valid_until();
                let mut mxs: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if mxs.iter().any(|(_, n)| n == "." || n.is_empty()) {
                    mxs.retain(|(_, n)| n != "." && !n.is_empty());
                    if mxs.is_empty() {
                        return (Err(DnsFailure::NullMx(domain.into())), until);
                    }
                }
                mxs.sort_by_key(|(p, _)| *p);
                let mut hosts = Vec::with_capacity(mxs.len());
                let mut temp_error = None;
                for (pref, name) in mxs {
                    match self.inner.lookup_ip(name.as_str()).await {
                        Ok(ips) => {
                            until = until.min(ips.valid_until());
                            hosts.push(MxHost {
                                name: name.trim_end_matches('.').to_string(),
                                preference: pref,
                                addrs: ips.iter().collect(),
                            });
                        }
                        Err(e) if e.is_no_records_found() => {}
                        Err(e) => temp_error = Some(e.to_string()),
                    }
                }
                if hosts.is_empty() {
                    return match temp_error {
                        Some(e) => (
                            Err(DnsFailure::Temporary(domain.into(), e)),
                            now + TEMP_FAILURE_CACHE,
                        ),
                        None => (
                            Err(DnsFailure::NoMailHost(domain.into())),
                            now + NEGATIVE_CACHE_DEFAULT,
                        ),
                    };
                }
                (Ok(Arc::new(hosts)), until)
            }
            Err(e) if e.is_nx_domain() => (
                Err(DnsFailure::NoDomain(domain.into())),
                now + negative_ttl(&e),
            ),
            Err(e) if e.is_no_records_found() => {
                // No MX: the domain's own address is the implicit MX.
                match self.inner.lookup_ip(fqdn.as_str()).await {
                    Ok(ips) => {
                        let until = ips.valid_until();
                        let host = MxHost {
                            name: domain.to_string(),
                            preference: 0,
                            addrs: ips.iter().collect(),
                        };
                        (Ok(Arc::new(vec![host])), until)
                    }
                    Err(e2) if e2.is_no_records_found() => (
                        Err(DnsFailure::NoMailHost(domain.into())),
                        now + negative_ttl(&e),
                    ),
                    Err(e2) => (
                        Err(DnsFailure::Temporary(domain.into(), e2.to_string())),
                        now + TEMP_FAILURE_CACHE,
                    ),
                }
            }
            Err(e) => (
                Err(DnsFailure::Temporary(domain.into(), e.to_string())),
                now + TEMP_FAILURE_CACHE,
            ),
        }
    }
}

fn negative_ttl(e: &NetError) -> Duration {
    if let NetError::Dns(DnsError::NoRecordsFound(nr)) = e {
        if let Some(ttl) = nr.negative_ttl {
            return Duration::from_secs(ttl as u64).min(NEGATIVE_CACHE_MAX);
        }
    }
    NEGATIVE_CACHE_DEFAULT
}

/// One address to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub ip: IpAddr,
}

/// Flatten a plan into connection targets: preference order, equal preferences shuffled.
pub fn ordered_targets(hosts: &[MxHost]) -> Vec<Target> {
    let mut rng = rand::rng();
    let mut out = Vec::new();
    let mut i = 0;
    while i < hosts.len() {
        let mut j = i;
        while j < hosts.len() && hosts[j].preference == hosts[i].preference {
            j += 1;
        }
        let mut group: Vec<&MxHost> = hosts[i..j].iter().collect();
        group.shuffle(&mut rng);
        for h in group {
            for ip in &h.addrs {
                out.push(Target {
                    host: h.name.clone(),
                    ip: *ip,
                });
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, pref: u16, ip: &str) -> MxHost {
        MxHost {
            name: name.into(),
            preference: pref,
            addrs: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn preference_order_with_shuffled_ties() {
        let hosts = vec![
            h("a", 10, "127.0.0.2"),
            h("b", 10, "127.0.0.3"),
            h("c", 20, "127.0.0.4"),
        ];
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let t = ordered_targets(&hosts);
            assert_eq!(t.len(), 3);
            assert_eq!(t[2].host, "c");
            seen_first.insert(t[0].host.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences must be shuffled");
    }
}
