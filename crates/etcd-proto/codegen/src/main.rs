//! Compiles `proto/**/*.proto` into `src/generated/` (prost messages, tonic client and
//! server stubs). The output is committed so that building Skiff needs neither `protoc`
//! nor this generator.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto_dir = crate_dir.join("proto");
    let out_dir = crate_dir.join("src").join("generated");
    std::fs::create_dir_all(&out_dir)?;
    let files = ["etcdserverpb/rpc.proto", "mvccpb/kv.proto", "authpb/auth.proto"];
    let descriptors = protox::compile(files, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .out_dir(&out_dir)
        .compile_fds(descriptors)?;
    for entry in std::fs::read_dir(&out_dir)? {
        println!("wrote {}", entry?.path().display());
    }
    Ok(())
}
