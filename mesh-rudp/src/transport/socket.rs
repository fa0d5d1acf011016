//! The transport's socket as tokio's reactor sees it: watched for reading only.
//!
//! A socket registered for writing too is woken for every datagram sent: on loopback and on
//! most interfaces the kernel frees a sent datagram's buffer at once, and each free is an
//! "it is writable" edge that ends the runtime's next wait for events early, for nothing (a
//! wait, and a turn of the runtime's scheduler, per round trip on each side). So sends go
//! straight to their system call, and only when one would block does the driver arm a
//! [`WriteWatch`], until the output it holds is gone.
//!
//! Where tokio has no `AsyncFd` (not Unix), the socket is tokio's own `UdpSocket`, watched
//! both ways as before.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

#[cfg(unix)]
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
#[cfg(unix)]
use tracing::warn;

/// What the system calls get: the socket itself.
#[cfg(unix)]
pub(super) type Raw = std::net::UdpSocket;
/// What the system calls get: the socket itself.
#[cfg(not(unix))]
pub(super) type Raw = tokio::net::UdpSocket;

/// A nonblocking UDP socket registered with the reactor for reading.
pub(super) struct Socket {
    #[cfg(unix)]
    fd: AsyncFd<std::net::UdpSocket>,
    #[cfg(not(unix))]
    fd: tokio::net::UdpSocket,
}

impl Socket {
    /// Registers a bound socket (it must be in a runtime), and makes the driver's watch for
    /// room.
    pub(super) fn new(socket: std::net::UdpSocket) -> io::Result<(Self, WriteWatch)> {
        socket.set_nonblocking(true)?;
        #[cfg(unix)]
        {
            // Made now, so that a process out of descriptors fails at bind, not while output
            // waits.
            let spare = socket.try_clone()?;
            let fd = register(socket, Interest::READABLE)?;
            let watch = WriteWatch {
                spare: Some(spare),
                armed: None,
                failing: false,
            };
            Ok((Self { fd }, watch))
        }
        #[cfg(not(unix))]
        {
            let fd = tokio::net::UdpSocket::from_std(socket)?;
            Ok((Self { fd }, WriteWatch {}))
        }
    }

    /// The socket, for its options and addresses.
    pub(super) fn raw(&self) -> &Raw {
        #[cfg(unix)]
        {
            self.fd.get_ref()
        }
        #[cfg(not(unix))]
        {
            &self.fd
        }
    }

    /// Sends one datagram now, or fails with `WouldBlock`.
    pub(super) fn try_send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
        #[cfg(unix)]
        {
            self.fd.get_ref().send_to(bytes, to)
        }
        #[cfg(not(unix))]
        {
            self.fd.try_send_to(bytes, to)
        }
    }

    /// Runs a send: at once (no readiness to consult: nothing watches for it but an armed
    /// [`WriteWatch`]).
    pub(super) fn try_write<R>(&self, f: impl FnOnce(&Raw) -> io::Result<R>) -> io::Result<R> {
        #[cfg(unix)]
        {
            f(self.fd.get_ref())
        }
        #[cfg(not(unix))]
        {
            self.fd.try_io(Interest::WRITABLE, || f(&self.fd))
        }
    }

    /// Runs a read if the socket may be readable; a `WouldBlock` from `f` clears that until
    /// the next datagram arrives.
    pub(super) fn try_read<R>(&self, f: impl FnOnce(&Raw) -> io::Result<R>) -> io::Result<R> {
        #[cfg(unix)]
        {
            self.fd.try_io(Interest::READABLE, f)
        }
        #[cfg(not(unix))]
        {
            self.fd.try_io(Interest::READABLE, || f(&self.fd))
        }
    }

    /// Ready if the socket may be readable; otherwise `cx` is woken when it becomes so.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        #[cfg(unix)]
        {
            // The guard is dropped without clearing: the read that follows says.
            self.fd.poll_read_ready(cx).map(|_| ())
        }
        #[cfg(not(unix))]
        {
            self.fd.poll_recv_ready(cx).map(|_| ())
        }
    }
}

/// Watches for the socket to take output again, armed only while output is held (see the
/// module's docs). The driver's alone.
pub(super) struct WriteWatch {
    /// A duplicate of the socket's descriptor, registered for writing while armed (the
    /// socket's own registration is for reading; one descriptor is registered once).
    #[cfg(unix)]
    spare: Option<std::net::UdpSocket>,
    #[cfg(unix)]
    armed: Option<AsyncFd<std::net::UdpSocket>>,
    /// Whether the last arming failed (said once, not at every try).
    #[cfg(unix)]
    failing: bool,
}

impl WriteWatch {
    /// Ready when the socket may take output: at once if it already may (a watch armed now
    /// reports the current state), or after the next write edge since the last `Ready`.
    pub(super) fn poll_writable(&mut self, socket: &Socket, cx: &mut Context<'_>) -> Poll<()> {
        #[cfg(unix)]
        {
            let fd = match &mut self.armed {
                Some(fd) => fd,
                armed @ None => {
                    let spare = match self.spare.take() {
                        Some(s) => Ok(s),
                        // A failed arming lost it: another duplicate.
                        None => socket.raw().try_clone(),
                    };
                    match spare.and_then(|s| register(s, Interest::WRITABLE)) {
                        Ok(fd) => {
                            self.failing = false;
                            armed.insert(fd)
                        }
                        Err(e) => {
                            if !self.failing {
                                warn!(error = %e, "cannot watch the socket for room: sending again without waiting");
                            }
                            self.failing = true;
                            // As a socket watched both ways would, when it cannot tell: try.
                            return Poll::Ready(());
                        }
                    }
                }
            };
            match fd.poll_write_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    // The caller sends now; if that would block again, wait for the next edge.
                    guard.clear_ready();
                    Poll::Ready(())
                }
                Poll::Ready(Err(_)) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        }
        #[cfg(not(unix))]
        {
            socket.fd.poll_send_ready(cx).map(|_| ())
        }
    }

    /// Stops watching: no output is held.
    pub(super) fn disarm(&mut self) {
        #[cfg(unix)]
        if let Some(fd) = self.armed.take() {
            // Deregistered: sends no longer wake the runtime.
            self.spare = Some(fd.into_inner());
        }
    }
}

/// Registers a socket with the reactor. tokio deprecates this safe form because an arbitrary
/// `AsRawFd` type may close or swap its descriptor while registered; a
/// `std::net::UdpSocket` owns its descriptor, open and unchanged until the `AsyncFd` gives it
/// back (`into_inner` deregisters first) or drops it (deregistered before it closes), which is
/// the condition tokio's `unsafe` replacement asks the caller to uphold.
#[cfg(unix)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    #[allow(deprecated)]
    AsyncFd::with_interest(socket, interest)
}
