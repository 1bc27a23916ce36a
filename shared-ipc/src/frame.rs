//! Frame encoding: a 4-byte little-endian payload length followed by the
//! postcard encoding of one message. The whole frame is at most
//! [`MAX_FRAME`] bytes; the length is checked before any decoding, and a
//! frame whose payload does not decode to exactly one message (trailing
//! bytes included) is rejected.

use crate::protocol::MAX_FRAME;
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is shorter than its 4-byte length prefix.
    #[error("frame truncated: {0} bytes, shorter than the length prefix")]
    Truncated(usize),
    /// The length prefix does not match the bytes received.
    #[error("frame length prefix says {declared} bytes but {actual} followed")]
    LengthMismatch {
        /// Payload length in the prefix.
        declared: usize,
        /// Payload bytes actually present.
        actual: usize,
    },
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    Oversized(usize),
    /// The payload is not a valid message.
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    /// The payload holds bytes after the message.
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encode `msg` as one frame (length prefix plus payload).
///
/// Errors: [`FrameError::Oversized`] when the frame would exceed
/// [`MAX_FRAME`] bytes, [`FrameError::Malformed`] if serialisation fails.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out =
        postcard::to_extend(msg, vec![0u8; 4]).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    if out.len() > MAX_FRAME {
        return Err(FrameError::Oversized(out.len()));
    }
    Ok(out)
}

/// Decode one frame received whole (one datagram of a `SOCK_SEQPACKET`
/// socket).
///
/// Errors: every [`FrameError`] variant but `Oversized` from encoding; the
/// size is checked first, then the prefix, then the payload.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::Oversized(frame.len()));
    }
    if frame.len() < 4 {
        return Err(FrameError::Truncated(frame.len()));
    }
    let declared = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let payload = &frame[4..];
    if declared != payload.len() {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PageRun, Request, Response, UserRegs, MAX_PAGE_RUNS};

    #[test]
    fn round_trip() {
        let req = Request::SetRegs {
            pid: 42,
            regs: UserRegs {
                rip: 0x401000,
                ..Default::default()
            },
            xstate: Some(vec![1, 2, 3]),
        };
        let f = encode(&req).unwrap();
        assert_eq!(decode::<Request>(&f).unwrap(), req);
    }

    #[test]
    fn truncated_frames_are_rejected() {
        let f = encode(&Request::GetRegs { pid: 7 }).unwrap();
        for cut in 0..f.len() {
            let r = decode::<Request>(&f[..cut]);
            assert!(r.is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn length_prefix_must_match() {
        let mut f = encode(&Request::GetRegs { pid: 7 }).unwrap();
        f[0] = f[0].wrapping_add(1);
        assert!(matches!(
            decode::<Request>(&f),
            Err(FrameError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut f = encode(&Request::GetRegs { pid: 7 }).unwrap();
        f.push(0);
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(decode::<Request>(&f), Err(FrameError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_frames_are_rejected_before_decoding() {
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            decode::<Request>(&big),
            Err(FrameError::Oversized(MAX_FRAME + 1))
        );
        let too_many = Request::DumpPages {
            pid: 1,
            runs: vec![
                PageRun {
                    addr: u64::MAX - 4095,
                    len: u64::MAX - 4095
                };
                MAX_PAGE_RUNS * 4
            ],
        };
        assert!(matches!(encode(&too_many), Err(FrameError::Oversized(_))));
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        // An enum tag far beyond the last variant.
        let f = [1, 0, 0, 0, 0x7f];
        assert!(matches!(
            decode::<Request>(&f),
            Err(FrameError::Malformed(_))
        ));
        // A vector length that claims more bytes than present.
        let f = [2, 0, 0, 0, 8, 0x7f];
        assert!(decode::<Response>(&f).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep over garbage; the fuzz target goes further.
        let mut x: u32 = 0x1234_5678;
        for n in 0..2000usize {
            let len = n % 64;
            let mut buf = Vec::with_capacity(len + 4);
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            let _ = decode::<Request>(&buf);
            let _ = decode::<Response>(&buf);
        }
    }
}
