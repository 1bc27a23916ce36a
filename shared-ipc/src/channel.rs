//! A typed, lock-step channel over a UNIX `SOCK_SEQPACKET` socket.
//!
//! One datagram is one frame (see [`crate::frame`]), so message boundaries
//! come from the kernel and a frame can never be read half. Descriptors are
//! passed only as `SCM_RIGHTS` ancillary data of the frame they belong to
//! (see unix(7)). `Channel<Tx, Rx>` can only send `Tx` and receive `Rx`, so
//! each side can only speak its own half of the protocol.

use crate::frame::{self, FrameError};
use crate::protocol::{MAX_FDS_PER_FRAME, MAX_FRAME};
use crate::sys;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Why sending or receiving failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end.
    #[error("the other side closed the channel")]
    Closed,
    /// A socket call failed.
    #[error("{op} on the channel failed: {errno}")]
    Io {
        /// `sendmsg` or `recvmsg`.
        op: &'static str,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// The frame itself is bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame carried more descriptors than [`MAX_FDS_PER_FRAME`] or its
    /// ancillary data was cut.
    #[error("frame carried too many descriptors or truncated ancillary data")]
    TooManyFds,
    /// Ancillary data other than `SCM_RIGHTS` arrived.
    #[error("frame carried unexpected ancillary data")]
    UnexpectedAncillary,
}

/// Create a connected pair of close-on-exec `SOCK_SEQPACKET` sockets.
///
/// Errors: the errno of socketpair(2).
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), nix::errno::Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// One end of the protocol: sends `Tx`, receives `Rx`.
pub struct Channel<Tx, Rx> {
    sock: OwnedFd,
    buf: Vec<u8>,
    _marker: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Serialize, Rx: DeserializeOwned> Channel<Tx, Rx> {
    /// Wrap a connected `SOCK_SEQPACKET` socket.
    pub fn new(sock: OwnedFd) -> Self {
        Channel {
            sock,
            buf: vec![0u8; MAX_FRAME + 1],
            _marker: PhantomData,
        }
    }

    /// Send one message with the given descriptors (at most
    /// [`MAX_FDS_PER_FRAME`]).
    ///
    /// Errors: [`ChannelError::Frame`] if the message does not fit a frame,
    /// [`ChannelError::TooManyFds`], or the errno of sendmsg(2).
    pub fn send(&mut self, msg: &Tx, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(ChannelError::TooManyFds);
        }
        let bytes = frame::encode(msg)?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(&bytes)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => {
                    return Err(ChannelError::Io {
                        op: "sendmsg",
                        errno: nix::errno::Errno::EMSGSIZE,
                    })
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EPIPE) | Err(nix::errno::Errno::ECONNRESET) => {
                    return Err(ChannelError::Closed)
                }
                Err(errno) => {
                    return Err(ChannelError::Io {
                        op: "sendmsg",
                        errno,
                    })
                }
            }
        }
    }

    /// Receive one message and the descriptors that came with it. The
    /// descriptors are close-on-exec and owned by the caller; on any error
    /// they are closed.
    ///
    /// Errors: [`ChannelError::Closed`] at end of stream, a
    /// [`ChannelError::Frame`] for an oversized, truncated or malformed frame,
    /// [`ChannelError::TooManyFds`], or the errno of recvmsg(2).
    pub fn recv(&mut self) -> Result<(Rx, Vec<OwnedFd>), ChannelError> {
        let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
        let (len, flags, fds, unexpected) = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    let mut unexpected = false;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            match c {
                                ControlMessageOwned::ScmRights(raw) => {
                                    fds.extend(raw.into_iter().map(sys::own_received_fd))
                                }
                                _ => unexpected = true,
                            }
                        }
                    }
                    break (msg.bytes, msg.flags, fds, unexpected);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(errno) => {
                    return Err(ChannelError::Io {
                        op: "recvmsg",
                        errno,
                    })
                }
            }
        };
        if flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS_PER_FRAME {
            return Err(ChannelError::TooManyFds);
        }
        if unexpected {
            return Err(ChannelError::UnexpectedAncillary);
        }
        if flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_FRAME {
            return Err(FrameError::Oversized(len).into());
        }
        if len == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        let msg = frame::decode::<Rx>(&self.buf[..len])?;
        Ok((msg, fds))
    }

    /// Send raw bytes as one datagram, bypassing the encoder. Only for tests
    /// that play a hostile peer.
    #[doc(hidden)]
    pub fn send_raw_for_test(&mut self, bytes: &[u8]) -> Result<(), ChannelError> {
        let iov = [IoSlice::new(bytes)];
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(|_| ())
        .map_err(|errno| ChannelError::Io {
            op: "sendmsg",
            errno,
        })
    }
}

impl<Tx, Rx> AsFd for Channel<Tx, Rx> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Response};

    fn pair() -> (Channel<Request, Response>, Channel<Response, Request>) {
        let (a, b) = seqpacket_pair().unwrap();
        (Channel::new(a), Channel::new(b))
    }

    #[test]
    fn request_and_descriptor_cross() {
        let (mut front, mut helper) = pair();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        front
            .send(&Request::GetRegs { pid: 3 }, &[file.as_fd()])
            .unwrap();
        let (msg, fds) = helper.recv().unwrap();
        assert_eq!(msg, Request::GetRegs { pid: 3 });
        assert_eq!(fds.len(), 1);
        helper.send(&Response::Ok, &[]).unwrap();
        assert_eq!(front.recv().unwrap().0, Response::Ok);
    }

    #[test]
    fn closed_peer_is_reported() {
        let (front, mut helper) = pair();
        drop(front);
        assert!(matches!(helper.recv(), Err(ChannelError::Closed)));
    }

    #[test]
    fn hostile_frames_are_rejected() {
        let (mut front, mut helper) = pair();
        // Oversized datagram: cut by the kernel and flagged MSG_TRUNC.
        front
            .send_raw_for_test(&vec![0u8; MAX_FRAME + 100])
            .unwrap();
        assert!(matches!(
            helper.recv(),
            Err(ChannelError::Frame(FrameError::Oversized(_)))
        ));
        // Truncated: two bytes.
        front.send_raw_for_test(&[1, 0]).unwrap();
        assert!(matches!(
            helper.recv(),
            Err(ChannelError::Frame(FrameError::Truncated(2)))
        ));
        // Garbage payload.
        front.send_raw_for_test(&[2, 0, 0, 0, 0xff, 0xff]).unwrap();
        assert!(matches!(
            helper.recv(),
            Err(ChannelError::Frame(FrameError::Malformed(_)))
        ));
        // Too many descriptors.
        let files: Vec<_> = (0..MAX_FDS_PER_FRAME + 1)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = frame::encode(&Request::GetRegs { pid: 1 }).unwrap();
        sendmsg::<()>(
            front.as_fd().as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(helper.recv(), Err(ChannelError::TooManyFds)));
    }
}
