//! Arbitrary text as a key name in the Node original's Redis schema (anyone with write access
//! to Redis can put any key there): reading never panics, and a key that reads and can be
//! written reads back the same.
#![no_main]

use mesh_discovery::compat::AnnounceKey;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(k) = AnnounceKey::parse(text) {
        if let Ok(again) = k.encode() {
            let back = AnnounceKey::parse(&again).expect("a written key reads");
            assert_eq!(back.address, k.address);
            assert_eq!(back.port, k.port);
            assert_eq!(back.node_type, k.node_type);
            assert_eq!(back.backups, k.backups);
        }
    }
});
