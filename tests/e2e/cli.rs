//! The command line: configuration checks and their exit codes.

use std::process::Command;

use eddy_tests::eddy_binary;

fn eddy(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(eddy_binary()).args(args).output().expect("eddy runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_printed_default_config_is_valid() {
    let (code, default_config, _) = eddy(&["print-default-config"]);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, default_config).unwrap();
    let (code, _, stderr) = eddy(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eddy.toml");
    std::fs::write(
        &path,
        "device_id = \"gw\"\ndata_dir = \"d\"\n[[sources]]\nkind = \"simulator\"\n\
         [[windows]]\nname = \"w\"\nlength = \"5s\"\nslide = \"10s\"\n",
    )
    .unwrap();
    let (code, _, stderr) = eddy(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("windows[0]") && stderr.contains("slide"), "{stderr}");
    // `run` refuses it the same way, before touching any data.
    let (code, _, stderr) = eddy(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!dir.path().join("d").exists());
}

#[test]
fn a_deprecated_key_loads_with_a_warning_naming_its_new_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eddy.toml");
    let cert = dir.path().join("c.pem");
    std::fs::write(&cert, b"").unwrap();
    std::fs::write(
        &path,
        format!(
            "device_id = \"gw\"\ndata_dir = \"d\"\n[[sources]]\nkind = \"mqtt\"\n\
             url = \"mqtts://127.0.0.1:8883\"\nclient_id = \"gw-eddy\"\ntopics = [\"t/#\"]\n\
             ca_file = \"{0}\"\nclient_cert = \"{0}\"\nclient_key = \"{0}\"\n",
            cert.display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = eddy(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: sources[0].client_cert is deprecated: write sources[0].cert_file instead")
            && stderr.contains("sources[0].client_key is deprecated"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_exits_2_naming_the_file() {
    let (code, _, stderr) = eddy(&["check-config", "--config", "/nonexistent/eddy.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/eddy.toml"), "{stderr}");
}

#[test]
fn an_unopenable_store_exits_3_and_says_how_to_recover() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("data");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"gw\"\ndata_dir = \"{}\"\n[[sources]]\nkind = \"simulator\"\n",
            blocker.display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = eddy(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("move the directory aside"), "{stderr}");
}

#[test]
fn the_readme_example_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a ```toml example");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, block).unwrap();
    let (code, _, stderr) = eddy(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "README example: {stderr}");
}
