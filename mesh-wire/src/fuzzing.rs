//! Entry points for the `fuzz/` targets, kept beside the code they exercise.
//!
//! Not part of the public API: hidden from the docs and free to change.

use crate::bytes::Reader;
use crate::{
    AckFrame, AckRanges, CloseFrame, DataFrame, Datagram, DatagramWriter, Envelope, ErrorBody,
    Fragment, Frame, Header, SeqRange, UnreliableFrame, MAX_ACK_RANGES, MAX_DATAGRAM_LEN,
};

/// Decodes arbitrary bytes as a datagram. Panics (so the fuzzer reports it) if a successful
/// decode does not re-encode to exactly the same bytes.
pub fn decode_datagram(data: &[u8]) {
    if let Ok(d) = Datagram::decode(data) {
        assert_eq!(d.len(), data.len(), "a datagram uses all of its input");
        let frames: Vec<Frame<'_>> = d.frames().collect();
        assert_eq!(frames.len(), d.frame_count());
        let mut buf = Vec::with_capacity(data.len());
        let mut w = DatagramWriter::new(&mut buf, d.header(), MAX_DATAGRAM_LEN);
        for f in &frames {
            w.push(f).expect("a decoded frame re-encodes");
        }
        assert_eq!(w.finish(), data, "re-encoding differs from the input");
    }
    // As if it came over loopback: a datagram without a checksum passes too, and re-encodes
    // exactly (the flag is in its header).
    if let Ok(d) = Datagram::decode_from(data, None, true) {
        let frames: Vec<Frame<'_>> = d.frames().collect();
        let mut buf = Vec::with_capacity(data.len());
        let mut w = DatagramWriter::new(&mut buf, d.header(), MAX_DATAGRAM_LEN);
        for f in &frames {
            w.push(f).expect("a decoded frame re-encodes");
        }
        assert_eq!(w.finish(), data, "re-encoding differs from the input");
    }
    // Read once, as a receiver that acts on each frame reads them: the checked decode's frames
    // when it passes, and when it refuses the datagram for a frame, that frame's error, last.
    for loopback in [false, true] {
        let checked = Datagram::decode_from(data, None, loopback);
        match Datagram::open(data, None, loopback) {
            Ok(opened) => {
                assert_eq!(opened.len(), data.len());
                let read: Vec<_> = opened.frames().collect();
                match &checked {
                    Ok(d) => {
                        let frames: Vec<Frame<'_>> = d.frames().collect();
                        let read: Vec<Frame<'_>> = read
                            .into_iter()
                            .map(|f| f.expect("a checked datagram's frames read"))
                            .collect();
                        assert_eq!(read, frames);
                    }
                    Err(e) => {
                        let (last, before) = read.split_last().expect("refused for a frame");
                        assert_eq!(last.as_ref().err(), Some(e), "the same error, last");
                        assert!(before.iter().all(Result::is_ok));
                    }
                }
                assert_eq!(
                    opened.check().map(|d| d.frame_count()).ok(),
                    checked.map(|d| d.frame_count()).ok()
                );
            }
            Err(e) => assert_eq!(checked.err(), Some(e), "open refuses what decode refuses"),
        }
    }
    // The same bytes to a receiver with a cluster key: only a valid tag passes (the fuzzer
    // cannot forge one, but every rejection path runs), and what passes re-encodes exactly.
    let key = crate::ClusterKey::from_secret(b"fuzz");
    if let Ok(d) = Datagram::decode_with(data, Some(&key)) {
        let frames: Vec<Frame<'_>> = d.frames().collect();
        let mut buf = Vec::with_capacity(data.len());
        let mut w = DatagramWriter::new_authenticated(&mut buf, d.header(), MAX_DATAGRAM_LEN);
        for f in &frames {
            w.push(f).expect("a decoded frame re-encodes");
        }
        let pn = d
            .packet_number()
            .expect("an authenticated datagram has a number");
        assert_eq!(w.finish_authenticated(pn, &key), data);
    }
    // Frame-level and envelope-level decoders on the same bytes.
    if let Ok((frame, used)) = Frame::decode(data) {
        assert!(used <= data.len());
        assert_eq!(frame.encoded_len(), used);
        let mut out = Vec::new();
        frame.encode(&mut out).expect("a decoded frame re-encodes");
        assert_eq!(out, &data[..used]);
    }
    if let Ok(env) = Envelope::decode(data) {
        let mut out = Vec::new();
        env.encode(&mut out);
        assert_eq!(out, data);
    }
    if let Ok(body) = ErrorBody::decode(data) {
        let mut out = Vec::new();
        body.encode(&mut out);
        assert_eq!(out, data);
    }
}

/// Builds frames from arbitrary bytes, writes them into a datagram and checks that decoding
/// gives them back unchanged.
pub fn roundtrip(data: &[u8]) {
    let mut r = Reader::new(data);
    let header = Header::new(r.u64().unwrap_or(1), r.u64().unwrap_or(0));
    let mut ranges: Vec<Vec<SeqRange>> = Vec::new();
    let mut specs = Vec::new();
    while let Ok(kind) = r.u8() {
        let spec = match kind % 6 {
            0 => {
                let flags = r.u8().unwrap_or(0);
                let count = r.u32().unwrap_or(2).max(2);
                Spec::Data {
                    channel: r.u8().unwrap_or(0),
                    seq: r.u32().unwrap_or(0),
                    message: r.u32().unwrap_or(0),
                    order: (flags & 1 != 0).then(|| r.u32().unwrap_or(0)),
                    fragment: (flags & 2 != 0).then(|| Fragment {
                        index: r.u32().unwrap_or(0) % count,
                        count,
                    }),
                    len: r.u16().unwrap_or(0) as usize % 2048,
                }
            }
            1 => {
                let n = r.u8().unwrap_or(0) as usize % (MAX_ACK_RANGES + 1);
                let list = (0..n)
                    .map(|_| SeqRange {
                        start: r.u32().unwrap_or(0),
                        end: r.u32().unwrap_or(0),
                    })
                    .collect();
                ranges.push(list);
                Spec::Ack {
                    cumulative: r.u32().unwrap_or(0),
                    delay: r.u32().unwrap_or(0),
                    ranges: ranges.len() - 1,
                }
            }
            2 => Spec::Unreliable {
                len: r.u16().unwrap_or(0) as usize % 2048,
            },
            3 => Spec::Ping(r.u64().unwrap_or(0)),
            4 => Spec::Pong(r.u64().unwrap_or(0)),
            _ => Spec::Close(r.u8().unwrap_or(0)),
        };
        specs.push(spec);
        if specs.len() >= 64 {
            break;
        }
    }
    let payload: Vec<u8> = (0..2048u32).map(|i| (i * 31 + 7) as u8).collect();
    let frames: Vec<Frame<'_>> = specs
        .iter()
        .map(|s| match *s {
            Spec::Data {
                channel,
                seq,
                message,
                order,
                fragment,
                len,
            } => Frame::Data(DataFrame {
                lazy_ack: seq & 1 == 1,
                channel,
                seq,
                message,
                order,
                fragment,
                payload: &payload[..len],
            }),
            Spec::Ack {
                cumulative,
                delay,
                ranges: i,
            } => Frame::Ack(AckFrame {
                cumulative,
                delay_micros: delay,
                ranges: AckRanges::List(&ranges[i]),
            }),
            Spec::Unreliable { len } => Frame::Unreliable(UnreliableFrame {
                payload: &payload[..len],
            }),
            Spec::Ping(token) => Frame::Ping { token },
            Spec::Pong(token) => Frame::Pong { token },
            Spec::Close(reason) => Frame::Close(CloseFrame { reason }),
        })
        .collect();
    let mut buf = Vec::new();
    let mut w = DatagramWriter::new(&mut buf, header, MAX_DATAGRAM_LEN);
    let mut written = Vec::new();
    for f in &frames {
        if w.push(f).is_ok() {
            written.push(f.clone());
        }
    }
    if w.is_empty() {
        return;
    }
    let bytes = w.finish().to_vec();
    let d = Datagram::decode(&bytes).expect("an encoded datagram decodes");
    assert_eq!(d.header(), header);
    let back: Vec<Frame<'_>> = d.frames().collect();
    assert_eq!(back, written);
}

enum Spec {
    Data {
        channel: u8,
        seq: u32,
        message: u32,
        order: Option<u32>,
        fragment: Option<Fragment>,
        len: usize,
    },
    Ack {
        cumulative: u32,
        delay: u32,
        ranges: usize,
    },
    Unreliable {
        len: usize,
    },
    Ping(u64),
    Pong(u64),
    Close(u8),
}
