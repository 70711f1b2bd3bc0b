//! Embeds every `shaders/*.wgsl` into the binary: writes `$OUT_DIR/shaders.rs` with one
//! `(name, source)` pair per file, so adding a shader needs no registry edit.
//!
//! WGSL has no includes, so shared helpers live in `shaders/common/*.wgsl` and a shader
//! pulls one in with a comment line of its own:
//!
//! ```wgsl
//! // #include common/fake_quant.wgsl
//! ```
//!
//! The line is replaced by the module's text (each module at most once per shader, modules
//! may include modules). The assembled sources are what the registry compiles and what
//! `tests/shaders_valid.rs` validates with naga; `SHADER_MODULES` lists the common modules
//! so that they are validated on their own as well.

use std::{collections::HashSet, env, fs, path::Path};

const DIRECTIVE: &str = "// #include ";

/// Appends `text` to `out` with every include directive expanded (depth-first, once each).
fn expand(dir: &Path, file: &str, text: &str, seen: &mut HashSet<String>, out: &mut String, depth: usize) {
    assert!(depth < 16, "shaders/{file}: include nesting deeper than 16 (a cycle?)");
    for line in text.lines() {
        if let Some(rest) = line.trim_start().strip_prefix(DIRECTIVE) {
            let target = rest.trim();
            assert!(
                target.starts_with("common/") && target.ends_with(".wgsl") && !target.contains(".."),
                "shaders/{file}: include `{target}` must name shaders/common/<name>.wgsl"
            );
            if seen.insert(target.to_string()) {
                let path = dir.join(target);
                println!("cargo:rerun-if-changed={}", path.display());
                let inner =
                    fs::read_to_string(&path).unwrap_or_else(|e| panic!("shaders/{file}: include {target}: {e}"));
                out.push_str(&format!("// ---- begin {target}\n"));
                expand(dir, target, &inner, seen, out, depth + 1);
                out.push_str(&format!("// ---- end {target}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn wgsl_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    names.sort();
    names
}

fn main() {
    let dir = Path::new("shaders");
    let out_dir = env::var("OUT_DIR").unwrap();
    let assembled_dir = Path::new(&out_dir).join("shaders");
    fs::create_dir_all(&assembled_dir).unwrap();
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=shaders/common");
    let mut out = String::from(
        "/// Every `shaders/*.wgsl` by file stem, includes expanded.\npub static SHADER_SOURCES: &[(&str, &str)] = &[\n",
    );
    for n in wgsl_names(dir) {
        println!("cargo:rerun-if-changed=shaders/{n}");
        let stem = n.trim_end_matches(".wgsl");
        let text = fs::read_to_string(dir.join(&n)).unwrap();
        let mut src = String::new();
        expand(dir, &n, &text, &mut HashSet::new(), &mut src, 0);
        let path = assembled_dir.join(&n);
        fs::write(&path, src).unwrap();
        out.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", path.display().to_string()));
    }
    out.push_str("];\n");
    out.push_str(
        "/// Every `shaders/common/*.wgsl` by file stem, as written (shared helpers; see build.rs).\npub static SHADER_MODULES: &[(&str, &str)] = &[\n",
    );
    let common = dir.join("common");
    if common.is_dir() {
        for n in wgsl_names(&common) {
            println!("cargo:rerun-if-changed=shaders/common/{n}");
            let stem = n.trim_end_matches(".wgsl");
            let abs = fs::canonicalize(common.join(&n)).expect("canonical path");
            out.push_str(&format!("    ({stem:?}, include_str!({:?})),\n", abs.display().to_string()));
        }
    }
    out.push_str("];\n");
    fs::write(Path::new(&out_dir).join("shaders.rs"), out).unwrap();
}
