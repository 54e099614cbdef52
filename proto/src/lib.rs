//! The gRPC contract between `signaling` and `mediaproxy`: package `mediaproxy.v1`.
//!
//! The `.proto` file under `proto/mediaproxy/v1/` is the source of truth and documents every
//! field; this crate only compiles it. Generated types stay at the edges: the services convert
//! them into their own domain types (see `mediaproxy::grpc`).
//!
//! # Layout
//! - [`v1`]: generated messages, the `MediaProxy` client and server.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

#![allow(unreachable_pub, clippy::use_self, clippy::large_enum_variant)]

/// Generated code for `mediaproxy.v1`.
pub mod v1 {
    tonic::include_proto!("mediaproxy.v1");
}

/// Encoded `FileDescriptorSet` of `mediaproxy.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mediaproxy_descriptor");
