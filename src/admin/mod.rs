//! Server administration (the services behind `/_synapse/admin`, see `api::admin`):
//! shared-secret registration, accounts as admins manage them, room shutdown, history purges, server notices.

pub mod notices;
pub mod purge;
pub mod register;
pub mod rooms;
pub mod users;
