//! initial sync: a user in R rooms of E messages each syncs from nothing with timeline
//! limit 10 and lazy-loaded members; each timed sync is from a fresh device so that no
//! server keeps the previous answer for it.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use serde_json::json;

use super::{Ctx, ms};
use crate::plexus_bench::report::ScenarioResult;

const TIMELINE_LIMIT: usize = 10;

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let sizes = &ctx.sizes;
    let (room_count, events) = (sizes.initial_rooms, sizes.initial_events);
    let (users, reader, rooms) = ctx.rooms_joined_by_reader("isync", room_count).await?;
    let writers = &users;
    let reader_ref = &reader;
    let history_started = Instant::now();
    let bar = super::progress("history", (room_count * events) as u64);
    stream::iter(rooms.iter().enumerate())
        .map(|(i, room)| {
            let writer = &writers[i % writers.len()];
            let bar = &bar;
            async move {
                for j in 0..events {
                    writer.send_text(room, &format!("message {j} of room {i}")).await?;
                    bar.inc(1);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(ctx.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    bar.finish_and_clear();
    let history_seconds = history_started.elapsed().as_secs_f64();
    eprintln!("   history: {} messages in {history_seconds:.1} s", room_count * events);
    result.metric("history set-up rate", (room_count * events) as f64 / history_seconds, "msg/s");

    // Logins hash a password: done before the measured phase.
    let devices = ctx
        .for_each("log in devices", sizes.initial_iterations, |_| async move { reader_ref.new_device().await })
        .await?;
    let filter = json!({ "room": { "timeline": { "limit": TIMELINE_LIMIT }, "state": { "lazy_load_members": true } } });
    let filter = reader.upload_filter(&filter).await?;
    let measure = ctx.measure(result);
    let mut times = Vec::new();
    let mut sizes_kib = Vec::new();
    let mut problems = Vec::new();
    for device in &devices {
        let t = Instant::now();
        let answer = device.sync(None, 0, &filter).await?;
        times.push(ms(answer.received - t));
        sizes_kib.push(answer.bytes as f64 / 1024.0);
        let joined = answer.body["rooms"]["join"].as_object().map_or(0, |j| j.len());
        if joined != room_count {
            problems.push(format!("{joined} joined rooms instead of {room_count}"));
        }
        let short = rooms.iter().filter(|r| answer.timeline_ids(r).len() < TIMELINE_LIMIT.min(events)).count();
        if short > 0 {
            problems.push(format!("{short} rooms with fewer than {TIMELINE_LIMIT} timeline events"));
        }
    }
    measure.finish(result);

    result.metric("first initial sync", times[0], "ms");
    let rest = &times[1..];
    if !rest.is_empty() {
        let mut sorted = rest.to_vec();
        sorted.sort_by(f64::total_cmp);
        result.metric("later initial syncs, median", sorted[sorted.len() / 2], "ms");
        result.metric("later initial syncs, max", sorted[sorted.len() - 1], "ms");
    }
    result.metric("answer size", sizes_kib[0], "KiB");
    result.latencies_ms.extend(crate::plexus_bench::stats::Summary::of(&times).map(|s| ("initial sync".into(), s)));
    result.notes.push(format!(
        "{room_count} rooms x {events} messages, timeline limit {TIMELINE_LIMIT}, lazy-loaded members; \
         {} syncs, each from a new device",
        devices.len()
    ));
    problems.dedup();
    result.notes.extend(problems.into_iter().map(|p| format!("WRONG ANSWER: {p}")));
    Ok(())
}
