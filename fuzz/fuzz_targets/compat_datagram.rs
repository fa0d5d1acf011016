//! Arbitrary bytes as a datagram from a Node.js mesh-link 0.13.6 peer, through every layer a
//! compat node reads: datagram, chunk, a bounded reassembly shared by all inputs of the run,
//! packet, envelope, payload, usend. Never a panic, nothing held past the caps, and what
//! decodes re-encodes to the same bytes.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use mesh_wire::compat::{
    unpack, Chunk, Datagram, Envelope, Limits, Packet, Reassembly, Usend,
};

thread_local! {
    static PARTS: RefCell<Reassembly<u8>> = RefCell::new({
        let mut l = Limits::default();
        l.max_message = 1 << 20;
        l.max_bytes = 4 << 20;
        Reassembly::new(l)
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks the sender, so inputs of one run meet in the reassembly.
    let Some((&from, data)) = data.split_first() else {
        return;
    };
    let Ok(d) = Datagram::decode(data) else {
        return;
    };
    assert_eq!(d.encode(), data);
    match d {
        Datagram::Usend(body) => {
            if let Ok(u) = Usend::decode(body) {
                let _ = u.rid();
            }
        }
        Datagram::Send { chunk, .. } => {
            let Ok(c) = Chunk::decode(chunk) else {
                return;
            };
            let whole = PARTS.with(|p| {
                let mut p = p.borrow_mut();
                let r = p.push(from % 4, c, Instant::now());
                assert!(p.bytes() <= 4 << 20 && p.len() <= Limits::default().max_partial);
                r
            });
            if let Ok(Some(whole)) = whole {
                assert!(whole.len() <= 1 << 20);
                if let Ok(p) = Packet::decode(&whole) {
                    let _ = serde_json::from_slice::<Envelope>(p.payload);
                    let _ = unpack(p.payload);
                }
            }
        }
        Datagram::Ack { .. } => {}
    }
});
