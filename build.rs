//! Compiles proto/csi.proto with protox (pure Rust), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/csi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // RPCs we do not implement answer UNIMPLEMENTED without a hand-written body.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
