//! The Node original's wire: its golden vectors (produced by the real mesh-link 0.13.6 with
//! deterministic ids, `../shared/reference/node-mesh-link-0.13.6.md` §3.9) byte for byte, and
//! what the original crashed on refused with an error.

use std::time::{Duration, Instant};

use mesh_wire::compat::*;
use proptest::prelude::*;
use serde_json::json;

/// The reference's deterministic id: 16 copies of `b`, UUIDv4 bits set.
fn id(b: u8) -> Id {
    let mut v = [b; 16];
    v[6] = (b & 0x0f) | 0x40;
    v[8] = (b & 0x3f) | 0x80;
    v
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("hex")
}

/// `{"data":…,"handlerId":n,"nodes":[]}` as the original writes it.
fn envelope_json(data: serde_json::Value, handler: u16) -> Vec<u8> {
    serde_json::to_vec(&Envelope::new(data, handler)).unwrap()
}

#[test]
fn a_request_is_byte_for_byte_the_originals() {
    let payload = envelope_json(json!({"message": "hello"}), 1);
    assert_eq!(
        payload,
        br#"{"data":{"message":"hello"},"handlerId":1,"nodes":[]}"#
    );
    let packet = Packet {
        kind: PacketKind::Request,
        rid: [0xab; 16],
        handler: 1,
        payload: &payload,
    }
    .encode();
    let chunks = split(id(0x11), &packet, SPLIT_SIZE).unwrap();
    assert_eq!(chunks.len(), 1);
    let datagram = Datagram::Send {
        id: id(0x22),
        chunk: &chunks[0],
    }
    .encode();
    let want = unhex(concat!(
        "012222222222224222a222222222222222111111111111411191111111111111110000004800000a",
        "abababababababababababababababab",
        "00017b2264617461223a7b226d657373616765223a2268656c6c6f227d2c2268616e646c65724964",
        "223a312c226e6f646573223a5b5d7d",
    ));
    assert_eq!(hex::encode(&datagram), hex::encode(&want));

    // And read back through every layer.
    let Ok(Datagram::Send { id: rid, chunk }) = Datagram::decode(&want) else {
        panic!("a reliable datagram")
    };
    assert_eq!(rid, id(0x22));
    let c = Chunk::decode(chunk).unwrap();
    assert_eq!((c.message, c.total, c.index), (id(0x11), 0x48, 0));
    let mut r = Reassembly::new(Limits::default());
    let whole = r.push(1u8, c, Instant::now()).unwrap().unwrap();
    let p = Packet::decode(&whole).unwrap();
    assert_eq!(
        (p.kind, p.rid, p.handler),
        (PacketKind::Request, [0xab; 16], 1)
    );
    let e: Envelope = serde_json::from_slice(p.payload).unwrap();
    assert_eq!(e, Envelope::new(json!({"message": "hello"}), 1));
}

#[test]
fn the_ack_response_error_usend_and_ping_vectors() {
    let ack = Datagram::Ack {
        ack_id: id(0x33),
        acked: id(0x22),
    }
    .encode();
    assert_eq!(
        ack,
        unhex("02 3333333333334333b333333333333333 2222222222224222a222222222222222")
    );
    assert_eq!(
        Datagram::decode(&ack).unwrap(),
        Datagram::Ack {
            ack_id: id(0x33),
            acked: id(0x22)
        }
    );

    let answer = pack(&json!({"message": "hello world"}));
    let packet = Packet {
        kind: PacketKind::Response,
        rid: [0xab; 16],
        handler: 1,
        payload: &answer,
    }
    .encode();
    let chunk = &split(id(0x44), &packet, SPLIT_SIZE).unwrap()[0];
    let datagram = Datagram::Send {
        id: id(0x55),
        chunk,
    }
    .encode();
    assert_eq!(
        hex::encode(datagram),
        concat!(
            "0155555555555545559555555555555555444444444444444484444444444444440000002c000014",
            "abababababababababababababababab",
            "00017b226d657373616765223a2268656c6c6f20776f726c64227d"
        )
    );

    let error = Packet {
        kind: PacketKind::Response,
        rid: [0xab; 16],
        handler: 1,
        payload: &pack_error("SyncRejected"),
    }
    .encode();
    let mut want = unhex("14 abababababababababababababababab 0001");
    want.extend_from_slice(br#"{"_dt":253,"_d":"SyncRejected"}"#);
    assert_eq!(error, want);
    let p = Packet::decode(&error).unwrap();
    assert_eq!(unpack(p.payload), Unpacked::Error("SyncRejected".into()));

    let usend = Usend::new(NO_RESPONSE, Envelope::new(json!({"message": "hello"}), 1)).encode();
    assert_eq!(
        hex::encode(&usend),
        "007b226964223a223030303030303030303030303030303030303030303030303030303030303030222c\
         2268616e646c65724964223a312c2264617461223a7b2264617461223a7b226d657373616765223a22\
         68656c6c6f227d2c2268616e646c65724964223a312c226e6f646573223a5b5d7d7d"
    );
    let Ok(Datagram::Usend(body)) = Datagram::decode(&usend) else {
        panic!("a usend")
    };
    let u = Usend::decode(body).unwrap();
    assert_eq!(u.rid().unwrap(), NO_RESPONSE);
    assert_eq!(u.data.data, json!({"message": "hello"}));

    assert_eq!(RAW_PING, unhex("70696e67"));
    assert_eq!(RAW_PONG, unhex("504f4e470a"));
}

#[test]
fn fragmentation_at_split_size_16_matches_and_reassembles_in_any_order() {
    let mut packet = vec![0x0a];
    packet.extend_from_slice(&NO_RESPONSE);
    packet.extend_from_slice(&2u16.to_be_bytes());
    packet.extend_from_slice(br#"{"data":1,"handlerId":2,"nodes":[]}"#);
    assert_eq!(packet.len(), 0x36);
    let chunks = split(id(0x66), &packet, 16).unwrap();
    let want = [
        "6666666666664666a666666666666666 00000036 0000 0a000000000000000000000000000000",
        "6666666666664666a666666666666666 00000036 0001 0000027b2264617461223a312c226861",
        "6666666666664666a666666666666666 00000036 0002 6e646c65724964223a322c226e6f6465",
        "6666666666664666a666666666666666 00000036 0003 73223a5b5d7d",
    ];
    assert_eq!(chunks.len(), want.len());
    for (c, w) in chunks.iter().zip(want) {
        assert_eq!(hex::encode(c), hex::encode(unhex(w)));
    }
    // Reversed, with a duplicate: complete once, at the last missing piece. (A duplicate
    // after completion would begin the message again, to expire; the reliable layer's
    // de-duplication keeps it from coming.)
    let mut r = Reassembly::new(Limits::default());
    let now = Instant::now();
    let mut done = Vec::new();
    for i in [3, 2, 2, 1, 0] {
        let c = &chunks[i];
        if let Some(whole) = r.push("a", Chunk::decode(c).unwrap(), now).unwrap() {
            done.push(whole);
        }
    }
    assert_eq!(done, vec![packet]);
    assert!(r.is_empty());
    assert_eq!(r.bytes(), 0);
}

#[test]
fn what_crashed_the_original_is_an_error() {
    // An empty datagram, a short chunk, a short packet, an unknown flag or kind.
    assert!(matches!(
        Datagram::decode(&[]),
        Err(CompatError::Truncated { .. })
    ));
    assert!(matches!(
        Datagram::decode(&[0x01; 10]),
        Err(CompatError::Truncated { .. })
    ));
    assert_eq!(Datagram::decode(&[0x02; 40]), Err(CompatError::BadAck(40)));
    assert!(matches!(
        Datagram::decode(&[0x07; 40]),
        Err(CompatError::UnknownKind { value: 7, .. })
    ));
    assert!(matches!(
        Chunk::decode(&[0; 21]),
        Err(CompatError::Truncated { .. })
    ));
    assert!(matches!(
        Packet::decode(&[0x0a; 18]),
        Err(CompatError::Truncated { .. })
    ));
    assert!(matches!(
        Packet::decode(&[0x0b; 30]),
        Err(CompatError::UnknownKind { value: 0x0b, .. })
    ));
    // A usend that is not an object with a hex id.
    for bad in [
        &b"[]"[..],
        br#"{"id":5,"handlerId":1,"data":{}}"#,
        br#"{"id":"zz","handlerId":1,"data":{"handlerId":1}}"#,
    ] {
        assert!(
            Usend::decode(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn chunk(message: Id, total: u32, index: u16, data: &[u8]) -> Vec<u8> {
    Chunk {
        message,
        total,
        index,
        data,
    }
    .encode()
}

#[test]
fn reassembly_is_bounded_and_keyed_by_sender() {
    let mut limits = Limits::default();
    limits.max_message = 1000;
    limits.max_partial = 4;
    limits.max_partial_per_sender = 2;
    limits.max_bytes = 250;
    let mut r = Reassembly::new(limits);
    let now = Instant::now();
    let push = |r: &mut Reassembly<&str>, from, bytes: &[u8]| {
        r.push(from, Chunk::decode(bytes).unwrap(), now)
    };
    // The declared length is checked before anything is held (the original took 4 GiB).
    assert!(matches!(
        push(&mut r, "a", &chunk([1; 16], 1001, 0, b"x")),
        Err(CompatError::TooLarge { .. })
    ));
    // Per sender, then in all.
    assert_eq!(
        push(&mut r, "a", &chunk([1; 16], 100, 0, &[1; 10])),
        Ok(None)
    );
    assert_eq!(
        push(&mut r, "a", &chunk([2; 16], 100, 0, &[1; 10])),
        Ok(None)
    );
    assert!(matches!(
        push(&mut r, "a", &chunk([3; 16], 100, 0, &[1; 10])),
        Err(CompatError::NoRoom(_))
    ));
    // Another sender's chunk under the same message id is its own message.
    assert_eq!(
        push(&mut r, "b", &chunk([1; 16], 100, 1, &[2; 90])),
        Ok(None)
    );
    assert_eq!(r.len(), 3);
    // Bytes: 110 held; 150 more would pass 250.
    assert!(matches!(
        push(&mut r, "b", &chunk([9; 16], 200, 0, &[1; 150])),
        Err(CompatError::NoRoom(_))
    ));
    // A contradiction drops the message: another total, other bytes in a held slot, too many.
    assert!(matches!(
        push(&mut r, "a", &chunk([1; 16], 99, 1, &[1; 10])),
        Err(CompatError::Inconsistent(_))
    ));
    assert!(matches!(
        push(&mut r, "a", &chunk([2; 16], 100, 0, &[7; 10])),
        Err(CompatError::Inconsistent(_))
    ));
    assert_eq!(r.len(), 1);
    assert_eq!(r.bytes(), 90);
    assert!(matches!(
        push(&mut r, "b", &chunk([1; 16], 100, 2, &[2; 11])),
        Err(CompatError::Inconsistent(_))
    ));
    assert!(r.is_empty());
    // Complete by bytes but with a hole in the indexes (the original crashed): an error.
    assert_eq!(
        push(&mut r, "c", &chunk([5; 16], 20, 0, &[1; 10])),
        Ok(None)
    );
    assert!(matches!(
        push(&mut r, "c", &chunk([5; 16], 20, 2, &[1; 10])),
        Err(CompatError::Inconsistent(_))
    ));
    // Expiry and a sender's end free what they held.
    assert_eq!(
        push(&mut r, "d", &chunk([6; 16], 20, 0, &[1; 10])),
        Ok(None)
    );
    assert_eq!(
        push(&mut r, "e", &chunk([6; 16], 20, 0, &[1; 10])),
        Ok(None)
    );
    r.forget(&"d");
    assert_eq!(r.len(), 1);
    assert_eq!(r.expire(now + Duration::from_millis(1)), 1);
    assert!(r.is_empty());
    assert_eq!(r.bytes(), 0);
}

#[test]
fn the_payload_codec_follows_the_original() {
    for falsy in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
        assert!(pack(&falsy).is_empty(), "{falsy}");
    }
    assert_eq!(unpack(&[]), Unpacked::Empty);
    assert_eq!(pack(&json!([1, "a"])), br#"[1,"a"]"#);
    assert_eq!(unpack(br#"{"a":1}"#), Unpacked::Json(json!({"a": 1})));
    // Not JSON: the bytes as they came.
    assert_eq!(
        unpack(b"\x00\xffraw"),
        Unpacked::Bytes(b"\x00\xffraw".to_vec())
    );
    // Buffers, tagged at the top and inside.
    let tagged = buffer_value(b"\x01\x02\x03");
    assert_eq!(tagged, json!({"_dt": 254, "_d": "AQID"}));
    assert_eq!(
        unpack(&serde_json::to_vec(&tagged).unwrap()),
        Unpacked::Bytes(vec![1, 2, 3])
    );
    let Unpacked::Json(v) = unpack(br#"{"blob":{"_dt":254,"_d":"AQID"}}"#) else {
        panic!("json")
    };
    assert_eq!(buffer_of(&v["blob"]), Some(vec![1, 2, 3]));
    assert_eq!(buffer_of(&json!({"_dt": 254, "_d": "not base64!"})), None);
}

proptest! {
    /// Any packet, split at any size, reassembles from its chunks in any order.
    #[test]
    fn split_then_reassemble(
        payload in proptest::collection::vec(any::<u8>(), 0..3000),
        split_size in 1usize..1500,
        seed in any::<u64>(),
    ) {
        let chunks = split([7; 16], &payload, split_size).unwrap();
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..order.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut r = Reassembly::new(Limits::default());
        let mut out = None;
        for (n, &i) in order.iter().enumerate() {
            let got = r.push(0u8, Chunk::decode(&chunks[i]).unwrap(), Instant::now()).unwrap();
            if n + 1 < order.len() { prop_assert!(got.is_none()); } else { out = got; }
        }
        prop_assert_eq!(out, Some(payload));
        prop_assert!(r.is_empty());
    }

    /// Arbitrary bytes through every decoder: errors, never a panic; what decodes re-encodes
    /// to the same bytes.
    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(d) = Datagram::decode(&b) {
            prop_assert_eq!(d.encode(), b.clone());
        }
        if let Ok(c) = Chunk::decode(&b) {
            prop_assert_eq!(c.encode(), b.clone());
        }
        if let Ok(p) = Packet::decode(&b) {
            prop_assert_eq!(p.encode(), b.clone());
        }
        let _ = Usend::decode(&b);
        let _ = unpack(&b);
    }
}
