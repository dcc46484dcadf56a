//! Compiles the previous release's `.proto` files (this folder) into Rust, and writes the
//! descriptor sets of both the previous files and the current ones (`../proto/*.proto`), which
//! the additive check compares.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine builds with no manual step.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", &protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let previous = proto_files(Path::new("."))?;
    let current = proto_files(Path::new("../proto"))?;
    // New files in either folder are picked up too.
    println!("cargo:rerun-if-changed=.");
    println!("cargo:rerun-if-changed=../proto");

    tonic_prost_build::configure().compile_protos(&previous, &[PathBuf::from(".")])?;
    descriptor_set(&protoc, Path::new("."), &previous, &out.join("previous.bin"))?;
    descriptor_set(&protoc, Path::new("../proto"), &current, &out.join("current.bin"))?;
    Ok(())
}

/// The `.proto` files directly in `dir`, sorted.
fn proto_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    Ok(files)
}

fn descriptor_set(
    protoc: &Path,
    include: &Path,
    files: &[PathBuf],
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let status = Command::new(protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("-I")
        .arg(include)
        .args(files)
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on {}: {status}", include.display()).into());
    }
    Ok(())
}
