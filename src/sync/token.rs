//! Sync tokens (`next_batch`, `since`, `/keys/changes` from/to): `s{stream}_{typing}` or
//! `s{stream}_{typing}_{to_device}`. `stream` is the global stream position everything
//! persisted is ordered by; `typing` is the serial of the in-memory typing state; `to_device`
//! is how far to-device messages were delivered when a sync had to cut them short (else
//! `stream`). Small, opaque to clients, valid across restarts (a typing serial from before a
//! restart just means "send current typing state").

use std::fmt;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: u64,
    /// Delivered to-device messages end here (None: at `stream`).
    pub to_device: Option<i64>,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid sync token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let mut parts = rest.split('_');
        let stream: i64 = parts.next().unwrap_or_default().parse().map_err(|_| invalid())?;
        let typing: u64 = parts.next().map_or(Ok(0), str::parse).map_err(|_| invalid())?;
        let to_device: Option<i64> = parts.next().map(str::parse).transpose().map_err(|_| invalid())?;
        if stream < 0 || parts.next().is_some() || to_device.is_some_and(|t| t < 0 || t > stream) {
            return Err(invalid());
        }
        Ok(SyncToken { stream, typing, to_device })
    }

    /// A pagination position (`/messages` `from` and `to`), which unlike a sync token may
    /// be negative: history backfilled from other servers sits below position 0.
    pub fn parse_position(token: &str) -> Result<i64> {
        match token.strip_prefix("s-") {
            Some(rest) => Self::parse(&format!("s{rest}")).map(|t| -t.stream),
            None => Self::parse(token).map(|t| t.stream),
        }
    }

    /// A token for a stream position alone (pagination).
    pub fn at(stream: i64) -> Self {
        SyncToken { stream, typing: 0, to_device: None }
    }

    /// Where acknowledged to-device messages end.
    pub fn to_device_pos(&self) -> i64 {
        self.to_device.unwrap_or(self.stream)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_device {
            Some(t) if t != self.stream => write!(f, "s{}_{}_{t}", self.stream, self.typing),
            _ => write!(f, "s{}_{}", self.stream, self.typing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = SyncToken { stream: 42, typing: 7, to_device: None };
        assert_eq!(SyncToken::parse(&t.to_string()).unwrap(), t);
        let t = SyncToken { stream: 42, typing: 7, to_device: Some(40) };
        assert_eq!(t.to_string(), "s42_7_40");
        assert_eq!(SyncToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(SyncToken::parse("s5").unwrap(), SyncToken::at(5));
        for bad in ["", "5", "s", "sx_1", "s1_x", "s-1_0", "s5_0_6", "s5_0_1_1"] {
            assert!(SyncToken::parse(bad).is_err(), "{bad}");
        }
    }
}
