//! The helper's receive path: the input is sent as one datagram on a
//! `SOCK_SEQPACKET` socketpair and read back with `Channel::recv`, as the
//! helper reads a frontend's frame (size cap, truncation flag, decoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ipc::{seqpacket_pair, Channel, Request, Response};

fuzz_target!(|data: &[u8]| {
    let (a, b) = seqpacket_pair().expect("socketpair");
    // A datagram larger than the socket buffer cannot be sent; skip it.
    if nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&a),
        data,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .is_err()
    {
        return;
    }
    drop(a);
    let mut helper_side: Channel<Response, Request> = Channel::new(b);
    let _ = helper_side.recv();
});
