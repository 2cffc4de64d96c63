//! Uploaded bytes given to the thumbnailer: sniffing, decoding under limits, scaling,
//! cropping and encoding never panic, hang or allocate without bound.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use plexus::media::thumbnail::{self, Method};

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let path = file.path();
    if thumbnail::dimensions(path).is_err() {
        return;
    }
    for (w, h, method) in [(32, 32, Method::Crop), (320, 240, Method::Scale)] {
        let _ = thumbnail::render(path, data.len() as u64, thumbnail::snap(&thumbnail::COMMON_SIZES, w, h, method), false);
    }
});
