//! rtpengine ng datagrams as a client (or anyone who reaches `--listen-ng`) may send them:
//! cookie framing, bencode and JSON, the reply cache.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mediaproxy::fuzzing::ng_datagram(data);
});
