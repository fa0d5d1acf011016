//! Property tests: every frame kind and packed datagrams round-trip, `encoded_len` is exact,
//! a flipped bit is always rejected, and arbitrary bytes never panic the decoders.

use mesh_wire::{
    AckFrame, AckRanges, CloseFrame, DataFrame, Datagram, DatagramWriter, DecodeError, Envelope,
    EnvelopeKind, ErrorBody, ErrorCode, Fragment, Frame, Header, SeqRange, UnreliableFrame,
    MAX_ACK_RANGES, MAX_DATAGRAM_LEN,
};
use proptest::prelude::*;

/// An owned description of a frame, so strategies can produce it and tests borrow from it.
#[derive(Debug, Clone)]
enum OwnedFrame {
    Data {
        channel: u8,
        seq: u32,
        message: u32,
        order: Option<u32>,
        fragment: Option<Fragment>,
        payload: Vec<u8>,
    },
    Ack {
        cumulative: u32,
        delay: u32,
        ranges: Vec<SeqRange>,
    },
    Unreliable(Vec<u8>),
    Ping(u64),
    Pong(u64),
    Close(u8),
}

impl OwnedFrame {
    fn frame(&self) -> Frame<'_> {
        match self {
            OwnedFrame::Data {
                channel,
                seq,
                message,
                order,
                fragment,
                payload,
            } => Frame::Data(DataFrame {
                lazy_ack: *seq & 1 == 1,
                channel: *channel,
                seq: *seq,
                message: *message,
                order: *order,
                fragment: *fragment,
                payload,
            }),
            OwnedFrame::Ack {
                cumulative,
                delay,
                ranges,
            } => Frame::Ack(AckFrame {
                cumulative: *cumulative,
                delay_micros: *delay,
                ranges: AckRanges::List(ranges),
            }),
            OwnedFrame::Unreliable(p) => Frame::Unreliable(UnreliableFrame { payload: p }),
            OwnedFrame::Ping(t) => Frame::Ping { token: *t },
            OwnedFrame::Pong(t) => Frame::Pong { token: *t },
            OwnedFrame::Close(r) => Frame::Close(CloseFrame { reason: *r }),
        }
    }
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..1500)
}

fn fragment() -> impl Strategy<Value = Option<Fragment>> {
    prop::option::of(
        (2u32..=u32::MAX)
            .prop_flat_map(|count| (0..count).prop_map(move |index| Fragment { index, count })),
    )
}

fn frame() -> impl Strategy<Value = OwnedFrame> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<Option<u32>>(),
            fragment(),
            payload()
        )
            .prop_map(|(channel, seq, message, order, fragment, payload)| {
                OwnedFrame::Data {
                    channel,
                    seq,
                    message,
                    order,
                    fragment,
                    payload,
                }
            }),
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(
                (any::<u32>(), any::<u32>()).prop_map(|(start, end)| SeqRange { start, end }),
                0..=MAX_ACK_RANGES
            )
        )
            .prop_map(|(cumulative, delay, ranges)| OwnedFrame::Ack {
                cumulative,
                delay,
                ranges
            }),
        payload().prop_map(OwnedFrame::Unreliable),
        any::<u64>().prop_map(OwnedFrame::Ping),
        any::<u64>().prop_map(OwnedFrame::Pong),
        any::<u8>().prop_map(OwnedFrame::Close),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u64>(), any::<u64>()).prop_map(|(s, d)| Header::new(s, d))
}

fn write(header: Header, frames: &[OwnedFrame]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new(&mut buf, header, MAX_DATAGRAM_LEN);
    for f in frames {
        w.push(&f.frame()).expect("fits");
    }
    w.finish().to_vec()
}

proptest! {
    #[test]
    fn every_frame_kind_round_trips(f in frame()) {
        let frame = f.frame();
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        prop_assert_eq!(out.len(), frame.encoded_len());
        let (back, used) = Frame::decode(&out).unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn packed_datagrams_round_trip(h in header(), frames in prop::collection::vec(frame(), 1..12)) {
        let bytes = write(h, &frames);
        let expected_len: usize =
            mesh_wire::HEADER_LEN + frames.iter().map(|f| f.frame().encoded_len()).sum::<usize>();
        prop_assert_eq!(bytes.len(), expected_len);
        let d = Datagram::decode(&bytes).unwrap();
        prop_assert_eq!(d.header(), h);
        prop_assert_eq!(d.len(), bytes.len());
        let back: Vec<Frame<'_>> = d.frames().collect();
        let want: Vec<Frame<'_>> = frames.iter().map(OwnedFrame::frame).collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn a_detached_payload_makes_the_same_datagram(
        h in header(),
        frames in prop::collection::vec(frame(), 0..6),
        seq in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 1..3000),
    ) {
        let last = DataFrame {
            lazy_ack: seq % 2 == 0,
            channel: 3,
            seq,
            message: seq ^ 0x55,
            order: (seq % 3 == 0).then_some(seq / 3),
            fragment: Some(Fragment { index: 1, count: 4 }),
            payload: &payload,
        };
        // Written whole...
        let mut whole = Vec::new();
        let mut w = DatagramWriter::new(&mut whole, h, MAX_DATAGRAM_LEN);
        for f in &frames {
            w.push(&f.frame()).expect("fits");
        }
        w.push(&Frame::Data(last.clone())).expect("fits");
        let whole = w.finish().to_vec();
        // ...and with the payload left out, then put back behind the head.
        let mut head = vec![9u8; 5]; // appended after what the buffer holds
        let mut w = DatagramWriter::append(&mut head, h, MAX_DATAGRAM_LEN);
        for f in &frames {
            w.push(&f.frame()).expect("fits");
        }
        w.push_detached(&last).expect("fits");
        prop_assert_eq!(w.detached_len(), payload.len());
        prop_assert_eq!(w.remaining(), 0);
        prop_assert!(w.push(&Frame::Ping { token: 1 }).is_err(), "nothing after it");
        let mut joined = w.finish_detached(&payload).to_vec();
        joined.extend_from_slice(&payload);
        prop_assert_eq!(&joined, &whole);
        prop_assert!(Datagram::decode(&joined).is_ok());
    }

    #[test]
    fn a_flipped_bit_anywhere_is_rejected(
        h in header(),
        frames in prop::collection::vec(frame(), 1..4),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = write(h, &frames);
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(Datagram::decode(&bytes).is_err(), "flip at byte {} bit {} accepted", i, bit);
    }

    #[test]
    fn writer_respects_its_size_limit(limit in 24usize..2000, frames in prop::collection::vec(frame(), 1..20)) {
        let mut buf = Vec::new();
        let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), limit);
        for f in &frames {
            let before = w.remaining();
            match w.push(&f.frame()) {
                Ok(()) => prop_assert_eq!(before - w.remaining(), f.frame().encoded_len()),
                Err(_) => prop_assert_eq!(before, w.remaining()),
            }
        }
        prop_assert!(w.finish().len() <= limit);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        mesh_wire::fuzzing::decode_datagram(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        // Put a correct checksum on random frames so the frame parser itself is exercised.
        let mut bytes = write(Header::new(3, 4), &[OwnedFrame::Ping(0)]);
        bytes.truncate(mesh_wire::HEADER_LEN);
        bytes.extend_from_slice(&body);
        mesh_wire::reseal(&mut bytes);
        mesh_wire::fuzzing::decode_datagram(&bytes);
    }

    #[test]
    fn generated_roundtrip_entry_point(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        mesh_wire::fuzzing::roundtrip(&bytes);
    }

    #[test]
    fn envelopes_round_trip(
        kind in 0u8..4,
        handler in any::<u16>(),
        rid in any::<u64>(),
        fp in any::<Option<u64>>(),
        p in payload(),
    ) {
        let kind = EnvelopeKind::from_byte(kind).unwrap();
        let env = Envelope {
            kind,
            handler,
            request_id: if kind.has_request_id() { rid } else { 0 },
            // Answers carry no fingerprint (one given is not written).
            fingerprint: fp.filter(|_| kind.may_be_typed()),
            payload: &p,
        };
        let mut out = Vec::new();
        env.encode(&mut out);
        prop_assert_eq!(out.len(), env.encoded_len());
        prop_assert_eq!(Envelope::decode(&out).unwrap(), env);
    }

    #[test]
    fn a_typed_answer_is_refused(kind in 2u8..4, rest in payload()) {
        let mut bytes = vec![kind | mesh_wire::TYPED];
        bytes.extend_from_slice(&rest);
        prop_assert!(Envelope::decode(&bytes).is_err());
    }

    #[test]
    fn error_bodies_round_trip(code in any::<u16>(), msg in ".{0,64}") {
        let body = ErrorBody { code: ErrorCode(code), message: &msg };
        let mut out = Vec::new();
        body.encode(&mut out);
        prop_assert_eq!(ErrorBody::decode(&out).unwrap(), body);
    }
}

#[test]
fn truncation_at_every_length_is_reported_not_panicked() {
    let frames = [
        OwnedFrame::Data {
            channel: 1,
            seq: 2,
            message: 3,
            order: Some(4),
            fragment: Some(Fragment { index: 1, count: 3 }),
            payload: vec![9; 40],
        },
        OwnedFrame::Ack {
            cumulative: 5,
            delay: 6,
            ranges: vec![SeqRange { start: 8, end: 10 }],
        },
    ];
    let bytes = write(Header::new(1, 2), &frames);
    for n in 0..bytes.len() {
        assert!(
            Datagram::decode(&bytes[..n]).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
    assert!(Datagram::decode(&bytes).is_ok());
}

#[test]
fn specific_rejections_have_specific_errors() {
    let good = write(Header::new(1, 2), &[OwnedFrame::Ping(1)]);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert_eq!(
        Datagram::decode(&bad_magic).unwrap_err(),
        DecodeError::BadMagic
    );
    let mut bad_version = good.clone();
    bad_version[2] = 9;
    assert_eq!(
        Datagram::decode(&bad_version).unwrap_err(),
        DecodeError::UnsupportedVersion(9)
    );
    let mut bad_flags = good.clone();
    bad_flags[3] = 0x80;
    assert_eq!(
        Datagram::decode(&bad_flags).unwrap_err(),
        DecodeError::UnknownFlags(0x80)
    );
    let header_only = &good[..mesh_wire::HEADER_LEN];
    // A header-only datagram fails its checksum (computed over the frames too) or is empty.
    assert!(Datagram::decode(header_only).is_err());
    assert_eq!(
        Frame::decode(&[0x7f]).unwrap_err(),
        DecodeError::UnknownFrame(0x7f)
    );
    // A data frame whose fragment index is not below its count.
    let mut d = vec![0x01, 0b10, 0];
    d.extend_from_slice(&[0; 8]);
    d.extend_from_slice(&5u32.to_le_bytes());
    d.extend_from_slice(&5u32.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        Frame::decode(&d).unwrap_err(),
        DecodeError::Invalid("fragment index/count")
    );
    // An ack claiming more ranges than allowed is refused before its ranges are read.
    let mut a = vec![0x02];
    a.extend_from_slice(&[0; 8]);
    a.push(200);
    assert_eq!(
        Frame::decode(&a).unwrap_err(),
        DecodeError::Invalid("ack range count")
    );
    assert_eq!(
        Envelope::decode(&[9, 0, 0]).unwrap_err(),
        DecodeError::UnknownKind(9)
    );
}

#[test]
fn an_opened_datagram_reads_its_frames_until_a_malformed_one() {
    let mut bytes = write(
        Header::new(3, 4),
        &[OwnedFrame::Ping(1), OwnedFrame::Pong(2)],
    );
    let clean = bytes.clone();
    // An unknown frame type, then a well-formed frame that must not be read.
    bytes.push(0xEE);
    bytes.extend_from_slice(&clean[mesh_wire::HEADER_LEN..]);
    mesh_wire::reseal(&mut bytes);
    let refused = Datagram::decode(&bytes).unwrap_err();
    assert_eq!(refused, DecodeError::UnknownFrame(0xEE));
    let opened = Datagram::open(&bytes, None, false).unwrap();
    let read: Vec<_> = opened.frames().collect();
    assert_eq!(
        read,
        [
            Ok(Frame::Ping { token: 1 }),
            Ok(Frame::Pong { token: 2 }),
            Err(DecodeError::UnknownFrame(0xEE)),
        ]
    );
    assert_eq!(opened.check().unwrap_err(), refused);
    // Well-formed: the same frames as the checked decode, which `check` returns.
    let opened = Datagram::open(&clean, None, false).unwrap();
    let read: Vec<Frame<'_>> = opened.frames().map(Result::unwrap).collect();
    let checked = opened.check().unwrap();
    assert_eq!(read, checked.frames().collect::<Vec<_>>());
    assert_eq!(checked.frame_count(), 2);
    // What the checked decode refuses before the frames, open refuses the same way.
    let mut noisy = clean.clone();
    noisy[mesh_wire::HEADER_LEN] ^= 0x40;
    assert_eq!(
        Datagram::open(&noisy, None, false).unwrap_err(),
        DecodeError::Checksum
    );
    let mut empty = write(Header::new(3, 4), &[OwnedFrame::Ping(1)]);
    empty.truncate(mesh_wire::HEADER_LEN);
    mesh_wire::reseal(&mut empty);
    assert_eq!(
        Datagram::open(&empty, None, false).unwrap_err(),
        DecodeError::Empty
    );
}

#[test]
fn empty_datagram_with_valid_checksum_is_rejected() {
    let mut buf = Vec::new();
    let w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
    let bytes = w.finish().to_vec();
    assert_eq!(Datagram::decode(&bytes).unwrap_err(), DecodeError::Empty);
}

#[test]
fn too_large_fields_are_refused_by_the_encoder() {
    let big = vec![0u8; 70_000];
    let f = Frame::Unreliable(UnreliableFrame { payload: &big });
    let mut out = Vec::new();
    assert!(f.encode(&mut out).is_err());
    assert!(out.is_empty(), "nothing written on error");
    let ranges = vec![SeqRange { start: 0, end: 1 }; MAX_ACK_RANGES + 1];
    let a = Frame::Ack(AckFrame {
        cumulative: 0,
        delay_micros: 0,
        ranges: AckRanges::List(&ranges),
    });
    assert!(a.encode(&mut out).is_err());
}

#[test]
fn a_datagram_without_a_checksum_passes_only_over_loopback() {
    let mut h = Header::new(5, 6);
    h.flags |= mesh_wire::FLAG_NO_CHECKSUM;
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new(&mut buf, h, 1200);
    w.push(&Frame::Ping { token: 9 }).unwrap();
    let bytes = w.finish().to_vec();
    assert_eq!(&bytes[20..24], &[0, 0, 0, 0], "no checksum written");
    let d = Datagram::decode_from(&bytes, None, true).unwrap();
    assert_eq!(d.header(), h);
    assert_eq!(d.frames().next(), Some(Frame::Ping { token: 9 }));
    assert_eq!(
        Datagram::decode(&bytes).unwrap_err(),
        DecodeError::Unchecked,
        "off loopback"
    );
    // The field must be zero: one encoding per datagram.
    let mut odd = bytes.clone();
    odd[21] = 1;
    assert_eq!(
        Datagram::decode_from(&odd, None, true).unwrap_err(),
        DecodeError::Checksum
    );
    // Without the flag, loopback changes nothing: the checksum is checked.
    let mut plain = Vec::new();
    let mut w = DatagramWriter::new(&mut plain, Header::new(5, 6), 1200);
    w.push(&Frame::Ping { token: 9 }).unwrap();
    let mut plain = w.finish().to_vec();
    plain[24] ^= 0x40;
    assert_eq!(
        Datagram::decode_from(&plain, None, true).unwrap_err(),
        DecodeError::Checksum
    );
}
