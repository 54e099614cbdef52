//! The gRPC contract between `signaling` and `mediaproxy`: package `mediaproxy.v1`.
//!
//! The `.proto` file under `proto/mediaproxy/v1/` is the source of truth and documents every
//! field; this crate compiles it and holds the domain types both services speak. Generated
//! types stay at the edges: each service converts them into these types in its gRPC module
//! (the proxy's server in `mediaproxy::grpc`, signaling's client in `signaling::media`), so
//! neither service depends on the other's internals (docs/contributing.md, "The crate wall").
//!
//! # Layout
//! - [`v1`]: generated messages, the `MediaProxy` client and server.
//! - [`domain`]: `CallId`, `Leg`, `MediaKind`, `Direction`, `Codec` and their checked
//!   conversions from the wire ([`domain::WireError`]).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

pub mod domain;

/// Generated code for `mediaproxy.v1`.
#[allow(unreachable_pub, clippy::use_self, clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("mediaproxy.v1");
}

/// Encoded `FileDescriptorSet` of `mediaproxy.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mediaproxy_descriptor");
