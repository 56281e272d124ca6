//! Link the provider executable (and the do-nothing provider it is benchmarked against) at a
//! fixed address, as Go-built Terraform providers are (`go build` makes non-PIE executables on
//! linux/amd64): a position-independent executable of this size makes the dynamic loader apply
//! some 31,000 relocations, touching hundreds of pages, before `main` runs, which is most of what
//! its cold start to the handshake line costs beyond the framework's (see `benches/plan.sh`).
//! Libraries, tests and benches keep the default.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-examples=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
