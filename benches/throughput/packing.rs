//! Write packing's rows (issue 18): the packed engine's creates and updates against the S3-PUT-
//! alone rate, S3 PUTs per write, what those PUTs cost per million writes at AWS list prices, and
//! the latency of a write made alone with packing on and off.

use std::time::Instant;

use chronos::engine::ItemId;

use crate::errors::{err, name};
use crate::measure::Bench;
use crate::records::record;
use crate::report::cores;
use crate::workloads::{Ctx, Via, Workload};

/// AWS S3 Standard, us-east-1 list price: PUT (and COPY, POST, LIST) requests, per request.
const PUT_USD: f64 = 0.005 / 1000.0;

/// p50 (ms) of writes made one at a time: (packing off, packing on), alternating so that load
/// drift favours neither.
pub async fn lone_latency(ctx: &Ctx) -> Result<(f64, f64), String> {
    const N: u64 = 40;
    let mut off = Vec::new();
    let mut on = Vec::new();
    for n in 0..N {
        for (via, times) in [(Via::Engine, &mut off), (Via::Packed, &mut on)] {
            let id: ItemId = name(&format!("alone-{}-{n}", via_tag(via)))?;
            let started = Instant::now();
            ctx.engine(via)
                .create(&ctx.created, Some(id), record(n, 0), &ctx.who)
                .await
                .map_err(err("lone create"))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((median(&mut off), median(&mut on)))
}

fn via_tag(via: Via) -> &'static str {
    if via == Via::Packed { "p" } else { "e" }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The goals of issue 18 that packing answers, for the report's table.
pub fn goals(b: &Bench, t: &mut Vec<(String, String, Option<bool>)>) {
    let Some(put) = b.find(Workload::PutOnly, Via::Floor) else {
        return;
    };
    for w in [Workload::Create, Workload::Update] {
        let Some(p) = b.find(w, Via::Packed) else { continue };
        let ratio = p.ops_per_s / put.ops_per_s.max(f64::MIN_POSITIVE);
        let puts = p.s3.map_or(f64::NAN, |s| s.0);
        let cost = |per_write: f64| per_write * PUT_USD * 1e6;
        let unpacked = b
            .find(w, Via::Engine)
            .and_then(|e| Some((e.ops_per_s, e.s3?.0)))
            .map_or(String::new(), |(ops, s3)| {
                format!("; unpacked {ops:.0}/s, {s3:.2} PUTs/write = ${:.2}", cost(s3))
            });
        // The most this box could do if the three processes had every core to themselves.
        let ceiling = p.cpu_per_op().map_or(String::new(), |ms| {
            let most = cores() as f64 * 1000.0 / ms;
            format!(
                "; CPU ceiling on {} cores at {ms:.2} ms per write: {most:.0}/s = {:.2}× the PUT rate",
                cores(),
                most / put.ops_per_s.max(f64::MIN_POSITIVE)
            )
        });
        t.push((
            format!("goal: {} packed ≥ 2.0× S3 PUT alone, ≤ 0.1 PUTs/write", w.label()),
            format!(
                "{:.0}/s = {ratio:.2}× the {:.0} PUTs/s; {puts:.3} PUTs/write = ${:.2} per 1 M writes{unpacked} \
                 (AWS S3 PUT list price){ceiling}",
                p.ops_per_s,
                put.ops_per_s,
                cost(puts)
            ),
            Some(ratio >= 2.0 && puts <= 0.1),
        ));
    }
    if let Some((off, on)) = b.lone_latency {
        t.push((
            "goal: a write made alone keeps its latency with packing on (p50 within 10%)".into(),
            format!("p50 {on:.2} ms packed, {off:.2} ms unpacked (40 sequential creates each, alternating)"),
            Some(on <= off * 1.1),
        ));
    }
}
