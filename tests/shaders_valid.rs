//! Every shader, as the registry compiles it (`shaders/*.wgsl` with its
//! `// #include common/...` lines expanded by build.rs), parses and validates with naga;
//! so does every shared module in `shaders/common/` on its own. Needs no GPU.

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().and_then(|e| e.to_str()) == Some("wgsl"))
        .count();
    assert!(on_disk > 0, "no shaders found in {}", dir.display());
    // The registry embeds exactly the files on disk.
    assert_eq!(on_disk, wqat::gpu::SHADER_SOURCES.len(), "build.rs embedded a different set of shaders");
    for (name, src) in wqat::gpu::SHADER_SOURCES {
        assert!(!src.contains("// #include "), "{name}: an include was left unexpanded");
        if let Err(e) = wqat::gpu::validate_wgsl(name, src) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_common_module_validates_on_its_own() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/common");
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(on_disk, wqat::gpu::SHADER_MODULES.len(), "build.rs embedded a different set of common modules");
    for (name, src) in wqat::gpu::SHADER_MODULES {
        if let Err(e) = wqat::gpu::validate_wgsl(&format!("common/{name}"), src) {
            panic!("{e}");
        }
    }
}
