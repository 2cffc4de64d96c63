//! join storm: J users join one room at the same instant, then long-poll `/sync` until each
//! sees every other as joined; the figure is the time until the last one does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Ctx, ms};
use crate::plexus_bench::client::SyncAnswer;
use crate::plexus_bench::report::ScenarioResult;

/// The storm fails past this.
const DEADLINE: Duration = Duration::from_secs(180);

/// Applies the room's member events of one sync answer to the set of joined users.
fn apply_members(answer: &SyncAnswer, room_id: &str, joined: &mut HashSet<String>) {
    let Some(room) = answer.joined_room(room_id) else { return };
    // State comes before the timeline, which is in order.
    for section in ["state", "timeline"] {
        for event in room[section]["events"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if event["type"] != "m.room.member" {
                continue;
            }
            let Some(user) = event["state_key"].as_str() else { continue };
            if event["content"]["membership"] == "join" {
                joined.insert(user.to_owned());
            } else {
                joined.remove(user);
            }
        }
    }
}

pub async fn run(ctx: &Ctx, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let users = ctx.register_many(&ctx.server, "storm", ctx.sizes.join_users + 1).await?;
    let (creator, joiners) = users.split_first().context("no users")?;
    let room = creator.create_room(true, "bench join storm").await?;
    let everyone: Arc<HashSet<String>> = Arc::new(users.iter().map(|u| u.user_id.clone()).collect());
    let filter: Value = json!({
        "room": { "rooms": [room], "timeline": { "limit": 100 }, "state": { "lazy_load_members": false } },
        "presence": { "types": [] },
        "account_data": { "types": [] },
    });
    let tokens = ctx.initial_tokens(joiners, &filter).await?;

    let measure = ctx.measure(result);
    // Every task waits for the same instant, so the joins leave together.
    let start = Instant::now() + Duration::from_millis(300);
    let tasks: Vec<_> = joiners
        .iter()
        .cloned()
        .zip(tokens)
        .map(|(user, (filter, mut since))| {
            let (room, everyone) = (room.clone(), everyone.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                user.join(&room, None).await?;
                let joined_after = start.elapsed();
                let mut joined = HashSet::new();
                while !everyone.is_subset(&joined) {
                    let left = DEADLINE.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        bail!("{} saw {} of {} members joined", user.user_id, joined.len(), everyone.len());
                    }
                    let answer = user.sync(Some(&since), left.as_millis().min(30_000) as u64, &filter).await?;
                    apply_members(&answer, &room, &mut joined);
                    since = answer.next_batch()?;
                }
                anyhow::Ok((joined_after, start.elapsed()))
            })
        })
        .collect();
    let mut join_latencies = Vec::new();
    let mut see_all = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await? {
            Ok((joined, saw_all)) => {
                join_latencies.push(ms(joined));
                see_all.push(ms(saw_all));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    measure.finish(result);

    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    result.metric("all joins answered", max(&join_latencies), "ms");
    result.metric("all see all", max(&see_all), "ms");
    result.metric("users who did not see all", failures.len() as f64, "");
    result.latency("join", &join_latencies);
    result.latency("user sees all", &see_all);
    result.notes.push(format!(
        "{} users join a room of 1 at once; times from the common start; each long-polls /sync until its \
         member list holds all {}",
        joiners.len(),
        everyone.len()
    ));
    if let Some(first) = failures.first() {
        result.notes.push(format!("first failure: {first}"));
    }
    Ok(())
}
