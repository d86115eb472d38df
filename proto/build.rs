//! Compiles `proto/natter.proto` with Debian's `protoc` (package
//! `protobuf-compiler`); no network access is needed at build time.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/natter.proto");
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        return Err(
            "`protoc` not found: install it with `apt-get install protobuf-compiler` \
                    (or set PROTOC=/path/to/protoc)"
                .into(),
        );
    }
    prost_build::Config::new()
        // Lets property tests and fuzz targets build any message from raw bytes.
        .type_attribute(
            ".",
            "#[cfg_attr(feature = \"arbitrary\", derive(arbitrary::Arbitrary))]",
        )
        .compile_protos(&["proto/natter.proto"], &["proto"])?;
    Ok(())
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|candidate| candidate.is_file())
}
