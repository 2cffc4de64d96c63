//! The scenarios and what they share: naming users, set-up with progress bars, and the
//! measured phase during which the server's process is sampled.

mod fanout;
mod federation;
mod initial_sync;
mod join_storm;
mod send;
mod sliding_sync;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::cli::{Scenario, Sizes};
use super::client::{Server, SyncAnswer, User};
use super::procstat::Sampler;
use super::report::ScenarioResult;

/// What every scenario gets.
pub struct Ctx {
    pub server: Server,
    pub server2: Option<Server>,
    pub sizes: Sizes,
    pid: Option<u32>,
    pid2: Option<u32>,
    concurrency: usize,
    /// Prefix of every user name of this run, so runs against one server never collide.
    pub run_id: String,
}

pub async fn run_one(ctx: &Ctx, scenario: Scenario) -> ScenarioResult {
    let mut result = ScenarioResult::new(scenario.name());
    let started = Instant::now();
    let outcome = match scenario {
        Scenario::Send => send::run(ctx, &mut result).await,
        Scenario::Fanout => fanout::run(ctx, &mut result).await,
        Scenario::InitialSync => initial_sync::run(ctx, &mut result).await,
        Scenario::JoinStorm => join_storm::run(ctx, &mut result).await,
        Scenario::Federation => federation::run(ctx, &mut result).await,
        Scenario::SlidingSync => sliding_sync::run(ctx, &mut result).await,
    };
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    result.setup_seconds = started.elapsed().as_secs_f64() - result.measured_seconds;
    result
}

/// Milliseconds in a duration, with the sub-millisecond part.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A sync filter for one room: `timeline_limit` events, lazy-loaded members or not, and
/// nothing else (no presence, no global account data) so answers stay small.
pub fn one_room_filter(room_id: &str, timeline_limit: u32, lazy_load_members: bool) -> Value {
    json!({
        "room": {
            "rooms": [room_id],
            "timeline": { "limit": timeline_limit },
            "state": { "lazy_load_members": lazy_load_members },
            "account_data": { "types": [] },
            "ephemeral": { "types": [] },
        },
        "presence": { "types": [] },
        "account_data": { "types": [] },
    })
}

/// Long-polls `/sync` from `since` until the task is aborted, reporting every timeline event
/// of `room_id` with the time its answer arrived.
pub fn spawn_receiver(
    user: User,
    room_id: String,
    mut since: String,
    filter: String,
    arrivals: tokio::sync::mpsc::UnboundedSender<Arrival>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let answer: anyhow::Result<SyncAnswer> = user.sync(Some(&since), 30_000, &filter).await;
            let next = answer.and_then(|a| {
                for id in a.timeline_ids(&room_id) {
                    let _ = arrivals.send(Arrival::Event(id, a.received));
                }
                a.next_batch()
            });
            match next {
                Ok(n) => since = n,
                Err(e) => {
                    let _ = arrivals.send(Arrival::Failed(format!("{}: {e:#}", user.user_id)));
                    return;
                }
            }
        }
    })
}

pub enum Arrival {
    /// An event ID seen in a sync answer received at that instant.
    Event(String, Instant),
    /// A receiver stopped on this error.
    Failed(String),
}

impl Ctx {
    pub fn new(
        server: Server,
        server2: Option<Server>,
        sizes: Sizes,
        pid: Option<u32>,
        pid2: Option<u32>,
        concurrency: usize,
    ) -> Self {
        let run_id: String = {
            use rand::Rng;
            let n: u32 = rand::thread_rng().r#gen();
            format!("{n:08x}")
        };
        Ctx { server, server2, sizes, pid, pid2, concurrency: concurrency.max(1), run_id }
    }

    pub fn localpart(&self, tag: &str, i: usize) -> String {
        format!("bench_{}_{tag}_{i}", self.run_id)
    }

    /// Runs `f` for 0..n with `concurrency` in flight and a progress bar; answers in order.
    pub async fn for_each<T, F, Fut>(&self, what: &str, n: usize, f: F) -> anyhow::Result<Vec<T>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let bar = progress(what, n as u64);
        let started = Instant::now();
        let mut out: Vec<(usize, T)> = stream::iter(0..n)
            .map(|i| {
                let fut = f(i);
                let bar = &bar;
                async move {
                    let v = fut.await?;
                    bar.inc(1);
                    anyhow::Ok((i, v))
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        bar.finish_and_clear();
        eprintln!("   {what}: {n} in {:.1} s", started.elapsed().as_secs_f64());
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    pub async fn register_many(&self, server: &Server, tag: &str, n: usize) -> anyhow::Result<Vec<User>> {
        self.for_each(&format!("register {tag} users"), n, |i| {
            let localpart = self.localpart(tag, i);
            async move { server.register(&localpart).await }
        })
        .await
    }

    /// `room_count` public rooms, made by writers (one per room in flight: room creation is
    /// not what is measured), each joined by one reader: (writers, reader, rooms in order).
    pub async fn rooms_joined_by_reader(
        &self,
        tag: &str,
        room_count: usize,
    ) -> anyhow::Result<(Vec<User>, User, Vec<String>)> {
        let writer_count = self.concurrency.min(room_count);
        let mut writers = self.register_many(&self.server, tag, writer_count + 1).await?;
        let reader = writers.pop().context("no users")?;
        let (writers_ref, reader_ref) = (&writers, &reader);
        let rooms = self
            .for_each("create and join rooms", room_count, |i| async move {
                let room = writers_ref[i % writers_ref.len()].create_room(true, &format!("bench room {i}")).await?;
                reader_ref.join(&room, None).await?;
                anyhow::Ok(room)
            })
            .await?;
        Ok((writers, reader, rooms))
    }

    pub async fn join_many(&self, users: &[User], room_id: &str) -> anyhow::Result<()> {
        self.for_each("join", users.len(), |i| async move { users[i].join(room_id, None).await }).await.map(|_| ())
    }

    /// Uploads `filter` for each user and syncs once with it: each user's filter ID and
    /// `next_batch`.
    pub async fn initial_tokens(&self, users: &[User], filter: &Value) -> anyhow::Result<Vec<(String, String)>> {
        self.for_each("initial syncs", users.len(), |i| async move {
            let filter_id = users[i].upload_filter(filter).await?;
            let since = users[i].sync(None, 0, &filter_id).await?.next_batch()?;
            anyhow::Ok((filter_id, since))
        })
        .await
    }

    /// Starts the measured phase: samples the server(s) and this tool until `finish`.
    pub fn measure(&self, result: &mut ScenarioResult) -> Measure {
        let mut sample = |pid: Option<u32>, what: &str| {
            let pid = pid?;
            let sampler = Sampler::start(pid);
            if sampler.is_none() {
                result.notes.push(format!("cannot read /proc/{pid} ({what}): no resource figures"));
            }
            sampler
        };
        Measure {
            started: Instant::now(),
            server: sample(self.pid, "server"),
            server2: if self.server2.is_some() { sample(self.pid2, "second server") } else { None },
            client: Sampler::start(std::process::id()),
        }
    }
}

pub struct Measure {
    started: Instant,
    server: Option<Sampler>,
    server2: Option<Sampler>,
    client: Option<Sampler>,
}

impl Measure {
    pub fn finish(self, result: &mut ScenarioResult) {
        result.measured_seconds = self.started.elapsed().as_secs_f64();
        result.server = self.server.and_then(Sampler::finish);
        result.server2 = self.server2.and_then(Sampler::finish);
        result.client = self.client.and_then(Sampler::finish);
    }
}

fn progress(what: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("   {msg:<24} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
