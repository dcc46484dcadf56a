fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine builds with no manual step.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .compile_protos(&["proto/logic.proto", "proto/gateway.proto", "proto/queue.proto"], &["proto"])?;
    Ok(())
}
