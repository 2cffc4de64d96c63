//! HTTP handlers, one module per chapter of the spec. Handlers parse, call a service, answer.

pub mod admin;
pub mod client;
pub mod federation;
