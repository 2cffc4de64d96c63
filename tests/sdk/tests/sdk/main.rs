//! matrix-sdk, the SDK behind Element X, against a real Plexus process. A crate of its own
//! (own workspace and lockfile) so its large dependency tree never touches Plexus's.

// matrix-sdk's futures are deep; its own docs ask for this limit.
#![recursion_limit = "256"]

mod e2ee;
mod harness;
mod room_list;
