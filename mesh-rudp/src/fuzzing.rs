//! Entry point for the `rudp_endpoint` fuzz target, beside the code it exercises.
//!
//! Not part of the public API: hidden from the docs and free to change.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use mesh_wire::{DatagramWriter, Header};

use crate::{Delivery, Endpoint, EndpointConfig, StartTime};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i % 8)), 5000)
}

/// Interprets `data` as a script of operations on two endpoints (A at index 0, B at 1, and
/// strangers at other addresses): raw datagrams, datagrams with valid framing around arbitrary
/// frame bytes, sends, timer ticks, and delivery (or loss) of what each endpoint transmits.
/// Panics if an invariant breaks: caps exceeded, or anything in the endpoint panics.
pub fn endpoint(data: &[u8]) {
    // The first byte's low bit runs both endpoints with a cluster key; the script then seals
    // its framed datagrams with that key and numbers of its choosing (replays included).
    let key = mesh_wire::ClusterKey::from_secret(b"fuzz");
    let keyed = data.first().is_some_and(|b| b & 1 == 1);
    let config = EndpointConfig::default()
        .cluster_key(keyed.then(|| key.clone()))
        .max_peers(4)
        .max_message_size(64 << 10)
        .reassembly_per_peer(128 << 10)
        .reassembly_total(256 << 10)
        .send_queue_per_peer(256 << 10)
        .max_incoming_messages(64)
        .clone();
    let start = StartTime::read();
    let mut now = start.now;
    let mut eps = [
        Endpoint::new(config.clone().seed(Some(1)).clone(), start).expect("valid"),
        Endpoint::new(config.clone().seed(Some(2)).clone(), start).expect("valid"),
    ];
    let mut buf = Vec::new();
    let mut wrapped = Vec::new();
    let mut i = 0;
    let byte = |i: &mut usize| {
        let b = data.get(*i).copied().unwrap_or(0);
        *i += 1;
        b
    };
    let mut steps = 0;
    while i < data.len() && steps < 2000 {
        steps += 1;
        let op = byte(&mut i);
        let target = (op >> 7) as usize;
        match op & 0x7 {
            0 | 1 => {
                // Raw bytes from some address.
                let from = addr(byte(&mut i));
                let len = byte(&mut i) as usize * 4;
                i = i.min(data.len());
                let end = (i + len).min(data.len());
                eps[target].handle_datagram(now, from, &data[i..end]);
                i = end;
            }
            2 => {
                // Arbitrary frame bytes behind a valid header and checksum.
                let from = addr(byte(&mut i));
                let src = u64::from(byte(&mut i)) + 1;
                let dst = u64::from(byte(&mut i) % 2);
                let len = byte(&mut i) as usize * 2;
                i = i.min(data.len());
                let end = (i + len).min(data.len());
                let w = DatagramWriter::new(&mut wrapped, Header::new(src, dst), 65_507);
                w.finish();
                wrapped.extend_from_slice(&data[i..end]);
                i = end;
                if keyed {
                    // Number it (from the script: replays and ancient numbers happen), seal it.
                    wrapped[3] |= mesh_wire::FLAG_AUTH;
                    let pn = u64::from(byte(&mut i)) << 40 | u64::from(byte(&mut i));
                    wrapped.extend_from_slice(&pn.to_le_bytes());
                    key.seal(&mut wrapped);
                }
                mesh_wire::reseal(&mut wrapped);
                eps[target].handle_datagram(now, from, &wrapped);
            }
            3 => {
                let size = u32::from(byte(&mut i)) * 300;
                let ordered = byte(&mut i);
                let delivery = if ordered % 2 == 0 {
                    Delivery::Unordered
                } else {
                    Delivery::Ordered {
                        channel: ordered % 4,
                    }
                };
                let to = addr(1 - target as u8);
                let _ = eps[target].send_reliable(
                    now,
                    to,
                    Bytes::from(vec![7u8; size as usize]),
                    delivery,
                );
                let _ = eps[target].send_unreliable(now, to, Bytes::from_static(b"u"));
            }
            4 => {
                now += Duration::from_millis(u64::from(byte(&mut i)) * 10);
                for ep in &mut eps {
                    ep.handle_timeout(now);
                }
            }
            _ => {
                // Carry transmits between A and B, dropping by a mask.
                let mask = byte(&mut i);
                for k in 0..2 {
                    let mut n = 0u32;
                    while let Some(t) = eps[k].poll_transmit(now, &mut buf) {
                        n += 1;
                        if mask & (1 << (n % 8)) == 0 && t.destination == addr(1 - k as u8) {
                            let bytes = buf[..t.size].to_vec();
                            eps[1 - k].handle_datagram(now, addr(k as u8), &bytes);
                        }
                        if n > 10_000 {
                            break;
                        }
                    }
                }
            }
        }
        for ep in &mut eps {
            let s = ep.stats();
            assert!(s.peers <= 4, "peer cap broken");
            assert!(s.reassembly_bytes <= 256 << 10, "reassembly cap broken");
            let mut events = 0;
            while ep.poll_event().is_some() {
                events += 1;
                assert!(events < 100_000, "event flood");
            }
        }
    }
}
