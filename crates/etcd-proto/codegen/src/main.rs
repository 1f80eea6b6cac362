//! Compiles `proto/**/*.proto` into `src/generated/` (prost messages, tonic client and
//! server stubs). The output is committed so that building Skiff needs neither `protoc`
//! nor this generator.

use std::path::PathBuf;

/// FNV-1a offset basis; the same function is in the crate's freshness test.
const FINGERPRINT_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `hash`. A fingerprint of the .proto sources lets
/// a unit test notice generated code that is older than its sources.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto_dir = crate_dir.join("proto");
    let out_dir = crate_dir.join("src").join("generated");
    std::fs::create_dir_all(&out_dir)?;
    let files = [
        "etcdserverpb/rpc.proto",
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "skiffpb/peer.proto",
    ];
    let descriptors = protox::compile(files, [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .out_dir(&out_dir)
        .compile_fds(descriptors)?;
    let mut fingerprint = FINGERPRINT_SEED;
    for file in files {
        fingerprint = fnv1a(fingerprint, file.as_bytes());
        fingerprint = fnv1a(fingerprint, &std::fs::read(proto_dir.join(file))?);
    }
    std::fs::write(out_dir.join("proto-fingerprint.txt"), format!("{fingerprint:016x}\n"))?;
    for entry in std::fs::read_dir(&out_dir)? {
        println!("wrote {}", entry?.path().display());
    }
    Ok(())
}
