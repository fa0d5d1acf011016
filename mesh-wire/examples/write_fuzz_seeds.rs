//! Writes the committed seed corpus of the `fuzz/` targets: one valid datagram of each frame
//! kind, a packed datagram, and envelopes.
//!
//! ```text
//! cargo run -p mesh-wire --example write_fuzz_seeds
//! ```

use std::path::Path;

use mesh_wire::{
    AckFrame, AckRanges, CloseFrame, DataFrame, DatagramWriter, Envelope, EnvelopeKind, Fragment,
    Frame, Header, SeqRange, UnreliableFrame,
};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let ranges = [SeqRange { start: 3, end: 5 }];
    let frames = [
        Frame::Data(DataFrame {
            lazy_ack: false,
            channel: 0,
            seq: 1,
            message: 1,
            order: None,
            fragment: None,
            payload: b"hello",
        }),
        Frame::Data(DataFrame {
            lazy_ack: false,
            channel: 2,
            seq: 7,
            message: 3,
            order: Some(1),
            fragment: Some(Fragment { index: 0, count: 2 }),
            payload: &[1, 0, 0, 1, 2, 3],
        }),
        Frame::Ack(AckFrame {
            cumulative: 2,
            delay_micros: 100,
            ranges: AckRanges::List(&ranges),
        }),
        Frame::Unreliable(UnreliableFrame { payload: b"u" }),
        Frame::Ping { token: 1 },
        Frame::Pong { token: 1 },
        Frame::Close(CloseFrame { reason: 0 }),
    ];
    let decode = root.join("decode_datagram");
    std::fs::create_dir_all(&decode)?;
    let mut buf = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
        w.push(f).expect("fits");
        std::fs::write(decode.join(format!("frame-{i}")), w.finish())?;
    }
    let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
    for f in &frames {
        w.push(f).expect("fits");
    }
    std::fs::write(decode.join("packed"), w.finish())?;
    let mut env = Vec::new();
    Envelope {
        kind: EnvelopeKind::Request,
        handler: 7,
        request_id: 9,
        fingerprint: None,
        payload: b"x",
    }
    .encode(&mut env);
    std::fs::write(decode.join("envelope"), &env)?;
    let mut typed = Vec::new();
    Envelope {
        kind: EnvelopeKind::Request,
        handler: 7,
        request_id: 9,
        fingerprint: Some(0x0102_0304_0506_0708),
        payload: b"x",
    }
    .encode(&mut typed);
    std::fs::write(decode.join("envelope_typed"), &typed)?;

    let rt = root.join("roundtrip");
    std::fs::create_dir_all(&rt)?;
    // The roundtrip target reads: two u64 session ids, then (kind byte, fields...) repeated.
    let mut seed = Vec::new();
    seed.extend_from_slice(&1u64.to_le_bytes());
    seed.extend_from_slice(&2u64.to_le_bytes());
    for kind in 0u8..6 {
        seed.push(kind);
        seed.extend_from_slice(&[3; 24]);
    }
    std::fs::write(rt.join("every-kind"), &seed)?;
    std::fs::write(rt.join("empty"), [])?;
    Ok(())
}
