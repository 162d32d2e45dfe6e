//! Prometheus metrics (prefix `sluice_`), one registry, bounded labels only: rule names,
//! source names, results, bounce types and reasons — never a recipient or a domain.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const RESULTS: [&str; 6] = [
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "suppressed",
    "cancelled",
];
pub const DNS_RESULTS: [&str; 5] = ["ok", "nxdomain", "null_mx", "no_mail_host", "temporary"];
pub const QUEUE_STATES: [&str; 4] = ["waiting", "resolving", "ready", "in_flight"];
/// Label used for deliveries that never reached a rule (DNS failure, expiry in the timer).
pub const UNROUTED: &str = "unrouted";

pub struct Metrics {
    pub registry: Registry,
    pub injected: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub source_deliveries: IntCounterVec,
    pub queue: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub connection_limit: IntGaugeVec,
    pub latency: HistogramVec,
    pub transaction: HistogramVec,
    pub dns: IntCounterVec,
    pub throttled: IntCounterVec,
    pub backoffs: IntCounterVec,
    pub level: IntGaugeVec,
    pub level_percent: IntGaugeVec,
    pub bounces: IntCounterVec,
    pub quarantine: IntGaugeVec,
    pub spool_bytes: IntGauge,
    pub spool_disk_percent: IntGauge,
    pub reloads: IntCounterVec,
    pub sync_failures: IntCounterVec,
    pub intake_refused: IntCounterVec,
    pub breaker_trips: prometheus::IntCounter,
    pub campaigns: IntGaugeVec,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new_custom(Some("sluice".into()), None)?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let hist = |name: &str,
                    help: &str,
                    labels: &[&str],
                    start: f64|
         -> Result<HistogramVec, MetricsError> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(exponential_buckets(start, 2.0, 16)?),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let m = Metrics {
            injected: counter("messages_injected_total", "Deliveries accepted at intake, by channel (http, smtp).", &["channel"])?,
            deliveries: counter("deliveries_total", "Delivery outcomes by rule and result (delivered, deferred, bounced, expired, suppressed, cancelled).", &["rule", "result"])?,
            source_deliveries: counter("source_deliveries_total", "Delivery attempts by sending source and result.", &["source", "result"])?,
            queue: gauge("queue_size", "Deliveries held, by state (waiting for a time, resolving DNS, ready, in flight).", &["state"])?,
            connections: gauge("connections_active", "Outgoing SMTP connections open or opening, by rule.", &["rule"])?,
            connection_limit: gauge("connections_limit", "Sum of the connection limits of the active paths, by rule.", &["rule"])?,
            latency: hist("delivery_latency_seconds", "Time from injection to the final outcome.", &["result"], 0.01)?,
            transaction: hist("smtp_transaction_seconds", "Duration of one SMTP transaction (MAIL to the reply after DATA), by rule.", &["rule"], 0.001)?,
            dns: counter("dns_lookups_total", "MX plan lookups by result.", &["result"])?,
            throttled: counter("throttled_total", "Times a path had to wait for its hourly or connection-rate budget, by rule.", &["rule"])?,
            backoffs: counter("backoffs_total", "Backoffs and suspensions applied to paths, by rule and action.", &["rule", "action"])?,
            level: gauge("throughput_level", "Throughput level per source (0 slow, 1 normal, 2 fast, 3 very_fast, 4 boost, 5 custom).", &["source"])?,
            level_percent: gauge("throughput_level_percent", "Percent of the published limits the source's level allows.", &["source"])?,
            bounces: counter("bounces_total", "Qualified bounces (synchronous and returned), by type and reason.", &["type", "reason"])?,
            quarantine: gauge("quarantine_size", "Addresses in quarantine, by reason.", &["reason"])?,
            spool_bytes: {
                let g = IntGauge::new("spool_bytes", "Size of the spool file in bytes.")?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            spool_disk_percent: {
                let g = IntGauge::new("spool_disk_used_percent", "Percent of the spool's filesystem in use.")?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            reloads: counter("rule_reloads_total", "Rules reloads by rule set and result (ok, refused).", &["rules", "result"])?,
            sync_failures: counter("rule_sync_failures_total", "Failed remote rules syncs, by rule set.", &["rules"])?,
            intake_refused: counter("intake_refused_total", "Submissions refused at intake, by reason (invalid, busy, error).", &["reason"])?,
            breaker_trips: {
                let c = prometheus::IntCounter::new("campaign_breaker_trips_total", "Campaigns paused automatically by the circuit breaker.")?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            campaigns: gauge("campaigns", "Known campaigns by state (active, paused, cancelled).", &["state"])?,
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information (always 1)."),
            &["version"],
        )?;
        m.registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        for c in ["http", "smtp"] {
            m.injected.with_label_values(&[c]);
        }
        for r in DNS_RESULTS {
            m.dns.with_label_values(&[r]);
        }
        for s in QUEUE_STATES {
            m.queue.with_label_values(&[s]);
        }
        for r in ["invalid", "busy", "error"] {
            m.intake_refused.with_label_values(&[r]);
        }
        for r in RESULTS {
            m.latency.with_label_values(&[r]);
        }
        for st in ["active", "paused", "cancelled"] {
            m.campaigns.with_label_values(&[st]);
        }
        Ok(m)
    }

    /// Create every series of a rule, so dashboards see zeros before the first delivery.
    pub fn init_rule(&self, rule: &str) {
        for r in RESULTS {
            self.deliveries.with_label_values(&[rule, r]);
        }
        self.connections.with_label_values(&[rule]);
        self.connection_limit.with_label_values(&[rule]);
        self.throttled.with_label_values(&[rule]);
        self.transaction.with_label_values(&[rule]);
        for a in ["backoff", "suspend"] {
            self.backoffs.with_label_values(&[rule, a]);
        }
    }

    pub fn init_source(&self, source: &str) {
        for r in ["delivered", "deferred", "bounced"] {
            self.source_deliveries.with_label_values(&[source, r]);
        }
        self.level.with_label_values(&[source]);
        self.level_percent.with_label_values(&[source]);
    }

    pub fn init_bounce(&self, types_reasons: &[(&str, &str)]) {
        for (t, r) in types_reasons {
            self.bounces.with_label_values(&[t, r]);
        }
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
