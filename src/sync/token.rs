//! Sync tokens (`next_batch`, `since`, `/keys/changes` from/to): `s{stream}_{typing}`.
//! `stream` is the global stream position everything persisted is ordered by; `typing` is the
//! serial of the in-memory typing state. Small, opaque to clients, valid across restarts
//! (a typing serial from before a restart just means "send current typing state").

use std::fmt;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid sync token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let (stream, typing) = rest.split_once('_').unwrap_or((rest, "0"));
        let stream: i64 = stream.parse().map_err(|_| invalid())?;
        let typing: u64 = typing.parse().map_err(|_| invalid())?;
        if stream < 0 {
            return Err(invalid());
        }
        Ok(SyncToken { stream, typing })
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}_{}", self.stream, self.typing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = SyncToken { stream: 42, typing: 7 };
        assert_eq!(SyncToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(SyncToken::parse("s5").unwrap(), SyncToken { stream: 5, typing: 0 });
        for bad in ["", "5", "s", "sx_1", "s1_x", "s-1_0"] {
            assert!(SyncToken::parse(bad).is_err(), "{bad}");
        }
    }
}
