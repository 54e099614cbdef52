//! The media proxy's conversions of gRPC requests (protobuf bytes as a client may send them)
//! into its domain types.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mediaproxy::fuzzing::grpc_requests(data);
});
