//! Arbitrary bytes as a node record read from Redis (anyone with write access to Redis can put
//! anything there): decoding never panics, and an accepted record survives a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(record) = mesh_discovery::NodeRecord::decode(data) {
        let again = mesh_discovery::NodeRecord::decode(&record.encode()).expect("re-encodes");
        assert_eq!(again, record);
    }
});
