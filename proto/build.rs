//! Compiles `pgtrail/v1/pgtrail.proto` with the pure-Rust `protox`, so the
//! workspace builds with `cargo` alone (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "pgtrail/v1/pgtrail.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    // The collector's server of `Ingest` takes each message as it came
    // (see `src/received.rs`), so it is generated apart, by hand.
    let stream = tonic_build::manual::Method::builder()
        .name("stream")
        .route_name("Stream")
        .input_type("crate::received::Received")
        .output_type("crate::pb::CollectorMessage")
        .codec_path("crate::codec::ReceivedCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let ingest = tonic_build::manual::Service::builder()
        .name("Ingest")
        .package("pgtrail.v1")
        .method(stream)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[ingest]);
    Ok(())
}
