//! Golden byte vectors: the exact bytes of representative datagrams and envelopes, checked in
//! under `tests/vectors/`, so any change to the format shows up as a diff.
//!
//! To accept an intended format change, run with `MESH_WIRE_BLESS=1` and commit the diff
//! together with the `PROTOCOL.md` change and a version bump.

use std::path::PathBuf;

use mesh_wire::{
    AckFrame, AckRanges, CloseFrame, ClusterKey, DataFrame, Datagram, DatagramWriter, Envelope,
    EnvelopeKind, ErrorBody, ErrorCode, Fragment, Frame, Header, SeqRange, UnreliableFrame,
    CLOSE_NORMAL,
};

fn datagram(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new(
        &mut buf,
        Header::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718),
        1200,
    );
    for f in frames {
        w.push(f).unwrap();
    }
    w.finish().to_vec()
}

fn authenticated(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new_authenticated(
        &mut buf,
        Header::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718),
        1200,
    );
    for f in frames {
        w.push(f).unwrap();
    }
    w.finish_authenticated(0x2122_2324_2526_2728, &golden_key())
        .to_vec()
}

fn golden_key() -> ClusterKey {
    ClusterKey::from_secret(b"golden secret")
}

fn envelope(e: Envelope<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    e.encode(&mut out);
    out
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let ranges = [
        SeqRange { start: 12, end: 14 },
        SeqRange { start: 20, end: 21 },
    ];
    let mut error_payload = Vec::new();
    ErrorBody {
        code: ErrorCode::NO_HANDLER,
        message: "no handler",
    }
    .encode(&mut error_payload);
    vec![
        (
            "ping_authenticated",
            authenticated(&[Frame::Ping { token: 42 }]),
        ),
        (
            "data_unordered",
            datagram(&[Frame::Data(DataFrame {
                lazy_ack: false,
                channel: 0,
                seq: 1,
                message: 1,
                order: None,
                fragment: None,
                payload: b"hello",
            })]),
        ),
        (
            "data_ordered_fragment",
            datagram(&[Frame::Data(DataFrame {
                lazy_ack: false,
                channel: 3,
                seq: 0xFFFF_FFFE,
                message: 77,
                order: Some(9),
                fragment: Some(Fragment { index: 1, count: 4 }),
                payload: &[0xAB; 8],
            })]),
        ),
        (
            "data_lazy_ack",
            datagram(&[Frame::Data(DataFrame {
                lazy_ack: true,
                channel: 0,
                seq: 2,
                message: 2,
                order: None,
                fragment: None,
                payload: b"answer",
            })]),
        ),
        (
            "ack_with_ranges",
            datagram(&[Frame::Ack(AckFrame {
                cumulative: 10,
                delay_micros: 250,
                ranges: AckRanges::List(&ranges),
            })]),
        ),
        (
            "unreliable",
            datagram(&[Frame::Unreliable(UnreliableFrame { payload: b"u" })]),
        ),
        ("ping", datagram(&[Frame::Ping { token: 42 }])),
        ("pong", datagram(&[Frame::Pong { token: 42 }])),
        // A path-MTU probe: a ping padded to 64 bytes.
        (
            "ping_padded",
            datagram(&[Frame::Ping { token: 42 }, Frame::Padding { len: 31 }]),
        ),
        (
            "close",
            datagram(&[Frame::Close(CloseFrame {
                reason: CLOSE_NORMAL,
            })]),
        ),
        (
            "packed",
            datagram(&[
                Frame::Ack(AckFrame {
                    cumulative: 1,
                    delay_micros: 0,
                    ranges: AckRanges::List(&[]),
                }),
                Frame::Data(DataFrame {
                    lazy_ack: false,
                    channel: 0,
                    seq: 5,
                    message: 5,
                    order: None,
                    fragment: None,
                    payload: b"a",
                }),
                Frame::Data(DataFrame {
                    lazy_ack: false,
                    channel: 0,
                    seq: 6,
                    message: 6,
                    order: None,
                    fragment: None,
                    payload: b"b",
                }),
            ]),
        ),
        (
            "envelope_oneway",
            envelope(Envelope {
                kind: EnvelopeKind::OneWay,
                handler: 1000,
                request_id: 0,
                fingerprint: None,
                payload: b"hi",
            }),
        ),
        (
            "envelope_request",
            envelope(Envelope {
                kind: EnvelopeKind::Request,
                handler: 2000,
                request_id: 0x0A0B_0C0D,
                fingerprint: None,
                payload: b"ping",
            }),
        ),
        (
            "envelope_typed_request",
            envelope(Envelope {
                kind: EnvelopeKind::Request,
                handler: 2000,
                request_id: 0x0A0B_0C0D,
                fingerprint: Some(0x1122_3344_5566_7788),
                payload: b"ping",
            }),
        ),
        (
            "envelope_error_response",
            envelope(Envelope {
                kind: EnvelopeKind::ErrorResponse,
                handler: 2000,
                request_id: 0x0A0B_0C0D,
                fingerprint: None,
                payload: &error_payload,
            }),
        ),
    ]
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn golden_vectors_match() {
    let bless = std::env::var_os("MESH_WIRE_BLESS").is_some();
    let mut mismatches = Vec::new();
    for (name, bytes) in cases() {
        let path = vectors_dir().join(format!("{name}.hex"));
        let hex = hex::encode(&bytes);
        if bless {
            std::fs::write(&path, format!("{hex}\n")).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with MESH_WIRE_BLESS=1)", path.display()));
        if want.trim() != hex {
            mismatches.push(format!("{name}:\n  want {}\n  got  {hex}", want.trim()));
        }
        // Every datagram vector also decodes back.
        if name.ends_with("authenticated") {
            let d = Datagram::decode_with(&bytes, Some(&golden_key())).unwrap();
            assert_eq!(d.packet_number(), Some(0x2122_2324_2526_2728));
        } else if !name.starts_with("envelope") {
            let d = Datagram::decode(&bytes).unwrap();
            assert!(d.frame_count() >= 1);
        }
    }
    assert!(
        mismatches.is_empty(),
        "wire format changed:\n{}",
        mismatches.join("\n")
    );
}

/// The committed bytes of vector `name`.
fn vector(name: &str) -> Vec<u8> {
    let hex = std::fs::read_to_string(vectors_dir().join(format!("{name}.hex")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    hex::decode(hex.trim()).unwrap()
}

#[test]
fn golden_vectors_decode_to_what_they_say() {
    let bytes = vector("ping");
    // The header, field by field, as PROTOCOL.md documents it.
    assert_eq!(&bytes[0..2], b"ML");
    assert_eq!(bytes[2], 1, "version");
    assert_eq!(bytes[3], 0, "flags");
    assert_eq!(
        u64::from_le_bytes(bytes[4..12].try_into().unwrap()),
        0x0102_0304_0506_0708
    );
    assert_eq!(
        u64::from_le_bytes(bytes[12..20].try_into().unwrap()),
        0x1112_1314_1516_1718
    );
    assert_eq!(bytes[24], 0x04, "ping frame type");
    assert_eq!(u64::from_le_bytes(bytes[25..33].try_into().unwrap()), 42);
    let d = Datagram::decode(&bytes).unwrap();
    assert_eq!(d.frames().next(), Some(Frame::Ping { token: 42 }));
}

#[test]
fn padding_runs_to_the_end_in_zero_bytes_and_nothing_follows_it() {
    let bytes = vector("ping_padded");
    assert_eq!(bytes.len(), 64);
    assert_eq!(bytes[33], 0x07, "padding frame type");
    assert!(bytes[34..].iter().all(|&b| b == 0));
    let d = Datagram::decode(&bytes).unwrap();
    let frames: Vec<Frame<'_>> = d.frames().collect();
    assert_eq!(
        frames,
        [Frame::Ping { token: 42 }, Frame::Padding { len: 31 }]
    );
    // A non-zero byte in the padding is refused (one encoding per datagram).
    let mut bad = bytes.clone();
    bad[40] = 1;
    mesh_wire::reseal(&mut bad);
    assert!(Datagram::decode(&bad).is_err());
    // The writer refuses anything after padding.
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
    w.push(&Frame::Ping { token: 1 }).unwrap();
    w.pad_to(100);
    assert!(w.push(&Frame::Pong { token: 1 }).is_err());
    assert_eq!(w.finish().len(), 100);
    // Authenticated: the trailer counts toward the padded length.
    let mut w = DatagramWriter::new_authenticated(&mut buf, Header::new(1, 2), 1200);
    w.push(&Frame::Ping { token: 1 }).unwrap();
    w.pad_to(300);
    let sealed = w.finish_authenticated(9, &golden_key()).to_vec();
    assert_eq!(sealed.len(), 300);
    let d = Datagram::decode_with(&sealed, Some(&golden_key())).unwrap();
    assert_eq!(d.frame_count(), 2);
}

#[test]
fn crc32_test_vector() {
    // The standard CRC-32 (IEEE 802.3) check value.
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    // And the checksum of a fixed datagram, as stored in bytes 20..24.
    let bytes = datagram(&[Frame::Ping { token: 42 }]);
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..20]);
    h.update(&bytes[24..]);
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
        h.finalize()
    );
}
