//! fan-out: M users long-poll `/sync` in one room while one user sends messages one at a time;
//! latency from the send's response to each receiver's `/sync` answer carrying the event.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use super::{Arrival, Ctx, ms, one_room_filter, spawn_receiver};
use crate::plexus_bench::report::ScenarioResult;

/// How long every receiver has to get one message before it counts as missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let sizes = &ctx.sizes;
    let users = ctx.register_many(&ctx.server, "fanout", sizes.fanout_receivers + 1).await?;
    let (sender, receivers) = users.split_first().context("no users")?;
    let room = sender.create_room(true, "bench fan-out").await?;
    ctx.join_many(receivers, &room).await?;
    let filter = one_room_filter(&room, 50, true);
    // Tokens taken after every join, so the long-polls wait for the messages alone.
    let tokens = ctx.initial_tokens(receivers, &filter).await?;
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let tasks: Vec<_> = receivers
        .iter()
        .zip(tokens)
        .map(|(u, (filter_id, since))| spawn_receiver(u.clone(), room.clone(), since, filter_id, arrivals_tx.clone()))
        .collect();
    drop(arrivals_tx);
    let gap = Duration::from_millis(sizes.fanout_gap_ms);
    tokio::time::sleep(gap.max(Duration::from_millis(200))).await;

    let measure = ctx.measure(result);
    let outcome = async {
        let (mut latencies, mut send_latencies) = (Vec::new(), Vec::new());
        let (mut early, mut missing) = (0usize, 0usize);
        for i in 0..sizes.fanout_messages {
            let t = Instant::now();
            let event_id = sender.send_text(&room, &format!("fan-out message {i}")).await?;
            let answered = Instant::now();
            send_latencies.push(ms(answered - t));
            let mut got = 0;
            while got < receivers.len() {
                match tokio::time::timeout_at((answered + DELIVERY_TIMEOUT).into(), arrivals.recv()).await {
                    Ok(Some(Arrival::Event(id, at))) if id == event_id => {
                        got += 1;
                        // A sync answer may arrive before the send's own answer was read.
                        match at.checked_duration_since(answered) {
                            Some(d) => latencies.push(ms(d)),
                            None => {
                                early += 1;
                                latencies.push(0.0);
                            }
                        }
                    }
                    Ok(Some(Arrival::Event(..))) => {}
                    Ok(Some(Arrival::Failed(e))) => bail!("a receiver failed: {e}"),
                    Ok(None) => bail!("every receiver stopped"),
                    Err(_) => {
                        missing += receivers.len() - got;
                        break;
                    }
                }
            }
            // Let every receiver get its next long-poll to the server before the next send.
            tokio::time::sleep(gap).await;
        }
        anyhow::Ok((latencies, send_latencies, early, missing))
    }
    .await;
    measure.finish(result);
    for task in tasks {
        task.abort();
    }
    let (latencies, send_latencies, early, missing) = outcome?;
    result.latency("delivery", &latencies);
    result.latency("send latency", &send_latencies);
    result.metric("deliveries", latencies.len() as f64, "");
    result.metric("missing deliveries", missing as f64, "");
    // Each delivery costs the server a woken /sync, the receiver's next long-poll arriving,
    // and its share of the send.
    if let Some(server) = &result.server
        && !latencies.is_empty()
    {
        result.metric("server CPU per delivery", server.cpu_seconds * 1e6 / latencies.len() as f64, "µs");
    }
    result.notes.push(format!(
        "{} receivers, {} messages, {} ms pause after each; delivery = sync answer received - send answered; \
         {early} deliveries arrived before the send's answer and count as 0 ms",
        receivers.len(),
        sizes.fanout_messages,
        sizes.fanout_gap_ms
    ));
    Ok(())
}
