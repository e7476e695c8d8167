//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["meshwork/v1/discovery.proto", "meshwork/demo/v1/echo.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Proxies dump their applied snapshot as JSON (admin /config_dump).
        .type_attribute(".meshwork.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
