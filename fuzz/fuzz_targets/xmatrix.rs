//! The `X-Matrix` Authorization header of federation requests: parsing never panics, and a
//! parsed header written back parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::federation::xmatrix::XMatrix;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(header) = XMatrix::parse(text) else { return };
    // Signatures and key IDs are base64 and `ed25519:...`: only those round-trip unquoted.
    if header.key.chars().chain(header.sig.chars()).all(|c| c.is_ascii_alphanumeric() || "+/=:_-".contains(c)) {
        assert_eq!(XMatrix::parse(&header.to_header()).as_ref(), Ok(&header));
    }
});
