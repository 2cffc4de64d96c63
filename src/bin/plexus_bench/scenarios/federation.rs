//! federation: a user of the first server creates a room, a user of the second joins it over
//! federation and long-polls; messages one at a time give the end-to-end latency, then a
//! burst gives the messages per second delivered across.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::{Arrival, Ctx, ms, one_room_filter, spawn_receiver};
use crate::plexus_bench::report::ScenarioResult;

/// How long a message may take to cross before it counts as lost.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends in flight at once during the burst.
const BURST_CONCURRENCY: usize = 8;

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let Some(server2) = &ctx.server2 else {
        result.skipped = Some("no --hs2 given: federation needs a second homeserver".into());
        return Ok(());
    };
    let n = ctx.sizes.federation_messages;
    let sender = ctx.server.register(&ctx.localpart("fed", 0)).await?;
    let receiver = server2.register(&ctx.localpart("fed", 1)).await?;
    let room = sender.create_room(true, "bench federation").await?;
    let join_started = Instant::now();
    receiver.join(&room, Some(sender.server_name())).await.context("joining over federation")?;
    result.metric("join over federation", ms(join_started.elapsed()), "ms");
    let filter = receiver.upload_filter(&one_room_filter(&room, 50, true)).await?;
    let first = receiver.sync(None, 0, &filter).await?;
    if first.joined_room(&room).is_none() {
        bail!("the second server's user is not in the room after joining");
    }
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let task = spawn_receiver(receiver.clone(), room.clone(), first.next_batch()?, filter, arrivals_tx);

    let measure = ctx.measure(result);
    let outcome = async {
        let mut latencies = Vec::new();
        for i in 0..n {
            let id = sender.send_text(&room, &format!("federated message {i}")).await?;
            let answered = Instant::now();
            let at = wait_for(&mut arrivals, HashSet::from([id]), answered).await?;
            latencies.push(ms(at.saturating_duration_since(answered)));
        }
        let burst_start = Instant::now();
        let ids: HashSet<String> = stream::iter(0..n)
            .map(|i| {
                let (sender, room) = (&sender, &room);
                async move { sender.send_text(room, &format!("burst message {i}")).await }
            })
            .buffer_unordered(BURST_CONCURRENCY)
            .try_collect()
            .await?;
        let last = wait_for(&mut arrivals, ids, burst_start).await?;
        anyhow::Ok((latencies, n as f64 / (last - burst_start).as_secs_f64()))
    }
    .await;
    measure.finish(result);
    task.abort();
    let (latencies, burst_rate) = outcome?;
    result.latency("end-to-end", &latencies);
    result.metric("burst delivered", burst_rate, "msg/s");
    result.notes.push(format!(
        "{n} messages one at a time (latency: receiver's sync answer - send answered), then {n} with \
         {BURST_CONCURRENCY} in flight (rate: until the last arrived)"
    ));
    Ok(())
}

/// Waits until every one of `ids` arrived; answers the arrival time of the last (at least `from`).
async fn wait_for(
    arrivals: &mut UnboundedReceiver<Arrival>,
    mut ids: HashSet<String>,
    from: Instant,
) -> anyhow::Result<Instant> {
    let mut last = from;
    while !ids.is_empty() {
        match tokio::time::timeout(DELIVERY_TIMEOUT, arrivals.recv()).await {
            Ok(Some(Arrival::Event(id, at))) => {
                if ids.remove(&id) {
                    last = last.max(at);
                }
            }
            Ok(Some(Arrival::Failed(e))) => bail!("the receiver failed: {e}"),
            Ok(None) => bail!("the receiver stopped"),
            Err(_) => bail!("{} messages did not arrive within {DELIVERY_TIMEOUT:?}", ids.len()),
        }
    }
    Ok(last)
}
