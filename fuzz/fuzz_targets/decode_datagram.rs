//! Arbitrary bytes into every mesh-wire decoder: no panic, consumed ≤ input, and a successful
//! decode re-encodes to the same bytes (checked inside `mesh_wire::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_wire::fuzzing::decode_datagram(data);
});
