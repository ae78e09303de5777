//! Repository hygiene: every Rust file says what it is for, only the storage module
//! touches sled, `unsafe` is only the malloc tuning, the musl builds' allocator and the clock
//! reads, and the test switches exist
//! only in a build with the `test-switches` feature.

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
    // `fuzz` is not a workspace member (it builds on nightly only) but its files are ours too.
    for crate_dir in ["common", "daemon", "sensors", "sinks", "tests", "fuzz"] {
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
fn the_only_unsafe_code_is_the_malloc_tuning_the_allocator_and_the_clock_reads() {
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
    // `tune_malloc` (daemon/src/main.rs): mallopt; common/src/clock.rs: clock_gettime
    // (CLOCK_BOOTTIME), and adjtimex into a zeroed struct (read only); daemon/src/alloc.rs: the
    // musl builds' `GlobalAlloc` (mmap, mremap, munmap, the system allocator) and its tests.
    let in_main = uses.iter().filter(|at| at.contains("daemon/src/main.rs")).count();
    let in_clock = uses.iter().filter(|at| at.contains("common/src/clock.rs")).count();
    let in_alloc = uses.iter().filter(|at| at.contains("daemon/src/alloc.rs")).count();
    assert_eq!(
        (in_main, in_clock, in_alloc),
        (1, 3, 24),
        "unsafe outside tune_malloc, the allocator and the clock reads, or new unsafe in them: {uses:#?}"
    );
    assert_eq!(uses.len(), 28, "{uses:#?}");
}

/// Line ranges (0-based, inclusive) of `#[cfg(feature = "test-switches")] mod test_switches { … }`
/// blocks in `text`.
fn test_switch_modules(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut modules = Vec::new();
    for (line_idx, line) in lines.iter().enumerate() {
        if line.trim() != "#[cfg(feature = \"test-switches\")]" {
            continue;
        }
        let Some(next) = lines.get(line_idx + 1) else { continue };
        if !next.trim_start().starts_with("mod test_switches {") {
            continue;
        }
        let indent = &next[..next.len() - next.trim_start().len()];
        let close = format!("{indent}}}");
        let end = (line_idx + 2..lines.len()).find(|&end_idx| lines[end_idx] == close);
        modules.push((
            line_idx,
            end.unwrap_or_else(|| panic!("unclosed `mod test_switches` at line {}", line_idx + 2)),
        ));
    }
    modules
}

#[test]
fn test_switches_are_read_only_in_a_build_with_the_test_switches_feature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("daemon/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("\ntest-switches = []\n"),
        "daemon/Cargo.toml lost the `test-switches` feature"
    );
    assert!(
        !manifest.lines().any(|line| line.starts_with("default") && line.contains("test-switches")),
        "`test-switches` must stay out of the default features: release builds would read the switches"
    );

    // The daemon names the variables only inside the feature-gated module, so a default build
    // (cargo build --release, cross/cross.sh, cargo-deb) has no code that reads them.
    let mut daemon_files = Vec::new();
    rust_files(&root.join("daemon/src"), &mut daemon_files);
    let (mut gated, mut ungated) = (Vec::new(), Vec::new());
    for path in daemon_files {
        let text = std::fs::read_to_string(&path).unwrap();
        let modules = test_switch_modules(&text);
        for (line_idx, line) in text.lines().enumerate() {
            if line.contains("EDDY_TEST_MQTT_HOLD")
                || line.contains("EDDY_TEST_MQTT_NO_ACK")
                || line.contains("EDDY_TEST_PANIC")
                || line.contains("EDDY_TEST_SLOW_SINK_SET_UP")
            {
                let place = format!("{}:{}", path.display(), line_idx + 1);
                let inside = modules.iter().any(|&(start, end)| (start..=end).contains(&line_idx));
                if inside {
                    gated.push(place)
                } else {
                    ungated.push(place)
                }
            }
        }
    }
    assert!(
        ungated.is_empty(),
        "test switches outside `#[cfg(feature = \"test-switches\")] mod test_switches`: {ungated:#?}"
    );
    assert_eq!(gated.len(), 4, "expected the four switch names in the gated modules: {gated:#?}");

    // No other crate reads them from the environment itself.
    for path in workspace_files().into_iter().filter(|path| !path.starts_with(root.join("tests"))) {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line_idx, line) in text.lines().enumerate() {
            assert!(
                !(line.contains("env::var")
                    && (line.contains("EDDY_TEST_MQTT_")
                        || line.contains("EDDY_TEST_PANIC")
                        || line.contains("EDDY_TEST_SLOW_SINK_SET_UP"))),
                "{}:{} reads a test switch outside the daemon's gated module",
                path.display(),
                line_idx + 1
            );
        }
    }

    // The end-to-end tests' binary has the feature; the device and package builds do not.
    let test_all = std::fs::read_to_string(root.join("scripts/test-all.sh")).unwrap();
    assert!(test_all.contains("cargo build --locked -p eddy --bin eddy --features test-switches"));
    for script in ["cross/cross.sh", "scripts/nspawn-test.sh"] {
        let text = std::fs::read_to_string(root.join(script)).unwrap();
        assert!(
            !text.contains("test-switches") && !text.contains("--all-features"),
            "{script} must build eddy without the `test-switches` feature"
        );
    }
}
