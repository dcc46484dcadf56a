fn main() {
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
}
