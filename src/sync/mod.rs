//! Delivery to clients: the notifier that wakes long-polls, sync tokens, `/sync`.

pub mod filter;
pub mod notifier;
pub mod recent;
pub mod sliding;
pub mod token;
pub mod v2;
