//! The demo's summary: what happened and what the fake MX hosts recorded, printed for a
//! newcomer.

use super::*;

/// The result of a demo run; `Display` prints the human summary.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Recipients submitted.
    pub recipients: usize,
    /// From the first submission to the last awaited outcome.
    pub elapsed: Duration,
    /// The overall timeout ([`TIMEOUT`]) hit before every outcome arrived.
    pub timed_out: bool,
    /// Recipients delivered (a `delivered` event: the receiving MX answered 250).
    pub delivered: usize,
    /// Recipients bounced (refused for good).
    pub bounced: usize,
    /// Recipients deferred at least once and still queued at the end.
    pub deferred: usize,
    /// Every `deferred` event (a recipient can be deferred several times).
    pub deferral_events: usize,
    /// Recipients with another final outcome (expired, suppressed, cancelled).
    pub other: usize,
    /// Events the demo missed because it fell behind the event stream (normally 0).
    pub missed_events: u64,
    /// Circuit-breaker messages (`campaign_paused` events), normally none.
    pub campaign_paused: Vec<String>,
    /// Per destination domain, in scenario order.
    pub domains: Vec<DomainReport>,
    /// What each fake MX host recorded, against the rule in force.
    pub hosts: Vec<HostReport>,
    pub backup: BackupReport,
    /// Addresses that bounced, with the qualification sluice gave them.
    pub hard_bounced: Vec<QuarantineEntry>,
    /// `GET /api/v1/quarantine` at the end.
    pub quarantined: Vec<QuarantineEntry>,
    pub ts01: DeferralReport,
}

/// Outcomes for one destination domain.
#[derive(Debug, Clone, Default)]
pub struct DomainReport {
    pub domain: String,
    pub recipients: usize,
    pub delivered: usize,
    pub bounced: usize,
    /// Deferred at least once and not final yet.
    pub deferred: usize,
    pub other: usize,
    /// Deliveries per MX host name (the `mx` of `delivered` events).
    pub via: BTreeMap<String, usize>,
}

impl DomainReport {
    /// Recipients the demo no longer waits for: final outcomes, plus the deferred ones of
    /// the TS01 provider (they stay queued).
    pub fn settled(&self) -> usize {
        let waiting = if self.domain == TS01_DOMAIN {
            self.deferred
        } else {
            0
        };
        self.delivered + self.bounced + self.other + waiting
    }
}

/// What one fake MX host recorded, next to the limits of the rule sluice applied to it.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub host: String,
    pub addr: SocketAddr,
    pub domains: Vec<String>,
    /// Name of the MX rule in the demo's rules file.
    pub rule: String,
    /// Completed transactions (one message each).
    pub transactions: usize,
    pub connections: usize,
    pub rcpt_attempts: usize,
    pub peak_connections: usize,
    /// The rule's `max_connections`.
    pub max_connections: u32,
    pub max_transactions_per_connection: usize,
    /// The rule's `messages_per_connection`.
    pub messages_per_connection: u32,
    /// Observed messages per hour from the first to the last transaction; with an hourly
    /// cap, not counting the burst the cap allows on top of the rate.
    pub rate_per_hour: Option<f64>,
    /// The rule's `messages_per_hour`, if any.
    pub messages_per_hour: Option<u64>,
}

/// The backup-MX takeover.
#[derive(Debug, Clone, Default)]
pub struct BackupReport {
    pub domain: String,
    /// MX 10 (`host:port` where nothing listens) and MX 20 (a live fake MX).
    pub primary: String,
    pub backup: String,
    pub recipients: usize,
    /// `delivered` events naming the backup / the primary as `mx`.
    pub delivered_via_backup: usize,
    pub delivered_via_primary: usize,
}

/// The provider answering 421 [TS01].
#[derive(Debug, Clone, Default)]
pub struct DeferralReport {
    pub domain: String,
    pub recipients: usize,
    /// Recipients deferred at least once and still queued.
    pub deferred: usize,
    /// The first TS01 reply sluice recorded.
    pub sample_reply: Option<String>,
    /// RCPT commands the provider's host saw (the path backs off after the first 421s).
    pub rcpt_attempts_at_host: usize,
    /// The path's state in `GET /api/v1/queues` at the end.
    pub path_state: Option<String>,
}

/// An address with a reason (`user_unknown`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub address: String,
    pub reason: String,
}

fn check(value: usize, limit: impl Into<u64>) -> String {
    let limit = limit.into();
    let verdict = if value as u64 <= limit { "ok" } else { "OVER" };
    format!("{value} <= {limit} {verdict}")
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (b, t) = (&self.backup, &self.ts01);
        let timed_out = if self.timed_out {
            " - TIMED OUT, some outcomes missing"
        } else {
            ""
        };
        writeln!(
            f,
            "sluice demo: {} recipients, {} domains, all on loopback (127.222.0.0/24): {:.1} s{timed_out}\n  \
             A real sluice engine, a DNS authority and 5 fake MX hosts ran in this process; the\n  \
             campaign went in through POST /api/v1/messages and out over SMTP to the fake hosts.\n\n\
             Outcomes (sluice's delivery events)\n  \
             delivered {:>6}  accepted by the receiving MX host (250)\n  \
             bounced   {:>6}  refused for good, qualified and quarantined\n  \
             deferred  {:>6}  kept queued for a later retry ({} deferral events)",
            self.recipients, self.domains.len(), self.elapsed.as_secs_f64(), self.delivered,
            self.bounced, self.deferred, self.deferral_events
        )?;
        if self.other > 0 {
            writeln!(
                f,
                "  other     {:>6}  expired, suppressed or cancelled",
                self.other
            )?;
        }
        writeln!(
            f,
            "\n  domain           recipients delivered bounced deferred  through"
        )?;
        for d in &self.domains {
            let via: Vec<String> = d.via.iter().map(|(mx, n)| format!("{mx} ({n})")).collect();
            let via = if via.is_empty() {
                "-".to_string()
            } else {
                via.join(", ")
            };
            writeln!(
                f,
                "  {:<16}{:>11}{:>10}{:>8}{:>9}  {via}",
                d.domain, d.recipients, d.delivered, d.bounced, d.deferred
            )?;
        }
        writeln!(
            f,
            "\nWhat each fake MX host recorded, against the MX rule sluice applied"
        )?;
        let head = "host                 rule        msgs conns  peak conns     msgs/conn        messages/hour";
        writeln!(f, "  {head}")?;
        for h in &self.hosts {
            let rate = match (h.rate_per_hour, h.messages_per_hour) {
                // measured where the mail arrives, after the sending machine's own latency:
                // a busy moment early on compresses the span a little (up to 5 %)
                (Some(r), Some(limit)) => {
                    let r = r.round() as u64;
                    let verdict = if r as f64 <= limit as f64 * 1.05 {
                        "ok"
                    } else {
                        "OVER"
                    };
                    format!("{r} ~ {limit} {verdict}")
                }
                (Some(r), None) => format!("{} (no cap)", r.round()),
                (None, _) => "-".into(),
            };
            let peak = check(h.peak_connections, h.max_connections);
            let per_conn = check(h.max_transactions_per_connection, h.messages_per_connection);
            writeln!(
                f,
                "  {:<21}{:<11}{:>5}{:>6}  {peak:<15}{per_conn:<17}{rate}",
                h.host, h.rule, h.transactions, h.connections
            )?;
        }
        let in_quarantine = self
            .hard_bounced
            .iter()
            .filter(|b| self.quarantined.iter().any(|q| q.address == b.address))
            .count();
        writeln!(
            f,
            "\nBackup MX\n  {}: MX 10 {} refuses connections, so MX 20 {} took over:\n  \
             {} of {} delivered through the backup, {} through the primary.\n\n\
             Hard bounces and quarantine\n  \
             {} addresses answered \"550 {BOUNCE_REPLY}\":\n  \
             bounced at once (no retry); {} of them are now quarantined (GET /api/v1/quarantine\n  \
             lists {}), so sluice refuses new submissions to them.",
            b.domain,
            b.primary,
            b.backup,
            b.delivered_via_backup,
            b.recipients,
            b.delivered_via_primary,
            self.hard_bounced.len(),
            in_quarantine,
            self.quarantined.len()
        )?;
        if let Some(e) = self.hard_bounced.first() {
            writeln!(f, "  e.g. {} (reason: {})", e.address, e.reason)?;
        }
        writeln!(
            f,
            "\nProvider deferrals (421 [TS01])\n  \
             {}: {} of {} recipients deferred and kept queued, none lost. Reply:\n  \"{}\"\n  \
             Its rule has fallback_on_421 = false and a [[backoff]] for TS01: the whole path waits,\n  \
             then resumes at 25 %, so the host saw only {} RCPT commands for {} recipients.",
            t.domain, t.deferred, t.recipients, t.sample_reply.as_deref().unwrap_or("-"),
            t.rcpt_attempts_at_host, t.recipients
        )?;
        if let Some(state) = &t.path_state {
            writeln!(f, "  Path state now: {state}")?;
        }
        for p in &self.campaign_paused {
            writeln!(f, "\nCampaign paused by the circuit breaker: {p}")?;
        }
        if self.missed_events > 0 {
            writeln!(
                f,
                "\n(missed {} events: counts may be low)",
                self.missed_events
            )?;
        }
        Ok(())
    }
}
