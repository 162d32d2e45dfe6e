//! `scheduler`: cost of one scheduling decision — a due delivery is routed to its queue, a
//! connection takes it, its outcome settles — with 10, 1,000 and 100,000 destinations queued.
//! It must stay flat (no scan of messages or destinations).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice::campaign::{BreakerCfg, Campaigns};
use sluice::dns::MxHost;
use sluice::metrics::Metrics;
use sluice::queue::{Next, Scheduler, Source};
use sluice::rules::{Level, RuleSet};
use sluice::spool::{Delivery, Meta, Spool};
use sluice::Clock;
use std::sync::Arc;

/// What intake does: the deliveries of one injection share one `Meta`.
fn delivery(id: u64, domain: usize, meta: &Arc<Meta>) -> Delivery {
    Delivery {
        id,
        body_id: 1,
        recipient: format!("u{id}@d{domain}.test").into(),
        meta: meta.clone(),
        created_ms: 0,
        expires_ms: u64::MAX,
        attempts: 0,
        next_ms: 0,
        extra: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let dir = std::env::temp_dir().join(format!("sluice-sched-bench-{}", std::process::id()));
    let spool = Spool::open(&dir.join("s.redb"), Clock::System, 86_400_000).expect("spool");
    let mut group = c.benchmark_group("scheduling_decision");
    let meta = Arc::new(Meta::default());
    for &n in &[10usize, 1_000, 100_000] {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let campaigns =
            Arc::new(Campaigns::open(spool.clone(), BreakerCfg::default()).expect("campaigns"));
        let rules = Arc::new(RuleSet::builtin().expect("rules"));
        let sources = vec![Source {
            name: "default".into(),
            ip: None,
            helo: "b.test".into(),
            weight: 1,
            ipv4_only: false,
            warmup: Vec::new(),
        }];
        let (sched, mut feeds) = Scheduler::new(
            Clock::System,
            sluice::queue::Setup {
                sources,
                pools: Vec::new(),
                rules,
                level: Level::Boost,
                source_levels: Default::default(),
                warmup_limits: sluice::queue::warmup::Limits {
                    max_bounce_ratio: 0.05,
                    max_deferral_ratio: 0.2,
                },
            },
            metrics,
            campaigns,
        );
        // n destinations, each resolved to its own MX site with one delivery waiting
        let mut qids = Vec::with_capacity(n);
        for d in 0..n {
            let domain = format!("d{d}.test");
            sched.add(delivery(d as u64 + 1, d, &meta));
            let plan = Ok(Arc::new(vec![MxHost {
                name: format!("mx.d{d}.test"),
                preference: 10,
                addrs: vec!["127.0.0.1".parse().expect("ip")],
            }]));
            sched.resolved(&domain, &plan);
            while let Ok(q) = feeds.connect.try_recv() {
                qids.push(q);
            }
        }
        let mut id = 10_000_000u64;
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                // a delivery for destination k falls due, is routed, taken and settled
                let d = k % n;
                id += 1;
                sched.add(delivery(id, d, &meta));
                let qid = qids[d % qids.len()];
                if let Next::Deliver(x) = sched.next_for(qid, 0) {
                    std::hint::black_box(&x);
                    sched.settle(Some(qid), None);
                }
                while feeds.connect.try_recv().is_ok() {}
                k += 7919;
            })
        });
    }
    group.finish();
    spool.close();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
