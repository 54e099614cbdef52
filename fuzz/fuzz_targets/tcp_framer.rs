//! The TCP stream framer: never panics, never frames past the buffer, and a framed message
//! goes to the parser like any datagram.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    signaling::fuzzing::tcp_framer(data);
});
