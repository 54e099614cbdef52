//! The digest `Authorization` parser and the check of what it parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    signaling::fuzzing::digest_credentials(data);
});
