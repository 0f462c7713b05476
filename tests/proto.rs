//! proto/csi.proto carries the published CSI wire format: compiled without
//! comments, its descriptor is byte for byte the one the published
//! csi.proto of the same version compiles to (fetched from the Go module
//! proxy, where the spec is a Go module).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CSI version proto/csi.proto follows.
const SPEC_VERSION: &str = "v1.14.0";

/// The published spec's directory in the Go module cache, downloading it if
/// it is not there yet.
fn published_spec() -> PathBuf {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("go")
        .args(["mod", "download", "-json"])
        .arg(format!(
            "github.com/container-storage-interface/spec@{SPEC_VERSION}"
        ))
        .current_dir(scratch.path())
        .output()
        .expect("run go (the test command installs Go's toolchain)");
    assert!(
        out.status.success(),
        "go mod download: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(info["Dir"].as_str().expect("go mod download names a Dir"))
}

/// csi.proto in `dir` compiled to an encoded FileDescriptorSet without
/// source info (comments and positions), imports left out.
fn descriptor(dir: &Path) -> (Vec<u8>, prost_types::FileDescriptorSet) {
    let mut compiler = protox::Compiler::new([dir]).unwrap();
    compiler.include_source_info(false).include_imports(false);
    compiler.open_file("csi.proto").unwrap();
    (
        compiler.encode_file_descriptor_set(),
        compiler.file_descriptor_set(),
    )
}

#[test]
fn descriptor_matches_the_published_spec() {
    let spec = published_spec();
    let version = std::fs::read_to_string(spec.join("VERSION")).unwrap();
    assert_eq!(format!("v{}", version.trim()), SPEC_VERSION);
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    assert!(
        std::fs::read_to_string(ours.join("csi.proto"))
            .unwrap()
            .contains(&format!("protocol version {}", &SPEC_VERSION[1..])),
        "proto/csi.proto's header names another version"
    );
    let (published_bytes, published) = descriptor(&spec);
    let (our_bytes, our) = descriptor(&ours);
    // Messages first, for a readable failure; then every byte, options and
    // their extensions included.
    let (published, our) = (&published.file[0], &our.file[0]);
    assert_eq!(published.package, our.package);
    assert_eq!(published.service, our.service);
    assert_eq!(published.enum_type, our.enum_type);
    for (theirs, mine) in published.message_type.iter().zip(&our.message_type) {
        assert_eq!(theirs, mine);
    }
    assert_eq!(published.message_type.len(), our.message_type.len());
    assert_eq!(published_bytes, our_bytes);
}
