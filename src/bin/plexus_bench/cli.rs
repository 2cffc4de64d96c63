//! Command line: `run` (scenarios against a server) and `compare` (reports side by side).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "plexus-bench", version, about = "Benchmarks a Matrix homeserver over the client-server API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Runs scenarios against a homeserver, prints a table and optionally writes JSON.
    Run(Box<RunArgs>),
    /// Prints the JSON reports of several runs side by side as Markdown tables.
    Compare(CompareArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Send,
    Fanout,
    InitialSync,
    JoinStorm,
    Federation,
    SlidingSync,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Send => "send",
            Scenario::Fanout => "fanout",
            Scenario::InitialSync => "initial-sync",
            Scenario::JoinStorm => "join-storm",
            Scenario::Federation => "federation",
            Scenario::SlidingSync => "sliding-sync",
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Base URL of the homeserver, e.g. http://127.0.0.1:8008.
    #[arg(long)]
    pub hs: String,
    /// Name of this server in reports (default: the URL), e.g. plexus-sqlite.
    #[arg(long)]
    pub label: Option<String>,
    /// Process ID of the homeserver: its RSS and CPU time are sampled from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Register users with shared-secret registration (/_synapse/admin/v1/register) instead
    /// of open registration with m.login.dummy.
    #[arg(long)]
    pub shared_secret: Option<String>,
    /// A second homeserver for the federation scenario (skipped without it).
    #[arg(long)]
    pub hs2: Option<String>,
    /// Shared secret for registering on the second homeserver.
    #[arg(long)]
    pub hs2_shared_secret: Option<String>,
    /// Process ID of the second homeserver.
    #[arg(long)]
    pub pid2: Option<u32>,
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "send,fanout,initial-sync,join-storm,federation,sliding-sync"
    )]
    pub scenarios: Vec<Scenario>,
    /// Small sizes for a fast smoke run (flags given explicitly still win).
    #[arg(long)]
    pub quick: bool,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Source revision of the server under test, recorded in the report.
    #[arg(long)]
    pub revision: Option<String>,
    /// Free text recorded in the report (e.g. what else ran on the machine).
    #[arg(long)]
    pub note: Option<String>,
    /// Requests in flight at once while setting up users, rooms and history.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,

    /// send: concurrent senders (each in a room of its own unless --send-shared-room).
    #[arg(long)]
    pub send_senders: Option<usize>,
    /// send: seconds of sending.
    #[arg(long)]
    pub send_seconds: Option<f64>,
    /// send: all senders in one room instead of one room each.
    #[arg(long)]
    pub send_shared_room: bool,
    /// fanout: users long-polling /sync in the room.
    #[arg(long)]
    pub fanout_receivers: Option<usize>,
    /// fanout: messages sent, one at a time, each awaited by every receiver.
    #[arg(long)]
    pub fanout_messages: Option<usize>,
    /// fanout: pause after every receiver got a message, so that all are long-polling again.
    #[arg(long)]
    pub fanout_gap_ms: Option<u64>,
    /// initial-sync: rooms the user is in.
    #[arg(long)]
    pub initial_rooms: Option<usize>,
    /// initial-sync: messages in each room.
    #[arg(long)]
    pub initial_events: Option<usize>,
    /// initial-sync: timed initial syncs (each from a fresh device).
    #[arg(long)]
    pub initial_iterations: Option<usize>,
    /// join-storm: users joining one room at once.
    #[arg(long)]
    pub join_users: Option<usize>,
    /// federation: messages for each of the latency and the burst phases.
    #[arg(long)]
    pub federation_messages: Option<usize>,
    /// sliding-sync: rooms the long-polling user is in.
    #[arg(long)]
    pub sliding_rooms: Option<usize>,
    /// sliding-sync: messages sent, one at a time, each into another room.
    #[arg(long)]
    pub sliding_updates: Option<usize>,
}

/// The sizes a run used, after the --quick preset and explicit flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sizes {
    pub send_senders: usize,
    pub send_seconds: f64,
    pub send_shared_room: bool,
    pub fanout_receivers: usize,
    pub fanout_messages: usize,
    pub fanout_gap_ms: u64,
    pub initial_rooms: usize,
    pub initial_events: usize,
    pub initial_iterations: usize,
    pub join_users: usize,
    pub federation_messages: usize,
    #[serde(default)]
    pub sliding_rooms: usize,
    #[serde(default)]
    pub sliding_updates: usize,
}

impl Sizes {
    /// The figures of the performance issues.
    fn full() -> Self {
        Sizes {
            send_senders: 16,
            send_seconds: 10.0,
            send_shared_room: false,
            fanout_receivers: 100,
            fanout_messages: 100,
            fanout_gap_ms: 50,
            initial_rooms: 100,
            initial_events: 1000,
            initial_iterations: 5,
            join_users: 100,
            federation_messages: 100,
            sliding_rooms: 1000,
            sliding_updates: 100,
        }
    }

    pub fn quick() -> Self {
        Sizes {
            send_senders: 4,
            send_seconds: 2.0,
            send_shared_room: false,
            fanout_receivers: 10,
            fanout_messages: 10,
            fanout_gap_ms: 50,
            initial_rooms: 10,
            initial_events: 50,
            initial_iterations: 3,
            join_users: 10,
            federation_messages: 10,
            sliding_rooms: 20,
            sliding_updates: 10,
        }
    }
}

impl RunArgs {
    pub fn sizes(&self) -> Sizes {
        let base = if self.quick { Sizes::quick() } else { Sizes::full() };
        Sizes {
            send_senders: self.send_senders.unwrap_or(base.send_senders).max(1),
            send_seconds: self.send_seconds.unwrap_or(base.send_seconds).max(0.1),
            send_shared_room: self.send_shared_room,
            fanout_receivers: self.fanout_receivers.unwrap_or(base.fanout_receivers).max(1),
            fanout_messages: self.fanout_messages.unwrap_or(base.fanout_messages).max(1),
            fanout_gap_ms: self.fanout_gap_ms.unwrap_or(base.fanout_gap_ms),
            initial_rooms: self.initial_rooms.unwrap_or(base.initial_rooms).max(1),
            initial_events: self.initial_events.unwrap_or(base.initial_events),
            initial_iterations: self.initial_iterations.unwrap_or(base.initial_iterations).max(1),
            join_users: self.join_users.unwrap_or(base.join_users).max(1),
            federation_messages: self.federation_messages.unwrap_or(base.federation_messages).max(1),
            sliding_rooms: self.sliding_rooms.unwrap_or(base.sliding_rooms).max(1),
            sliding_updates: self.sliding_updates.unwrap_or(base.sliding_updates).max(1),
        }
    }
}

#[derive(Args)]
pub struct CompareArgs {
    /// JSON reports written by `run --json`, one column each in this order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}
