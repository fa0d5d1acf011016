//! The cluster key: sealed datagrams decode only under their key (or the previous one during a
//! rollover), any change to them is caught, and keyed and unkeyed nodes do not mix.

use mesh_wire::{
    ClusterKey, Datagram, DatagramWriter, DecodeError, Frame, Header, AUTH_TRAILER_LEN, FLAG_AUTH,
    HEADER_LEN,
};
use proptest::prelude::*;

fn sealed(key: &ClusterKey, pn: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new_authenticated(&mut buf, Header::new(5, 6), 1200);
    w.push(&Frame::Unreliable(mesh_wire::UnreliableFrame { payload }))
        .unwrap();
    w.finish_authenticated(pn, key).to_vec()
}

#[test]
fn sealed_datagrams_decode_under_their_key_only() {
    let k = ClusterKey::from_secret(b"k1");
    let other = ClusterKey::from_secret(b"k2");
    let d = sealed(&k, 77, b"hello");
    assert_eq!(d[3] & FLAG_AUTH, FLAG_AUTH);
    let got = Datagram::decode_with(&d, Some(&k)).unwrap();
    assert_eq!(got.packet_number(), Some(77));
    assert_eq!(
        got.frames().next(),
        Some(Frame::Unreliable(mesh_wire::UnreliableFrame {
            payload: b"hello"
        }))
    );
    assert_eq!(
        Datagram::decode_with(&d, Some(&other)).unwrap_err(),
        DecodeError::BadTag
    );
    // Keyed and unkeyed nodes reject each other's datagrams.
    assert_eq!(
        Datagram::decode(&d).unwrap_err(),
        DecodeError::Unauthenticated
    );
    let mut plain = Vec::new();
    let mut w = DatagramWriter::new(&mut plain, Header::new(5, 6), 1200);
    w.push(&Frame::Ping { token: 1 }).unwrap();
    let plain = w.finish().to_vec();
    assert_eq!(
        Datagram::decode_with(&plain, Some(&k)).unwrap_err(),
        DecodeError::Unauthenticated
    );
    // Room for the trailer is kept under the size limit.
    let mut buf = Vec::new();
    let w = DatagramWriter::new_authenticated(&mut buf, Header::new(5, 6), 100);
    assert_eq!(w.remaining(), 100 - HEADER_LEN - AUTH_TRAILER_LEN);
}

#[test]
fn rollover_accepts_the_previous_key_and_signs_with_the_new() {
    let old = ClusterKey::from_secret(b"old");
    let rolling = ClusterKey::from_secret(b"new").with_previous(b"old");
    let new = ClusterKey::from_secret(b"new");
    let from_old = sealed(&old, 1, b"x");
    assert!(Datagram::decode_with(&from_old, Some(&rolling)).is_ok());
    assert!(Datagram::decode_with(&from_old, Some(&new)).is_err());
    let from_rolling = sealed(&rolling, 2, b"x");
    assert!(Datagram::decode_with(&from_rolling, Some(&new)).is_ok());
    assert!(Datagram::decode_with(&from_rolling, Some(&old)).is_err());
    assert!(format!("{rolling:?}").contains("rollover: true"));
    assert!(
        !format!("{rolling:?}").contains("new"),
        "Debug shows no key material"
    );
}

proptest! {
    /// Any change to a sealed datagram, even with the checksum fixed up afterwards (what an
    /// attacker would do), is caught by the tag.
    #[test]
    fn any_change_is_caught(payload in prop::collection::vec(any::<u8>(), 0..200), pos in any::<usize>(), bit in 0u8..8) {
        let k = ClusterKey::from_secret(b"secret");
        let mut d = sealed(&k, 9, &payload);
        let pos = pos % d.len();
        prop_assume!(!(20..24).contains(&pos)); // the CRC field is recomputed below
        d[pos] ^= 1 << bit;
        // Recompute the CRC so only the tag stands between the attacker and the receiver.
        mesh_wire::reseal(&mut d);
        prop_assert!(Datagram::decode_with(&d, Some(&k)).is_err());
    }
}

#[test]
fn appended_datagrams_are_byte_for_byte_the_ones_written_alone() {
    let key = ClusterKey::from_secret(b"append");
    let frames = [Frame::Ping { token: 1 }, Frame::Ping { token: 2 }];
    // Written alone, each into its own buffer.
    let mut alone = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut buf = Vec::new();
        if i == 0 {
            let mut w = DatagramWriter::new(&mut buf, Header::new(3, 4), 1200);
            w.push(f).unwrap();
            alone.push(w.finish().to_vec());
        } else {
            let mut w = DatagramWriter::new_authenticated(&mut buf, Header::new(3, 4), 1200);
            w.push(f).unwrap();
            alone.push(w.finish_authenticated(9, &key).to_vec());
        }
    }
    // Back to back in one buffer.
    let mut batch = vec![0xAA; 3]; // whatever was there stays
    let mut w = DatagramWriter::append(&mut batch, Header::new(3, 4), 1200);
    w.push(&frames[0]).unwrap();
    assert_eq!(w.finish(), &alone[0][..]);
    let mut w = DatagramWriter::append_authenticated(&mut batch, Header::new(3, 4), 1200);
    w.push(&frames[1]).unwrap();
    assert_eq!(w.finish_authenticated(9, &key), &alone[1][..]);
    assert_eq!(&batch[..3], &[0xAA; 3]);
    assert_eq!(batch.len(), 3 + alone[0].len() + alone[1].len());
    let second = &batch[3 + alone[0].len()..];
    assert!(Datagram::decode_with(second, Some(&key)).is_ok());
}
