//! The one integration-test binary: every module drives real Plexus servers over HTTP.
//! Database: SQLite in a temp dir, or PostgreSQL when PLEXUS_TEST_DATABASE_URL is set
//! (a server URL such as postgres://postgres@127.0.0.1:5432; each server gets a fresh database).

mod harness;

mod accounts;
mod admin;
mod appservice;
mod authz;
mod bench;
mod cli;
mod crash;
mod dag;
mod directory;
mod e2ee;
mod errors;
mod fed_events;
mod fed_join;
mod fed_lookups;
mod fed_three;
mod federation;
mod limits;
mod media;
mod openid;
mod presence;
mod push;
mod push_gateway;
mod receipts;
mod reports;
mod resolve_props;
mod retention;
mod room_util;
mod rooms;
mod scale;
mod search;
mod send_path;
mod sliding_sync;
mod spaces;
mod sso;
mod sync;
mod timestamp;
mod typing;
mod upgrade;
mod voip;
