//! The SIP message parser: never panics, and what it accepts it writes back in a form that
//! parses again to the same message (write, parse, write is stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    signaling::fuzzing::sip_message(data);
});
