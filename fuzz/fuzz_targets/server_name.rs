//! Server names and `.well-known/matrix/server` answers from other servers: the delegated
//! name, and the `Cache-Control` header that says how long to keep it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::federation::discovery;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = discovery::delegated_server_name(data) {
        assert!(!name.host().is_empty());
        let _ = name.port();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ruma::OwnedServerName::try_from(text);
        if let Ok(value) = http::HeaderValue::from_str(text) {
            let ttl = discovery::cache_period([&value]);
            assert!(ttl.as_secs() <= 48 * 3600, "TTL {ttl:?} beyond the 48 h cap");
        }
    }
});
