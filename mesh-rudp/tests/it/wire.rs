//! Hand-built datagrams, for tests that feed an endpoint directly. Also used by
//! `tests/memory.rs` (included by path: it is a test binary of its own).

use mesh_wire::{DataFrame, DatagramWriter, Fragment, Frame, Header};

/// One datagram from session `src` carrying one data frame.
pub(crate) fn data_datagram(
    src: u64,
    seq: u32,
    message: u32,
    fragment: Option<Fragment>,
    payload: &[u8],
) -> Vec<u8> {
    let mut datagram = Vec::new();
    let mut w = DatagramWriter::new(&mut datagram, Header::new(src, 0), 1200);
    w.push(&Frame::Data(DataFrame {
        lazy_ack: false,
        channel: 0,
        seq,
        message,
        order: None,
        fragment,
        payload,
    }))
    .unwrap();
    w.finish().to_vec()
}
