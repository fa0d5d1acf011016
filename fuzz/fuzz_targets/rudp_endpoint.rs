//! Arbitrary datagrams, framed garbage, sends and timer ticks into two mesh-rudp endpoints:
//! no panic, and every cap holds (checked inside `mesh_rudp::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_rudp::fuzzing::endpoint(data);
});
