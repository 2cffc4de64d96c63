//! Append scripts: everything one append to a room's timeline writes, assembled as statements
//! with bound values and run in one round trip to the database. A send's cost is the number of
//! hand-offs to the connection, not the SQL: on SQLite the statements run in a row on the
//! connection's worker, on PostgreSQL they are data-modifying CTEs of one statement (which
//! all see the same snapshot: no statement of a script reads what another one writes).
//!
//! A script takes the next stream position first; its statements name that position with
//! [`Script::pos`].
//!
//! A batch's queued scripts (`storage::batch`) go to SQLite together, as one multi-statement
//! query: the committer hands the connection's worker thread one command per batch instead of
//! one per script, and waits for one answer. Each hand-off is two thread wake-ups, which cost
//! about as much as the script's own SQL, and the batch's commit waits for them all.

use futures::StreamExt;

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
        let (mut positions, failure) = run_each(&[self], tx).await;
        match failure {
            Some(e) => Err(e),
            None => positions.pop().ok_or(sqlx::Error::RowNotFound),
        }
    }

    /// The script as one SQLite query, its placeholders numbered from `first_arg + 1`, written
    /// to `sql`. The position is read at the end: a statement returning rows first would let
    /// the driver stop the script there.
    fn write_sqlite(&self, first_arg: usize, sql: &mut String) {
        sql.push_str("UPDATE stream_counter SET value = value + 1 WHERE id = 1; ");
        for statement in &self.statements {
            shift_placeholders(statement, first_arg, sql);
            sql.push_str("; ");
        }
        sql.push_str("SELECT value FROM stream_counter WHERE id = 1");
    }

    /// The script as one PostgreSQL statement: data-modifying CTEs after the one taking the
    /// position.
    fn postgres_sql(&self) -> String {
        let ctes: Vec<String> = self.statements.iter().enumerate().map(|(i, s)| format!("s{i} AS ({s})")).collect();
        format!(
            "WITH pos AS (UPDATE stream_counter SET value = value + 1 WHERE id = 1 RETURNING value), {}
             SELECT value FROM pos",
            ctes.join(", ")
        )
    }
}

/// `statement` with each placeholder `$n` written as `$(n + by)`, appended to `out`. Quoted
/// text and identifiers are copied as they are.
fn shift_placeholders(statement: &str, by: usize, out: &mut String) {
    if by == 0 {
        out.push_str(statement);
        return;
    }
    let mut quote = None;
    let mut chars = statement.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let digits = &statement[i + 1..];
                let len = digits.bytes().take_while(u8::is_ascii_digit).count();
                let n: usize = digits[..len].parse().unwrap_or(0);
                out.push('$');
                out.push_str(&(n + by).to_string());
                for _ in 0..len {
                    chars.next();
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
}

/// Runs scripts one after another: the positions they took, up to the first that failed, and
/// its error. On SQLite, as many as fit in one query's parameters go in one query.
pub async fn run_each(scripts: &[&Script], tx: &mut Tx) -> (Vec<i64>, Option<sqlx::Error>) {
    let mut positions = Vec::with_capacity(scripts.len());
    let mut rest = scripts;
    while !rest.is_empty() {
        let together = first_query_len(rest);
        let (now, later) = rest.split_at(together);
        let failure = run_together(now, tx, &mut positions).await;
        if failure.is_some() {
            return (positions, failure);
        }
        rest = later;
    }
    (positions, None)
}

/// How many of `scripts`, from the first, go in one query: on SQLite as many as bind at most
/// `MAX_ARGS` values between them (at least one), on PostgreSQL one.
fn first_query_len(scripts: &[&Script]) -> usize {
    match scripts.first().map(|s| s.kind) {
        Some(DbKind::Sqlite) => {
            let mut args = 0;
            let fitting = scripts
                .iter()
                .take_while(|s| {
                    args += s.args.len();
                    args <= MAX_ARGS
                })
                .count();
            fitting.max(1)
        }
        _ => 1,
    }
}

/// Scripts as one SQLite query, the placeholders of each numbered after those of the scripts
/// before it.
fn sqlite_sql(scripts: &[&Script]) -> String {
    let mut sql = String::new();
    let mut args = 0;
    for (n, script) in scripts.iter().enumerate() {
        if n > 0 {
            sql.push_str("; ");
        }
        script.write_sqlite(args, &mut sql);
        args += script.args.len();
    }
    sql
}

/// Runs scripts in one query (one script on PostgreSQL), adding the positions they took to
/// `positions`; the error of the first that failed.
async fn run_together(scripts: &[&Script], tx: &mut Tx, positions: &mut Vec<i64>) -> Option<sqlx::Error> {
    let sql = match scripts {
        [script] if script.kind == DbKind::Postgres => script.postgres_sql(),
        _ => sqlite_sql(scripts),
    };
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for arg in scripts.iter().flat_map(|s| &s.args) {
        query = match arg {
            Arg::Text(v) => query.bind(v.clone()),
            Arg::OptText(v) => query.bind(v.clone()),
            Arg::Int(v) => query.bind(*v),
            Arg::OptInt(v) => query.bind(*v),
        };
    }
    // Every row is read: the statements after a row run only when the stream goes on.
    let expected = positions.len() + scripts.len();
    let mut rows = query.fetch(&mut **tx);
    while let Some(row) = rows.next().await {
        match row {
            Ok(pos) => positions.push(pos),
            Err(e) => return Some(e),
        }
    }
    (positions.len() != expected).then_some(sqlx::Error::RowNotFound)
}

#[cfg(test)]
mod tests {
    use super::{DbKind, Script, first_query_len, shift_placeholders, sqlite_sql};

    fn binding(kind: DbKind, values: usize) -> Script {
        let mut script = Script::new(kind);
        for n in 0..values {
            script.arg(n as i64);
        }
        script
    }

    #[test]
    fn sqlite_queries_take_the_scripts_whose_values_fit_together() {
        let scripts = [20_000, 9_000, 5_000, 30_000].map(|n| binding(DbKind::Sqlite, n));
        let refs: Vec<&Script> = scripts.iter().collect();
        assert_eq!(first_query_len(&refs), 2);
        assert_eq!(first_query_len(&refs[2..]), 1);
        assert_eq!(first_query_len(&refs[3..]), 1);
        let small = [10, 10, 10].map(|n| binding(DbKind::Sqlite, n));
        assert_eq!(first_query_len(&small.iter().collect::<Vec<_>>()), 3);
        let postgres = [10, 10].map(|n| binding(DbKind::Postgres, n));
        assert_eq!(first_query_len(&postgres.iter().collect::<Vec<_>>()), 1);
    }

    fn shifted(statement: &str, by: usize) -> String {
        let mut out = String::new();
        shift_placeholders(statement, by, &mut out);
        out
    }

    #[test]
    fn placeholders_are_renumbered_and_quoted_text_is_not() {
        assert_eq!(shifted("INSERT INTO t VALUES ($1, $2, $10)", 0), "INSERT INTO t VALUES ($1, $2, $10)");
        assert_eq!(shifted("INSERT INTO t VALUES ($1, $2, $10)", 25), "INSERT INTO t VALUES ($26, $27, $35)");
        assert_eq!(
            shifted("SELECT '$1 it''s $2', \"$3\" FROM t WHERE a = $3 AND b = $", 7),
            "SELECT '$1 it''s $2', \"$3\" FROM t WHERE a = $10 AND b = $"
        );
    }

    #[test]
    fn sqlite_scripts_are_joined_with_their_placeholders_in_turn() {
        let mut silent = Script::new(DbKind::Sqlite);
        silent.push("DELETE FROM t".to_owned());
        let mut one = Script::new(DbKind::Sqlite);
        let value = one.arg(1);
        one.push(format!("INSERT INTO t VALUES ({value})"));
        // A script binding nothing first: the next one still starts a statement of its own.
        let sql = sqlite_sql(&[&silent, &one, &one]);
        let parts: Vec<&str> = sql.split("; ").collect();
        assert_eq!(parts.len(), 9, "{sql}");
        assert_eq!(parts[1], "DELETE FROM t");
        assert_eq!(parts[4], "INSERT INTO t VALUES ($1)");
        assert_eq!(parts[7], "INSERT INTO t VALUES ($2)");
    }
}
