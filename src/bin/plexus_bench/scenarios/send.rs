//! send: K users send messages in a closed loop (one request in flight each) for a fixed
//! time; the figure is accepted messages (200 with an event ID) per second.

use std::time::{Duration, Instant};

use super::{Ctx, ms};
use crate::plexus_bench::report::ScenarioResult;

/// A sender gives up after this many failed sends (the server is down or refusing).
const MAX_ERRORS_PER_SENDER: usize = 100;

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let sizes = &ctx.sizes;
    let senders = ctx.register_many(&ctx.server, "send", sizes.send_senders).await?;
    let rooms: Vec<String> = if sizes.send_shared_room {
        let room = senders[0].create_room(true, "bench send").await?;
        ctx.join_many(&senders[1..], &room).await?;
        vec![room; senders.len()]
    } else {
        let senders = &senders;
        ctx.for_each(
            "create rooms",
            senders.len(),
            |i| async move { senders[i].create_room(false, "bench send").await },
        )
        .await?
    };
    result.notes.push(format!(
        "{} senders, {}, {} s; one request in flight per sender",
        senders.len(),
        if sizes.send_shared_room { "all in one room" } else { "each in a room of its own" },
        sizes.send_seconds
    ));
    // One message each first, so connections and caches are warm.
    futures::future::try_join_all(senders.iter().zip(&rooms).map(|(u, r)| u.send_text(r, "warm-up"))).await?;

    let duration = Duration::from_secs_f64(sizes.send_seconds);
    let measure = ctx.measure(result);
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(rooms)
        .map(|(user, room)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < duration && errors.len() < MAX_ERRORS_PER_SENDER {
                    let t = Instant::now();
                    match user.send_text(&room, &format!("bench message {n}")).await {
                        Ok(_) => latencies.push(ms(t.elapsed())),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    measure.finish(result);

    result.metric("accepted messages/s", latencies.len() as f64 / elapsed, "msg/s");
    result.metric("accepted messages", latencies.len() as f64, "");
    result.metric("failed sends", errors.len() as f64, "");
    result.latency("send latency", &latencies);
    if let Some(first) = errors.first() {
        result.notes.push(format!("first failed send: {first}"));
    }
    Ok(())
}
