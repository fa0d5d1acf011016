//! Arbitrary bytes as a message body a node receives from another (envelope, relay, relay
//! report): decoding never panics, and an accepted relay survives a round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_link::fuzzing::decode_message(data);
});
