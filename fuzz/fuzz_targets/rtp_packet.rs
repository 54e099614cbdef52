//! What the relay reads of a datagram (RTP or RTCP, on either port) and what its session
//! does with it: never a panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mediaproxy::fuzzing::rtp_packet(data);
});
