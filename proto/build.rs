fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine builds with no manual step.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    // Messages holding session tokens get a Debug of their own that leaves the token out.
    tonic_prost_build::configure()
        .skip_debug([
            ".gochat.logic.ConnOpenRequest",
            ".gochat.logic.CheckAuthRequest",
            ".gochat.client.Auth",
        ])
        .compile_protos(
            &[
                "proto/logic.proto",
                "proto/gateway.proto",
                "proto/queue.proto",
                "proto/client.proto",
                "proto/api.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
