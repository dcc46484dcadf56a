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
            &["proto/logic.proto", "proto/gateway.proto", "proto/queue.proto", "proto/client.proto"],
            &["proto"],
        )?;
    // The commit this build is of, for `gochat_build_info`: GOCHAT_COMMIT when set (an image
    // built without the repository), else git's, else "unknown".
    println!("cargo:rerun-if-env-changed=GOCHAT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("GOCHAT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out =
            std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=GOCHAT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    Ok(())
}
