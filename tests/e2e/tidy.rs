//! Repository hygiene: every Rust file says what it is for, only the storage module
//! touches sled, and the one `unsafe` block is the malloc tuning.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("read {}: {error}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn workspace_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for crate_dir in ["daemon", "sensors", "sinks", "tests"] {
        rust_files(&root.join(crate_dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    files
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let missing: Vec<String> = workspace_files()
        .into_iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!"))
        .map(|path| path.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading `//!` line: {missing:#?}");
}

#[test]
fn only_the_storage_module_uses_sled() {
    let offenders: Vec<String> = workspace_files()
        .into_iter()
        .filter(|path| !path.components().any(|part| part.as_os_str() == "storage"))
        .filter(|path| !path.ends_with("tidy.rs"))
        .filter(|path| std::fs::read_to_string(path).unwrap().contains("sled::"))
        .map(|path| path.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "sled used outside daemon/src/storage: {offenders:#?}");
}

#[test]
fn the_only_unsafe_code_is_the_malloc_tuning() {
    let mut uses: Vec<String> = Vec::new();
    for path in workspace_files().into_iter().filter(|path| !path.ends_with("tidy.rs")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl") {
                uses.push(format!("{}:{}", path.display(), line_no + 1));
            }
        }
    }
    assert_eq!(uses.len(), 1, "unsafe outside `tune_malloc` in daemon/src/main.rs: {uses:#?}");
    assert!(uses[0].contains("daemon/src/main.rs"), "{uses:?}");
}
