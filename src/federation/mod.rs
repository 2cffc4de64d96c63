//! Federation transport: finding other servers, talking to them (signed HTTPS requests),
//! their signing keys, the outbound queue of PDUs and EDUs, and the TLS listener.
//!
//! For the room side: `client::request` (signed requests), `keys::public_keys_for` and
//! `keys::keys_for_pdu` (keys to verify signatures with), `sender::send_pdu` and
//! `sender::send_edu` (queued delivery), and the `FederationAuth` extractor of
//! `api::federation` (the verified origin of an inbound request).

pub mod client;
pub mod discovery;
pub mod edu;
pub mod events;
pub mod keys;
pub mod listener;
pub mod sender;
pub mod tls;
pub mod transaction;
pub mod xmatrix;

use crate::config::Config;

/// The federation state of the server: HTTP clients and discovery caches, key fetch locks,
/// and the sender's handle.
pub struct Federation {
    pub client: client::Client,
    pub key_fetches: keys::KeyFetches,
    pub sender: sender::Sender,
}

impl Federation {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Federation {
            client: client::Client::new(&config.federation)?,
            key_fetches: keys::KeyFetches::default(),
            sender: sender::Sender::default(),
        })
    }
}

/// The server name other servers are told to reach us at (`/.well-known/matrix/server`):
/// ours, with the federation listener's port when there is one.
pub fn delegated_server_name(config: &Config) -> String {
    match config.federation.listen {
        Some(addr) => match ruma::ServerName::parse(&config.server_name) {
            Ok(name) => format!("{}:{}", name.host(), addr.port()),
            Err(_) => config.server_name.clone(),
        },
        None => config.server_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_points_at_the_tls_listener() {
        let mut config = Config::with_server_name("example.org");
        assert_eq!(delegated_server_name(&config), "example.org");
        config.federation.listen = Some("0.0.0.0:8448".parse().unwrap());
        assert_eq!(delegated_server_name(&config), "example.org:8448");
        let mut config = Config::with_server_name("127.0.0.1:8008");
        config.federation.listen = Some("127.0.0.1:8449".parse().unwrap());
        assert_eq!(delegated_server_name(&config), "127.0.0.1:8449");
    }
}
