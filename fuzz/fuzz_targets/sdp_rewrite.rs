//! The SDP reader and the rewrite through the proxy: parse, rewrite, parse again must agree
//! on every line not rewritten.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    signaling::fuzzing::sdp_rewrite(data);
});
