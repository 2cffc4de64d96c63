//! Cryptographic identity of the server.

pub mod keys;
