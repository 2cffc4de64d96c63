//! Connections and positions. A position (`pos`) is
//! `{generation}_{counter}_{stream}_{typing}`: the connection's generation (drawn anew when
//! the client starts over), the number of the last response that sent rooms, the global
//! stream position and the typing serial. What each connection has sent of each room is in
//! the database, so positions stay valid across restarts; a position of another generation
//! (or garbage) is refused with `M_UNKNOWN_POS`, which makes the client start over.

use std::collections::HashMap;
use std::fmt;

use axum::http::StatusCode;

use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::storage;
use crate::storage::sliding_sync::{ConnKey, SentRoom};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub generation: i64,
    pub counter: i64,
    pub stream: i64,
    pub typing: u64,
}

impl Position {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('_');
        let mut next = || parts.next()?.parse::<i64>().ok().filter(|n| *n >= 0);
        let pos = Position { generation: next()?, counter: next()?, stream: next()?, typing: next()? as u64 };
        parts.next().is_none().then_some(pos)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}_{}", self.generation, self.counter, self.stream, self.typing)
    }
}

fn unknown_pos() -> Error {
    Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN_POS", "Unknown position: start a new sliding sync connection")
}

/// One request's view of a connection: the position the client presented and what the
/// connection had sent of each room.
pub struct Connection {
    user_id: String,
    device_id: String,
    conn_id: String,
    generation: i64,
    /// The position the client presented (None: it starts over).
    pub since: Option<Position>,
    sent: HashMap<String, SentRoom>,
}

/// A room sent in a response, to remember.
pub struct Sent {
    pub room_id: String,
    pub required_state: String,
}

impl Connection {
    /// Opens the connection `conn_id` of the device at position `pos`, or starts it over.
    pub async fn open(svc: &Services, me: &Identity, conn_id: &str, pos: Option<&str>) -> Result<Self> {
        let mut conn = Connection {
            user_id: me.user_id.to_string(),
            device_id: me.device_id.clone(),
            conn_id: conn_id.to_owned(),
            generation: 0,
            since: None,
            sent: HashMap::new(),
        };
        match pos {
            None => {
                // Positive, so it prints without a sign the parser would refuse.
                conn.generation = i64::from(rand::random::<u32>());
                let mut tx = svc.db.begin().await?;
                storage::sliding_sync::reset_connection(&mut tx, conn.key(), conn.generation).await?;
                tx.commit().await?;
            }
            Some(pos) => {
                let pos = Position::parse(pos).ok_or_else(unknown_pos)?;
                let stored = storage::sliding_sync::connection(&svc.db, conn.key()).await?;
                let current = storage::current_stream_pos(&svc.db).await?;
                match stored {
                    Some((generation, counter))
                        if generation == pos.generation && pos.counter <= counter && pos.stream <= current => {}
                    _ => return Err(unknown_pos()),
                }
                conn.generation = pos.generation;
                conn.since = Some(pos);
                conn.sent = storage::sliding_sync::sent_rooms(&svc.db, conn.key()).await?.into_iter().collect();
            }
        }
        Ok(conn)
    }

    fn key(&self) -> ConnKey<'_> {
        (&self.user_id, &self.device_id, &self.conn_id)
    }

    /// What the client has of a room at its position: None when it has nothing (the room
    /// is sent whole, `initial`).
    pub fn known(&self, room_id: &str) -> Option<&SentRoom> {
        let since = self.since?;
        self.sent.get(room_id).filter(|s| s.first_sent <= since.counter)
    }

    /// The stream position up to which the client has a room's data.
    pub fn room_since(&self, room_id: &str) -> Option<i64> {
        let since = self.since?;
        self.known(room_id).map(|s| s.sent_up_to.min(since.stream))
    }

    /// Remembers the rooms a response sent and gives the response's position.
    pub async fn record(&self, svc: &Services, sent: &[Sent], stream: i64, typing: u64) -> Result<String> {
        let mut counter = self.since.map_or(0, |p| p.counter);
        if !sent.is_empty() {
            let mut tx = svc.db.begin().await?;
            counter = storage::sliding_sync::next_counter(&mut tx, self.key(), self.generation)
                .await?
                .ok_or_else(unknown_pos)?;
            for room in sent {
                let first_sent = self.known(&room.room_id).map_or(counter, |s| s.first_sent);
                let row = SentRoom { first_sent, sent_up_to: stream, required_state: room.required_state.clone() };
                storage::sliding_sync::put_sent_room(&mut tx, self.key(), &room.room_id, &row).await?;
            }
            tx.commit().await?;
        }
        Ok(Position { generation: self.generation, counter, stream, typing }.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let p = Position { generation: 7, counter: 2, stream: 40, typing: 3 };
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        for bad in ["", "not-a-real-pos", "1_2_3", "1_2_3_4_5", "-1_2_3_4", "a_b_c_d"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
