//! Generates the `nexus.v1` gRPC code from `nexus/v1/*.proto` with the vendored `protoc` (no
//! system `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "nexus/v1/shard.proto",
        "nexus/v1/completion.proto",
        "nexus/v1/run.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Log chunks are handed on as they came, without a copy.
    config.bytes([".nexus.v1.LogsChunk.data"]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
