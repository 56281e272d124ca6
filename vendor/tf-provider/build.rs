// homelab patch: compile the protos with protox (a protobuf compiler written in Rust, which
// carries the well-known types such as google/protobuf/empty.proto) and hand the resulting
// descriptors to tonic-build. Upstream runs the system `protoc`, which a new machine does not
// have, and whose include folder (Debian's libprotobuf-dev) is another package again. See
// PATCHES.md for why protox and how the generated code was compared.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/plugin.proto", "proto/tfplugin6.5.proto"];
    // Source info keeps the proto comments as doc comments in the generated code, as protoc
    // does; imports are part of the set so that tonic-build resolves google.protobuf.Empty.
    let fds = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(protos)?
        .file_descriptor_set();
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_build::configure()
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
