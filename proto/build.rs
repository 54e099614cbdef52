//! Generates the mediaproxy.v1 client, server and a file descriptor set for reflection.
//!
//! `protoc` comes from `protoc-bin-vendored` so only cargo is needed; a `PROTOC` in the
//! environment wins, for platforms the vendored binaries do not cover.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mediaproxy_descriptor.bin"))
        .compile_with_config(
            config,
            &["proto/mediaproxy/v1/mediaproxy.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
