//! The architecture invariants ARCHITECTURE.md states as absences, checked on the source: the
//! engine does no I/O and reads no clock, the daemon's modules import only the layers below
//! them (so there is no import cycle), the library crates depend on none of ours but the
//! leaf `eddy-common`, and the store commits with batches, never a sled transaction.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A file's code as shipped: without its `#[cfg(test)]` module at the end, without comments,
/// and empty for a file of tests (`tests.rs`, `*_tests.rs`).
fn shipped_code(path: &Path) -> String {
    let name = path.file_name().expect("file name").to_string_lossy();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .filter(|line| !line.trim_start().starts_with("#[cfg(test)]"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_engine_does_no_io_and_reads_no_clock() {
    let engine = root().join("daemon/src/engine");
    let forbidden = [
        "tokio",
        "sled",
        "std::fs",
        "std::net",
        "std::thread",
        "SystemTime",
        "Instant",
        "fastrand",
        "std::env",
        "std::io",
    ];
    let mut offenders = Vec::new();
    let files = rust_files(&engine);
    assert!(files.len() >= 6, "found only {} engine files", files.len());
    for path in files {
        let code = shipped_code(&path);
        for word in forbidden {
            if code.contains(word) {
                offenders.push(format!("{} uses {word}", path.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "the engine must stay a pure state machine: {offenders:#?}");
}

/// The daemon's modules, lowest first: each may import (`crate::x`) only the ones before it.
const DAEMON_LAYERS: [&str; 11] =
    ["alloc", "wire", "engine", "storage", "stats", "config", "pipeline", "delivery", "ops", "run", "cli"];

/// The layer of a daemon source file (by its first path part under `src/`).
fn layer_of(path: &Path, src: &Path) -> Option<usize> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let module = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    DAEMON_LAYERS.iter().position(|layer| *layer == module)
}

#[test]
fn daemon_modules_import_only_the_layers_below_them() {
    let src = root().join("daemon/src");
    let mut checked = 0;
    let mut offenders = Vec::new();
    for path in rust_files(&src) {
        let Some(layer) = layer_of(&path, &src) else { continue };
        checked += 1;
        let code = shipped_code(&path);
        for (idx, _) in code.match_indices("crate::") {
            let rest = &code[idx + "crate::".len()..];
            let module: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let Some(imported) = DAEMON_LAYERS.iter().position(|layer| *layer == module) else { continue };
            if imported > layer {
                offenders.push(format!(
                    "{} ({}) imports crate::{module}, a higher layer",
                    path.display(),
                    DAEMON_LAYERS[layer]
                ));
            }
        }
    }
    assert!(checked >= 30, "checked only {checked} daemon files: is the layer list out of date?");
    offenders.sort();
    offenders.dedup();
    assert!(offenders.is_empty(), "import against the layering of ARCHITECTURE.md: {offenders:#?}");
}

#[test]
fn every_daemon_module_has_a_layer() {
    let src = root().join("daemon/src");
    let top_level = ["lib.rs", "main.rs", "default_config.toml"];
    let mut unplaced = Vec::new();
    for entry in std::fs::read_dir(&src).expect("daemon/src") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        if top_level.contains(&name.as_str()) {
            continue;
        }
        if layer_of(&path, &src).is_none() {
            unplaced.push(name);
        }
    }
    assert!(
        unplaced.is_empty(),
        "daemon modules missing from DAEMON_LAYERS (and from ARCHITECTURE.md's code map): {unplaced:?}"
    );
}

/// The `eddy*` crates a manifest's `[dependencies]` name.
fn our_dependencies(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(manifest)).expect("manifest");
    let mut in_dependencies = false;
    let mut ours = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && line.starts_with("eddy") {
            ours.push(line.split(['.', ' ', '=']).next().unwrap_or(line).to_owned());
        }
    }
    ours
}

#[test]
fn library_crates_depend_on_no_crate_of_ours_but_common() {
    assert_eq!(our_dependencies("common/Cargo.toml"), Vec::<String>::new(), "common is a leaf");
    for manifest in ["sensors/Cargo.toml", "sinks/Cargo.toml"] {
        let ours = our_dependencies(manifest);
        assert!(
            ours.iter().all(|name| name == "eddy-common"),
            "{manifest} depends on {ours:?}: sensors and sinks may use only eddy-common"
        );
    }
}

/// eddy commits with batches (`apply_batch`: results, state and the log position in one
/// atomic write), never with sled transactions: they serialise on sled's global write lock and
/// retry, and their undo path is the one part of the vendored sled that eddy patched without
/// using it (vendor/README.md).
#[test]
fn the_store_uses_no_sled_transaction() {
    let storage = root().join("daemon/src/storage");
    let files = rust_files(&storage);
    assert!(files.len() >= 6, "found only {} storage files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| {
            let code = shipped_code(path);
            code.contains("transaction(") || code.contains("Transactional")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "the store must commit with batches, not sled transactions: {offenders:#?}"
    );
}
