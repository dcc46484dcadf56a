fn main() {
    // The commit this build is of, for `gochat_build_info`: GOCHAT_COMMIT when set (an image
    // built without the repository), else git's, else "unknown".
    println!("cargo:rerun-if-env-changed=GOCHAT_COMMIT");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Rebuilt when the checkout moves to another commit. Asked of git, as a worktree or a
    // submodule keeps these files elsewhere than `../.git/`; a path that does not exist would
    // rebuild on every run.
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    for name in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]).map(|p| dir.join(p)) {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = std::env::var("GOCHAT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!("cargo:rustc-env=GOCHAT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
