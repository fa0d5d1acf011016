//! The socket: how it is set up, and the system calls that move datagrams (GSO and
//! scatter-gather sends, `recvmmsg`/GRO reads), with the grouping decided in [`batch`].

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use super::{batch, Shared, State};
use crate::EndpointConfig;

/// Bytes of one receive slot: room for a GRO-coalesced run of datagrams.
pub(super) const RECV_SLOT: usize = 65_536;
/// Most datagrams gathered before they are handed to the socket.
pub(super) const SEND_BATCH: usize = 256;
/// Most bytes of one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// Most datagram runs held for a socket that would block.
const MAX_BLOCKED_TX: usize = 4096;

/// A run of equal-sized datagrams to one destination (the last may be shorter): one GSO send.
#[derive(Debug)]
pub(super) struct Run {
    to: SocketAddr,
    bytes: Vec<u8>,
    segment: usize,
}

/// The most bytes a sender keeps unacknowledged toward a peer, given the receive buffer the
/// kernel granted this socket (`granted`, as `SO_RCVBUF` reads back): three quarters of it,
/// the rest left for the kernel's per-datagram bookkeeping, which it counts against the same
/// buffer. A sender that never has more in flight than the receiver's socket can queue cannot
/// overflow it, however slowly the receiver reads: TCP's receive window, for a receiver that
/// is always reading. Peers of one mesh run alike, so our buffer stands for theirs. Never
/// below four of the largest datagrams, so a tiny buffer slows a transfer rather than stalls it.
pub(super) fn receive_window(granted: usize, config: &EndpointConfig) -> usize {
    let largest = config.largest_mtu();
    (granted / 4 * 3).max(4 * largest)
}

pub(super) fn new_socket(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps these; asking for more is harmless.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    // Nonblocking: set where every socket the transport takes is registered.
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// quinn-udp asks the kernel for a receive timestamp, the TOS byte and the destination address
/// of every datagram; the driver reads none of them, and each costs the kernel a control message
/// per datagram (the timestamp, a clock read too). Turned off where the OS allows; GRO stays.
#[cfg(target_os = "linux")]
pub(super) fn quiet_ancillary_data(socket: &super::socket::Raw, local: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    let off = |r: nix::Result<()>| {
        if let Err(e) = r {
            debug!(error = %e, "ancillary data left on");
        }
    };
    off(setsockopt(socket, sockopt::ReceiveTimestampns, &false));
    if local.is_ipv4() {
        off(setsockopt(socket, sockopt::IpRecvTos, &false));
        off(setsockopt(socket, sockopt::Ipv4PacketInfo, &false));
    } else {
        off(setsockopt(socket, sockopt::Ipv6RecvTClass, &false));
        off(setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false));
        // Set for the IPv4-mapped side of a dual-stack socket; refused on a v6-only one.
        let _ = setsockopt(socket, sockopt::IpRecvTos, &false);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn quiet_ancillary_data(_: &super::socket::Raw, _: SocketAddr) {}

/// Hands every datagram the endpoint has ready to the socket, runs of same-sized datagrams to
/// one destination as one GSO send.
pub(super) fn transmit(shared: &Shared, st: &mut State, now: Option<std::time::Instant>) {
    if !st.endpoint.has_transmit() {
        return;
    }
    let now = now.unwrap_or_else(|| Instant::now().into_std());
    let max_segments = shared.udp.max_gso_segments().max(1);
    loop {
        let State {
            endpoint,
            out,
            out_meta,
            out_heads,
            out_tails,
            blocked_tx,
            ..
        } = &mut *st;
        out.clear();
        out_meta.clear();
        out_heads.clear();
        out_tails.clear();
        while out_meta.len() < SEND_BATCH {
            let mut tail = None;
            let t = if GATHER {
                endpoint.poll_transmit_gather(now, out, &mut tail)
            } else {
                endpoint.poll_transmit_append(now, out)
            };
            let Some(t) = t else {
                break;
            };
            out_meta.push((t.destination, t.size + tail.as_ref().map_or(0, Bytes::len)));
            out_heads.push(t.size);
            out_tails.push(tail);
            if t.probe {
                // Last in the batch, so no GSO run starts with it: a probe larger than the
                // link allows must be refused alone.
                break;
            }
        }
        if out_meta.is_empty() {
            return;
        }
        let mut offset = 0;
        let mut i = 0;
        while i < out_meta.len() {
            let (to, segment) = out_meta[i];
            let (j, len) = batch::run_end(out_meta, i, max_segments, MAX_GSO_BYTES);
            let heads: usize = out_heads[i..j].iter().sum();
            if MMSG && j == i + 1 && blocked_tx.is_empty() {
                // Lone datagrams to several destinations (probes, acknowledgements, a
                // fan-out): one `sendmmsg` for all that follow one another.
                let (end, bytes) =
                    batch::lone_end(out_meta, out_heads, i, max_segments, MAX_GSO_BYTES);
                if end > i + 1 {
                    let lone = Batch {
                        meta: &out_meta[i..end],
                        heads: &out_heads[i..end],
                        tails: &out_tails[i..end],
                        bytes: &out[offset..offset + bytes],
                    };
                    send_lone(shared, endpoint, blocked_tx, &lone, now);
                    offset += bytes;
                    i = end;
                    continue;
                }
            }
            let gathered = out_tails[i..j].iter().any(Option::is_some);
            let gso = (j - i > 1).then_some(segment);
            let contiguous = || {
                contiguous(
                    &out[offset..offset + heads],
                    &out_heads[i..j],
                    &out_tails[i..j],
                    len,
                )
            };
            if blocked_tx.is_empty() {
                let sent = if gathered {
                    send_gathered(
                        shared,
                        to,
                        &out[offset..offset + heads],
                        &out_heads[i..j],
                        &out_tails[i..j],
                        gso,
                    )
                } else {
                    send_run(shared, to, &out[offset..offset + len], gso)
                };
                match sent {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        endpoint.count_held_send();
                        blocked_tx.push_back(Run {
                            to,
                            bytes: contiguous(),
                            segment,
                        });
                    }
                    Err(e) if too_large(&e) => endpoint.path_refused(now, to, segment),
                    // A send error is like a lost datagram: the protocol recovers or reports.
                    Err(e) => debug!(%to, error = %e, "send failed"),
                }
            } else if blocked_tx.len() < MAX_BLOCKED_TX {
                blocked_tx.push_back(Run {
                    to,
                    bytes: contiguous(),
                    segment,
                });
            }
            offset += heads;
            i = j;
        }
    }
}

/// The datagrams of a batch, each `heads[k]` bytes of `bytes` (in order) followed by
/// `tails[k]`. Read by Linux's `sendmmsg` only (elsewhere `MMSG` is off and none is made).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Batch<'a> {
    meta: &'a [(SocketAddr, usize)],
    heads: &'a [usize],
    tails: &'a [Option<Bytes>],
    bytes: &'a [u8],
}

/// One copy of datagrams whose heads are `bytes` (in order) and tails `tails`: what a socket
/// that would block holds.
fn contiguous(bytes: &[u8], heads: &[usize], tails: &[Option<Bytes>], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut at = 0;
    for (head, tail) in heads.iter().zip(tails) {
        v.extend_from_slice(&bytes[at..at + head]);
        v.extend_from_slice(tail.as_deref().unwrap_or_default());
        at += head;
    }
    v
}

/// Whether runs of lone datagrams are sent with one `sendmmsg` (Linux).
const MMSG: bool = cfg!(target_os = "linux");

/// Sends lone datagrams, each to its own destination, with as few `sendmmsg` calls as the
/// socket takes them in. A datagram the socket refuses is handled as a lone send's error
/// would be; one it would block on is held with every one after it.
#[cfg(target_os = "linux")]
fn send_lone(
    shared: &Shared,
    endpoint: &mut crate::Endpoint,
    blocked_tx: &mut std::collections::VecDeque<Run>,
    batch: &Batch<'_>,
    now: std::time::Instant,
) {
    use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let n = batch.meta.len();
    let mut starts = Vec::with_capacity(n + 1);
    let mut at = 0;
    for &head in batch.heads {
        starts.push(at);
        at += head;
    }
    starts.push(at);
    let iovs: Vec<[IoSlice<'_>; 2]> = (0..n)
        .map(|k| {
            [
                IoSlice::new(&batch.bytes[starts[k]..starts[k + 1]]),
                IoSlice::new(batch.tails[k].as_deref().unwrap_or_default()),
            ]
        })
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = batch
        .meta
        .iter()
        .map(|&(to, _)| Some(SockaddrStorage::from(to)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
    let mut k = 0;
    // Each call sends at least one datagram or settles the first one's fate.
    while k < n {
        let sent = shared.socket.try_write(|socket| {
            sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &iovs[k..],
                &addrs[k..],
                [],
                MsgFlags::empty(),
            )
            .map(|r| r.count())
            .map_err(io::Error::from)
        });
        // No datagram sent and no error: never from Linux for a nonempty batch; held like a
        // socket that would block rather than looped on.
        let sent = sent.and_then(|m| match m {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            m => Ok(m),
        });
        let (to, size) = batch.meta[k];
        match sent {
            Ok(m) => k += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                hold(endpoint, blocked_tx, batch, &starts, k);
                return;
            }
            Err(e) => {
                if too_large(&e) {
                    endpoint.path_refused(now, to, size);
                } else {
                    // A send error is like a lost datagram: the protocol recovers or reports.
                    debug!(%to, error = %e, "send failed");
                }
                k += 1;
            }
        }
    }
}

/// Holds datagrams `from..` of `batch` for a socket that would block.
#[cfg(target_os = "linux")]
fn hold(
    endpoint: &mut crate::Endpoint,
    blocked_tx: &mut std::collections::VecDeque<Run>,
    batch: &Batch<'_>,
    starts: &[usize],
    from: usize,
) {
    endpoint.count_held_send();
    for k in from..batch.meta.len() {
        if blocked_tx.len() >= MAX_BLOCKED_TX {
            break;
        }
        let (to, size) = batch.meta[k];
        blocked_tx.push_back(Run {
            to,
            bytes: contiguous(
                &batch.bytes[starts[k]..starts[k + 1]],
                &batch.heads[k..=k],
                &batch.tails[k..=k],
                size,
            ),
            segment: size,
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn send_lone(
    _: &Shared,
    _: &mut crate::Endpoint,
    _: &mut std::collections::VecDeque<Run>,
    _: &Batch<'_>,
    _: std::time::Instant,
) {
    unreachable!("MMSG is off here")
}

/// Sends one datagram, or with `segment` a run of them as one GSO send. A lone datagram goes
/// out by plain `sendto`: quinn-udp always adds a TOS control message, and the kernel parses
/// it and looks the route up again for every datagram that carries one.
pub(super) fn send_run(
    shared: &Shared,
    to: SocketAddr,
    bytes: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    if segment.is_none() {
        return shared.socket.try_send_to(bytes, to).map(|_| ());
    }
    let t = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: bytes,
        segment_size: segment,
        src_ip: None,
    };
    shared
        .socket
        .try_write(|socket| shared.udp.try_send(socket.into(), &t))
}

/// Whether datagrams are sent with scatter-gather I/O, their large payloads straight from the
/// messages (Linux, through `sendmsg`); elsewhere they are copied into the send batch.
pub(super) const GATHER: bool = cfg!(target_os = "linux");

/// Sends a run of datagrams, each `heads[k]` bytes of `heads_bytes` followed by `tails[k]`,
/// as one `sendmsg` (with `segment`, one GSO send): the payloads go to the kernel from where
/// they lie, never copied into the batch.
#[cfg(target_os = "linux")]
pub(super) fn send_gathered(
    shared: &Shared,
    to: SocketAddr,
    heads_bytes: &[u8],
    heads: &[usize],
    tails: &[Option<Bytes>],
    segment: Option<usize>,
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut iov = Vec::with_capacity(2 * heads.len());
    let mut at = 0;
    for (&head, tail) in heads.iter().zip(tails) {
        iov.push(IoSlice::new(&heads_bytes[at..at + head]));
        if let Some(t) = tail {
            iov.push(IoSlice::new(t));
        }
        at += head;
    }
    let addr = SockaddrStorage::from(to);
    // The segment size fits: datagrams are at most 65 507 bytes.
    let size = segment.map(|s| s as u16);
    let cmsg = size.as_ref().map(ControlMessage::UdpGsoSegments);
    let cmsgs = cmsg.as_slice();
    shared.socket.try_write(|socket| {
        sendmsg(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    })
}

#[cfg(not(target_os = "linux"))]
pub(super) fn send_gathered(
    _: &Shared,
    _: SocketAddr,
    _: &[u8],
    _: &[usize],
    _: &[Option<Bytes>],
    _: Option<usize>,
) -> io::Result<()> {
    unreachable!("GATHER is off here: no datagram has a tail")
}

/// Sends held runs until the socket would block again.
pub(super) fn send_blocked(shared: &Shared, st: &mut State) {
    while let Some(run) = st.blocked_tx.pop_front() {
        let segment = (run.bytes.len() > run.segment).then_some(run.segment);
        match send_run(shared, run.to, &run.bytes, segment) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.endpoint.count_held_send();
                st.blocked_tx.push_front(run);
                return;
            }
            Err(e) if too_large(&e) => {
                let now = Instant::now().into_std();
                st.endpoint.path_refused(now, run.to, run.segment);
            }
            Err(e) => debug!(to = %run.to, error = %e, "send failed"),
        }
    }
}

/// Whether a send failed because the datagram is larger than the link carries (`EMSGSIZE`;
/// sockets here set don't-fragment).
fn too_large(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// One batched read (`recvmmsg`, GRO where the OS has them) into `storage`: how many slots
/// were filled (0 when nothing was waiting). Takes no lock.
pub(super) fn recv_batch(
    shared: &Shared,
    storage: &mut [u8],
    metas: &mut [quinn_udp::RecvMeta],
) -> usize {
    // On the stack: this runs for every wake-up of the driver. Only the slots asked for are
    // pointed at buffers (a read asks for few when traffic is light).
    let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
        std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let batch = bufs.len().min(metas.len());
    for (b, slot) in bufs[..batch].iter_mut().zip(storage.chunks_mut(RECV_SLOT)) {
        *b = IoSliceMut::new(slot);
    }
    let mut drained = 0;
    match shared.socket.try_read(|socket| {
        let n = shared.udp.recv(socket.into(), &mut bufs[..batch], metas)?;
        if n < batch {
            // Fewer than asked for: the queue is empty now. Saying "would block" clears the
            // readiness, which saves the syscall that would only learn so. A datagram that
            // arrives meanwhile is a new readiness event, which tokio keeps.
            drained = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained,
        Err(e) => {
            debug!(error = %e, "recv failed");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_three_quarters_of_the_granted_buffer() {
        let config = EndpointConfig::default();
        let largest = crate::DEFAULT_LOOPBACK_MTU.unwrap_or(crate::DEFAULT_MAX_MTU);
        // Linux doubles what it grants: 4 MiB of `rmem_max` reads back as 8 MiB.
        assert_eq!(receive_window(8 << 20, &config), 6 << 20);
        // The default `rmem_max` (208 KiB, doubled).
        assert_eq!(receive_window(425_984, &config), 319_488);
        // Never below four of the largest datagrams.
        assert_eq!(receive_window(1000, &config), 4 * largest);
    }
}
