//! Append scripts: everything one append to a room's timeline writes, assembled as statements
//! with bound values and run in one round trip to the database. A send's cost is the number of
//! hand-offs to the connection, not the SQL: on SQLite the statements run in a row on the
//! connection's worker, on PostgreSQL they are data-modifying CTEs of one statement (which
//! all see the same snapshot: no statement of a script reads what another one writes).
//!
//! A script takes the next stream position first; its statements name that position with
//! [`Script::pos`].

use super::{DbKind, Tx};

/// Most values one script binds: under SQLite's 32,766 parameters per statement and
/// PostgreSQL's 65,535. An append that would need more writes the rest in statements of its
/// own (a room of thousands of notified members).
const MAX_ARGS: usize = 30_000;

/// One bound value.
pub enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_owned())
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::OptText(v.map(str::to_owned))
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::OptInt(v)
    }
}

/// The statements of one append, owned, so that a batch's committer can run them
/// (`storage::batch`).
pub struct Script {
    kind: DbKind,
    statements: Vec<String>,
    args: Vec<Arg>,
}

impl Script {
    pub fn new(kind: DbKind) -> Script {
        Script { kind, statements: Vec::new(), args: Vec::new() }
    }

    /// Binds a value; returns its placeholder.
    pub fn arg(&mut self, arg: impl Into<Arg>) -> String {
        self.args.push(arg.into());
        format!("${}", self.args.len())
    }

    pub fn push(&mut self, statement: String) {
        self.statements.push(statement);
    }

    /// The stream position the script takes, as an SQL expression inside it.
    pub fn pos(&self) -> &'static str {
        match self.kind {
            DbKind::Sqlite => "(SELECT value FROM stream_counter WHERE id = 1)",
            DbKind::Postgres => "(SELECT value FROM pos)",
        }
    }

    /// Whether `more` values can still be bound.
    pub fn has_room_for(&self, more: usize) -> bool {
        self.args.len() + more <= MAX_ARGS
    }

    /// Takes the next stream position, runs the statements and returns the position.
    pub async fn run(&self, tx: &mut Tx) -> sqlx::Result<i64> {
        let sql = match self.kind {
            // The position is read at the end: a statement returning rows first would let
            // the driver stop the script there.
            DbKind::Sqlite => format!(
                "UPDATE stream_counter SET value = value + 1 WHERE id = 1; {}; SELECT value FROM stream_counter WHERE id = 1",
                self.statements.join("; ")
            ),
            DbKind::Postgres => {
                let ctes: Vec<String> =
                    self.statements.iter().enumerate().map(|(i, s)| format!("s{i} AS ({s})")).collect();
                format!(
                    "WITH pos AS (UPDATE stream_counter SET value = value + 1 WHERE id = 1 RETURNING value), {}
                     SELECT value FROM pos",
                    ctes.join(", ")
                )
            }
        };
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for arg in &self.args {
            query = match arg {
                Arg::Text(v) => query.bind(v.clone()),
                Arg::OptText(v) => query.bind(v.clone()),
                Arg::Int(v) => query.bind(*v),
                Arg::OptInt(v) => query.bind(*v),
            };
        }
        // fetch_all: every statement runs (fetch_one may stop at the first row).
        let positions: Vec<i64> = query.fetch_all(&mut **tx).await?;
        positions.last().copied().ok_or(sqlx::Error::RowNotFound)
    }
}

/// Runs scripts one after another: the positions they took, up to the first that failed, and
/// its error.
pub async fn run_each(scripts: impl Iterator<Item = &Script>, tx: &mut Tx) -> (Vec<i64>, Option<sqlx::Error>) {
    let mut positions = Vec::new();
    for script in scripts {
        match script.run(tx).await {
            Ok(pos) => positions.push(pos),
            Err(e) => return (positions, Some(e)),
        }
    }
    (positions, None)
}
