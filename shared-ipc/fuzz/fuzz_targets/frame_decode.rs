//! The helper's frame decoder on arbitrary bytes: never panics; whatever
//! decodes passes or fails `check_bounds` without panicking and survives an
//! encode/decode round trip unchanged. Responses (what the frontend decodes)
//! are fuzzed with the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_ipc::frame::{decode, encode};
use shared_ipc::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode::<Request>(data) {
        let _ = req.check_bounds();
        let _ = req.name();
        let _ = req.pid();
        let again = encode(&req).expect("a decoded request re-encodes");
        assert_eq!(decode::<Request>(&again).expect("round trip"), req);
    }
    if let Ok(resp) = decode::<Response>(data) {
        let again = encode(&resp).expect("a decoded response re-encodes");
        assert_eq!(decode::<Response>(&again).expect("round trip"), resp);
    }
});
