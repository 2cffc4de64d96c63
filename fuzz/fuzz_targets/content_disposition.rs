//! Uploaded file names come back in `Content-Disposition`: whatever the name, the header is
//! valid (else the download would fail) and cannot inject parameters or headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::media::headers::content_disposition;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    for inline in [false, true] {
        let value = content_disposition(inline, Some(name));
        http::HeaderValue::from_str(&value).expect("a valid header value");
        assert!(!value.contains(['\r', '\n']));
        // One parameter only, the file name, which cannot leave its quotes.
        let (kind, rest) = value.split_once("; ").expect("a file name parameter");
        assert_eq!(kind, if inline { "inline" } else { "attachment" });
        if let Some(quoted) = rest.strip_prefix("filename=\"") {
            let inner = quoted.strip_suffix('"').expect("closing quote");
            assert!(!inner.contains(['"', '\\']));
            assert_eq!(inner, name);
        } else {
            let encoded = rest.strip_prefix("filename*=utf-8''").expect("RFC 6266 form");
            assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)));
        }
    }
});
