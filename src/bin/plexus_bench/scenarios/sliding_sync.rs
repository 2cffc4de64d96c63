//! sliding sync: a user in R rooms long-polls a Simplified Sliding Sync (MSC4186)
//! connection with one list (the 20 most recent rooms, timeline limit 1, some required
//! state) while another user sends into one of the rooms at a time, a different one each
//! time; latency from the send's response to the long-poll's answer carrying the event,
//! and the server's CPU time per update.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Arrival, Ctx, ms};
use crate::plexus_bench::client::User;
use crate::plexus_bench::report::ScenarioResult;

/// How long the long-poll has to carry one message before it counts as missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after each delivery, so the next long-poll is waiting before the next send.
const GAP: Duration = Duration::from_millis(50);

fn request_body() -> Value {
    json!({
        "conn_id": "bench",
        "lists": {
            "recent": {
                "ranges": [[0, 19]],
                "timeline_limit": 1,
                "required_state": [
                    ["m.room.name", ""],
                    ["m.room.avatar", ""],
                    ["m.room.encryption", ""],
                    ["m.room.member", "$LAZY"],
                    ["m.room.member", "$ME"],
                ],
            }
        },
    })
}

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let sizes = &ctx.sizes;
    let room_count = sizes.sliding_rooms;
    let (users, reader, rooms) = ctx.rooms_joined_by_reader("ssync", room_count).await?;
    let writers = &users;

    let body = request_body();
    let first = reader.sliding_sync(None, 0, &body).await?;
    let pos = first.body["pos"].as_str().context("sliding sync: no pos")?.to_owned();
    let listed = first.body["lists"]["recent"]["count"].as_u64().unwrap_or(0);
    if listed != room_count as u64 {
        result.notes.push(format!("WRONG ANSWER: the list counts {listed} rooms instead of {room_count}"));
    }
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let task = spawn_poller(reader.clone(), pos, body, arrivals_tx);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let measure = ctx.measure(result);
    let outcome = async {
        let (mut latencies, mut early, mut missing) = (Vec::new(), 0usize, 0usize);
        for i in 0..sizes.sliding_updates {
            // A stride coprime with most room counts visits different rooms, most of them
            // outside the list's range until the message bumps them in.
            let k = (i * 7919 + 1) % rooms.len();
            let event_id =
                writers[k % writers.len()].send_text(&rooms[k], &format!("sliding sync message {i}")).await?;
            let answered = Instant::now();
            loop {
                match tokio::time::timeout_at((answered + DELIVERY_TIMEOUT).into(), arrivals.recv()).await {
                    Ok(Some(Arrival::Event(id, at))) if id == event_id => {
                        match at.checked_duration_since(answered) {
                            Some(d) => latencies.push(ms(d)),
                            None => {
                                early += 1;
                                latencies.push(0.0);
                            }
                        }
                        break;
                    }
                    Ok(Some(Arrival::Event(..))) => {}
                    Ok(Some(Arrival::Failed(e))) => bail!("the long-poll failed: {e}"),
                    Ok(None) => bail!("the long-poll stopped"),
                    Err(_) => {
                        missing += 1;
                        break;
                    }
                }
            }
            tokio::time::sleep(GAP).await;
        }
        anyhow::Ok((latencies, early, missing))
    }
    .await;
    measure.finish(result);
    task.abort();
    let (latencies, early, missing) = outcome?;
    result.latency("update", &latencies);
    result.metric("updates", latencies.len() as f64, "");
    result.metric("missing updates", missing as f64, "");
    if let Some(server) = &result.server
        && !latencies.is_empty()
    {
        // The measured phase also holds the sends themselves and the pauses (idle).
        let per_update = server.cpu_seconds * 1000.0 / latencies.len() as f64;
        result.metric("server CPU per update (with its send)", per_update, "ms");
    }
    result.notes.push(format!(
        "{room_count} rooms, list range 0-19 by recency, timeline_limit 1, required_state name/avatar/\
         encryption/$LAZY/$ME; {} messages, each into another room, {} ms pause after each; update = \
         long-poll answer received - send answered; {early} arrived before the send's answer and count as 0 ms",
        sizes.sliding_updates,
        GAP.as_millis()
    ));
    Ok(())
}

/// Long-polls the connection from `pos` until aborted, reporting every timeline event of
/// every room in each answer with the time the answer arrived.
fn spawn_poller(
    user: User,
    mut pos: String,
    body: Value,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next = user.sliding_sync(Some(&pos), 30_000, &body).await.and_then(|a| {
                for room in a.body["rooms"].as_object().into_iter().flat_map(|r| r.values()) {
                    for event in room["timeline"].as_array().into_iter().flatten() {
                        if let Some(id) = event["event_id"].as_str() {
                            let _ = arrivals.send(Arrival::Event(id.to_owned(), a.received));
                        }
                    }
                }
                a.body["pos"].as_str().map(str::to_owned).context("sliding sync: no pos")
            });
            match next {
                Ok(p) => pos = p,
                Err(e) => {
                    let _ = arrivals.send(Arrival::Failed(format!("{}: {e:#}", user.user_id)));
                    return;
                }
            }
        }
    })
}
