//! Sync filters as clients send them (inline in `filter=` or uploaded): parsing, then every
//! question /sync asks of a filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::sync::filter::{self, Filter};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(f) = filter::parse::<Filter>(text) else { return };
    let room = &f.room;
    let _ = room.allows_room("!room:example.org");
    let _ = room.timeline.allows_type("m.room.message");
    let _ = room.timeline.allows_sender("@alice:example.org");
    let _ = room.timeline.allows_room("!room:example.org");
    let _ = room.timeline.is_open();
});
