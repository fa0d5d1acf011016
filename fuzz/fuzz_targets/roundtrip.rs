//! Frames generated from arbitrary bytes, encoded into a datagram and decoded back unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_wire::fuzzing::roundtrip(data);
});
