//! The protocol between the unprivileged `criu` frontend and the privileged
//! `criu-helper`: message types ([`protocol`]), framing ([`frame`]) and a typed
//! lock-step channel over a UNIX `SOCK_SEQPACKET` socketpair ([`channel`]).
//!
//! Both binaries link this crate; the helper treats every frame as hostile:
//! frames are size-checked before decoding and rejected on any trailing byte.

#![deny(missing_docs)]

pub mod channel;
pub mod frame;
pub mod protocol;
mod sys;

pub use channel::{seqpacket_pair, Channel, ChannelError};
pub use protocol::*;

/// The descriptor number at which the helper finds its end of the channel.
pub const HELPER_CHANNEL_FD: i32 = 3;
