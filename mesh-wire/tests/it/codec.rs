//! The payload codec: round trips, strictness, and bounded allocation on hostile input.

use mesh_wire::{codec, CodecError};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Message {
    name: String,
    count: i64,
    tags: Vec<String>,
    values: BTreeMap<String, f64>,
    blob: Vec<u8>,
    maybe: Option<u32>,
}

fn message() -> impl Strategy<Value = Message> {
    (
        ".{0,32}",
        any::<i64>(),
        prop::collection::vec(".{0,8}", 0..5),
        prop::collection::btree_map(".{0,8}", -1e9f64..1e9, 0..5),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<Option<u32>>(),
    )
        .prop_map(|(name, count, tags, values, blob, maybe)| Message {
            name,
            count,
            tags,
            values,
            blob,
            maybe,
        })
}

proptest! {
    #[test]
    fn user_types_round_trip(m in message()) {
        let bytes = codec::encode(&m).unwrap();
        let back: Message = codec::decode(&bytes).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn arbitrary_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode::<Message>(&bytes);
        let _ = codec::decode::<String>(&bytes);
        let _ = codec::decode::<Vec<Vec<u8>>>(&bytes);
    }
}

/// A value whose serialization encodes another value (re-entering [`codec::encode`] on the
/// same thread, whose buffer is in use): both come out whole.
struct Nested(u32);

impl Serialize for Nested {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inner = codec::encode(&(self.0, "inner")).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&inner)
    }
}

#[test]
fn encode_is_exact_and_reentrant_before_and_after_a_large_value() {
    let m = Message {
        name: "n".into(),
        count: -3,
        tags: vec!["a".into()],
        values: BTreeMap::new(),
        blob: vec![9; 64],
        maybe: Some(1),
    };
    let mut direct = Vec::new();
    codec::encode_into(&m, &mut direct).unwrap();
    let a = codec::encode(&m).unwrap();
    assert_eq!(a, direct);
    assert_eq!(a.capacity(), a.len(), "one allocation of the exact length");
    // A large value (its buffer handed over, not kept), then a small one: each is exactly
    // itself (nothing left over from the other).
    let big = codec::encode(&vec![1u8; 1 << 20]).unwrap();
    assert_eq!(codec::decode::<Vec<u8>>(&big).unwrap().len(), 1 << 20);
    let again = codec::encode(&m).unwrap();
    assert_eq!(again, direct);
    assert_eq!(again.capacity(), again.len());
    // Re-entered: the outer value holds the inner one's encoding.
    let outer = codec::encode(&Nested(5)).unwrap();
    let inner: Vec<u8> = codec::decode(&outer).unwrap();
    assert_eq!(
        codec::decode::<(u32, String)>(&inner).unwrap(),
        (5, "inner".to_owned())
    );
}

#[test]
fn encode_into_appends() {
    let mut buf = vec![1, 2, 3];
    let n = codec::encode_into(&42u32, &mut buf).unwrap();
    assert_eq!(buf.len(), 3 + n);
    assert_eq!(codec::decode::<u32>(&buf[3..]).unwrap(), 42);
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = codec::encode(&7u8).unwrap();
    bytes.push(0);
    assert!(matches!(
        codec::decode::<u8>(&bytes),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn a_lying_length_is_refused_before_allocating() {
    // bincode's standard varint: 0xFD then a u64 length. Claim an 8 EiB string in 9 bytes,
    // and a 3 GiB one; both must fail without trying to allocate what they claim.
    let mut huge = vec![0xFD];
    huge.extend_from_slice(&(1u64 << 63).to_le_bytes());
    assert!(codec::decode::<String>(&huge).is_err());
    assert!(codec::decode::<Vec<u8>>(&huge).is_err());
    let mut big = vec![0xFD];
    big.extend_from_slice(&(3u64 << 30).to_le_bytes());
    assert!(codec::decode::<Vec<u8>>(&big).is_err());
    assert!(codec::decode::<Vec<String>>(&big).is_err());
}
