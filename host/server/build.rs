//! Compiles `proto/weft/v1/generation.proto` into the gRPC service and
//! message types with protox (a protobuf compiler in Rust, so no `protoc`
//! is needed) and tonic-prost-build, and saves the encoded descriptor set
//! for gRPC server reflection.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let proto = "proto/weft/v1/generation.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("weft_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
