//! Number routing lookups against the table size (10 and 100,000 rules): dialplan
//! translation (exact rules by hash, plus ten regular-expression rules tried in priority
//! order) and drouting's longest-prefix match (one hash probe per prefix length).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sip_proxy::numbers::dialplan::{Dialplan, DpRow};
use sip_proxy::numbers::drouting::{Drouting, GatewayRow, RuleRow};

fn dialplan(n: usize) -> Dialplan {
    let mut rows: Vec<DpRow> = (0..n.saturating_sub(10))
        .map(|i| DpRow {
            id: i as i64,
            dpid: 1,
            pr: 10,
            match_op: 0,
            match_exp: format!("{}", 100_000 + i),
            repl_exp: format!("+4930{}", 100_000 + i),
            ..DpRow::default()
        })
        .collect();
    for i in 0..10.min(n) {
        rows.push(DpRow {
            id: (n + i) as i64,
            dpid: 1,
            pr: 20 + i as i64,
            match_op: 1,
            match_exp: format!("^0{}[0-9]{{6,10}}$", i + 1),
            subst_exp: "^0(.*)$".into(),
            repl_exp: "+49\\1".into(),
            ..DpRow::default()
        });
    }
    let (dp, problems) = Dialplan::build(&rows);
    assert!(problems.is_empty());
    dp
}

fn drouting(n: usize) -> Drouting {
    let gws: Vec<GatewayRow> = (0..10)
        .map(|i| GatewayRow {
            id: i,
            gwid: format!("gw{i}"),
            address: format!("10.0.0.{}:5060", i + 1),
            ..GatewayRow::default()
        })
        .collect();
    // prefixes of 4 to 8 digits under +49, as a national numbering plan would give
    let rules: Vec<RuleRow> = (0..n)
        .map(|i| RuleRow {
            ruleid: i as i64,
            groupid: "1".into(),
            prefix: format!("+49{}", 1000 + i * 7 % 100_000),
            gwlist: format!("gw{},gw{}", i % 10, (i + 1) % 10),
            ..RuleRow::default()
        })
        .collect();
    let (dr, problems) = Drouting::build(&gws, &[], &rules);
    assert!(problems.is_empty(), "{problems:?}");
    dr
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dialplan_translate");
    for n in [10usize, 100_000] {
        let dp = dialplan(n);
        g.bench_with_input(BenchmarkId::new("exact_hit", n), &dp, |b, dp| {
            b.iter(|| dp.translate(1, "100005"))
        });
        g.bench_with_input(BenchmarkId::new("regex_hit", n), &dp, |b, dp| {
            b.iter(|| dp.translate(1, "0301234567"))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &dp, |b, dp| {
            b.iter(|| dp.translate(1, "nothing"))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("drouting_route");
    for n in [10usize, 100_000] {
        let dr = drouting(n);
        g.bench_with_input(BenchmarkId::new("longest_prefix", n), &dr, |b, dr| {
            b.iter(|| dr.route(1, "+4910071234567", 42))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &dr, |b, dr| {
            b.iter(|| dr.route(1, "+3312345678", 42))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
