//! Delivery to clients: the notifier that wakes long-polls, sync tokens, `/sync`.

pub mod notifier;
pub mod token;
