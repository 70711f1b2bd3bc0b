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

/// Every kernel's Rust `Params` (declared with `kernel_params!`, listed in
/// `wqat::kernels::KERNEL_PARAMS`) has the layout of the WGSL uniform of each shader it
/// fills (naga reflection of the assembled source): same size, every named field at the
/// same offset with the same size.
#[test]
fn every_uniform_matches_its_rust_params() {
    let mut errors = Vec::new();
    for layout in wqat::kernels::KERNEL_PARAMS {
        if let Err(e) = layout.check() {
            errors.extend(e);
        }
    }
    assert!(errors.is_empty(), "uniform layouts disagree:\n{}", errors.join("\n"));
}

/// Every shader with a uniform at binding 0 is covered by some Rust declaration.
#[test]
fn every_uniform_has_a_rust_declaration() {
    let declared: Vec<&str> = wqat::kernels::KERNEL_PARAMS.iter().flat_map(|l| l.shaders.iter().copied()).collect();
    let mut missing = Vec::new();
    for (name, _) in wqat::gpu::SHADER_SOURCES {
        let uniform = wqat::gpu::uniform_layout(name).unwrap_or_else(|e| panic!("{e}"));
        if uniform.is_some() && !declared.contains(name) {
            missing.push(*name);
        }
    }
    assert!(
        missing.is_empty(),
        "shaders whose uniform no kernel_params! declaration mirrors (add one to src/kernels/mod.rs KERNEL_PARAMS): {missing:?}"
    );
}

/// The check itself catches a disagreement (a field moved, a size changed).
#[test]
fn a_wrong_layout_is_reported() {
    let good = wqat::kernels::KERNEL_PARAMS.iter().find(|l| l.shaders == ["activation"]).expect("activation params");
    assert!(good.check().is_ok());
    let moved: Vec<(&str, usize, usize)> =
        good.fields.iter().map(|&(n, o, s)| if n == "value" { (n, o - 4, s) } else { (n, o, s) }).collect();
    let bad = wqat::kernels::ParamsLayout { fields: Box::leak(moved.into_boxed_slice()), ..*good };
    let err = bad.check().unwrap_err();
    assert!(err.iter().any(|e| e.contains("`value`")), "{err:?}");
    let bigger = wqat::kernels::ParamsLayout { size: good.size + 16, ..*good };
    assert!(bigger.check().unwrap_err().iter().any(|e| e.contains("size")));
}
