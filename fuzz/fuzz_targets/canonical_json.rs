//! Canonical JSON: whatever parses once serialises to a form that parses back to the same
//! value and serialises identically (the basis of every hash and signature).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ruma::CanonicalJsonValue;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(canonical) = CanonicalJsonValue::try_from(value) else { return };
    let text = canonical.to_string();
    let again: serde_json::Value = serde_json::from_str(&text).expect("canonical JSON parses");
    let again = CanonicalJsonValue::try_from(again).expect("canonical JSON stays canonical");
    assert_eq!(again, canonical);
    assert_eq!(again.to_string(), text);
});
