//! One routing decision as the request path makes it: load the snapshot,
//! match the route, pick a stamp. For 3 and 30 stamps, and with 1, 2 and 4
//! reader threads while a writer publishes a new table every millisecond.

#![allow(missing_docs)] // criterion_group! makes an undocumented function

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use stampgate::config::{self, Config};
use stampgate::routing::budget::RetryBudget;
use stampgate::routing::{RouteShared, RouteStats, RoutingTable, StampInput, Tried};
use stampgate::upstream::Upstream;

fn config_with(stamps: usize) -> Config {
    let mut t = String::from(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"health\"\npath_prefix = \"/healthservice/\"\npool = \"p\"\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/catalogservice/\"\npool = \"p\"\n\
         [[routes]]\nname = \"ui\"\npath_prefix = \"/\"\npool = \"p\"\n\
         [pools.p]\nmethod = \"weighted\"\n",
    );
    for i in 0..stamps {
        t.push_str(&format!(
            "[[pools.p.stamps]]\nname = \"s{i}\"\nregion = \"r{}\"\naddress = \"127.0.0.1:{}\"\nweight = {}\n",
            i % 5,
            10_000 + i,
            50 + i
        ));
    }
    config::parse_str(&t, Path::new("bench.toml")).expect("bench config")
}

fn table(config: &Config, generation: u64) -> RoutingTable {
    let upstream =
        Arc::new(Upstream::new(&config.pools[0], &Default::default()).expect("upstream"));
    let shared = RouteShared {
        budget: Arc::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
        stats: Arc::new(RouteStats::new(&[])),
    };
    RoutingTable::build(
        config,
        generation,
        |_| upstream.clone(),
        |_| shared.clone(),
        |_, s| StampInput {
            effective_weight: s.weight,
            admin_enabled: true,
            rtt: None,
            trickle: false,
            stats: Arc::default(),
        },
    )
}

/// The decision, exactly as `Gateway::forward` makes it.
#[inline]
fn decide(routing: &ArcSwap<RoutingTable>) -> usize {
    let t = routing.load();
    let route = t
        .route(
            Some("catalog.example.com"),
            "/catalogservice/api/1.0/catalogitem/7",
        )
        .expect("route");
    let pool = &t.pools[route.pool];
    pool.selector
        .pick(&pool.stamps, &Tried::default())
        .expect("stamp")
}

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("decision");
    for stamps in [3, 30] {
        let routing = ArcSwap::from_pointee(table(&config_with(stamps), 1));
        group.bench_with_input(BenchmarkId::new("stamps", stamps), &routing, |b, r| {
            b.iter(|| black_box(decide(r)))
        });
    }
    group.finish();
}

/// Readers on `readers` threads (this one included) while a writer thread
/// publishes a new table every millisecond.
fn under_publish(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let config = config_with(3);
    let mut group = c.benchmark_group("decision_while_publishing");
    for readers in [1usize, 2, 4] {
        let routing = Arc::new(ArcSwap::from_pointee(table(&config, 1)));
        let stop = Arc::new(AtomicBool::new(false));
        let prebuilt: Vec<Arc<RoutingTable>> =
            (0..16).map(|g| Arc::new(table(&config, g))).collect();
        let writer = {
            let (routing, stop) = (routing.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    routing.store(prebuilt[i % prebuilt.len()].clone());
                    i += 1;
                    next += Duration::from_millis(1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        let others: Vec<_> = (1..readers)
            .map(|_| {
                let (routing, stop) = (routing.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..1024 {
                            black_box(decide(&routing));
                        }
                    }
                })
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("readers", readers), &routing, |b, r| {
            b.iter(|| black_box(decide(r)))
        });
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        for t in others {
            t.join().unwrap();
        }
    }
    group.finish();
}

criterion_group!(benches, decision, under_publish);
criterion_main!(benches);
