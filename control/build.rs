fn main() {
    // The site is embedded at build time; rebuild when it changes.
    println!("cargo:rerun-if-changed=../site");
    println!("cargo:rerun-if-changed=migrations");
}
