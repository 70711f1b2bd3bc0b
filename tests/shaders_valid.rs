//! Every `shaders/*.wgsl` parses and validates with naga. Needs no GPU.

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if let Err(e) = wqat::gpu::validate_wgsl(&name, &src) {
            panic!("{e}");
        }
        count += 1;
    }
    assert!(count > 0, "no shaders found in {}", dir.display());
    // The registry embeds exactly the files on disk.
    assert_eq!(count, wqat::gpu::SHADER_SOURCES.len(), "build.rs embedded a different set of shaders");
}
