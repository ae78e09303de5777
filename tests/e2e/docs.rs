//! The documentation cannot drift: every hub example in the README (MQTT brokers, AWS IoT Core,
//! Azure IoT Hub, Azure Event Hubs / Kafka, HTTP) is a valid `[[sinks]]` entry for `eddy check-config`.

use std::process::Command;

use eddy_tests::eddy_binary;

#[test]
fn the_readme_hub_examples_are_valid_sinks() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        // Hub examples are `[[sinks]]` blocks; source examples (serial, MQTT sources) are
        // checked whole by the sources' own README test.
        .filter(|block| block.contains("[[sinks]]") && !block.contains("[[sources]]"))
        .filter(|block| {
            ["mqtt", "http", "kafka"].iter().any(|kind| block.contains(&format!("kind = \"{kind}\"")))
        })
        .collect();
    assert!(blocks.len() >= 4, "README should show Mosquitto, AWS, Azure and HTTP examples");
    let dir = tempfile::tempdir().unwrap();
    for block in blocks {
        // The examples name files under /etc/eddy/: stand-ins exist here (their contents are
        // read when the uplink starts, not by check-config, except secrets).
        let mut text = block.to_owned();
        while let Some(start) = text.find("\"/etc/eddy/") {
            let end = start + 1 + text[start + 1..].find('"').unwrap();
            let name = text[start + 1..end].rsplit('/').next().unwrap().to_owned();
            let stand_in = dir.path().join(&name);
            std::fs::write(&stand_in, "stand-in\n").unwrap();
            text.replace_range(start..=end, &format!("\"{}\"", stand_in.display()));
        }
        let config = format!(
            "device_id = \"gw-17\"\ndata_dir = \"{}\"\n[[sources]]\nkind = \"simulator\"\n{text}",
            dir.path().join("data").display()
        );
        let path = dir.path().join("eddy.toml");
        std::fs::write(&path, &config).unwrap();
        let output = Command::new(eddy_binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .env("EDDY_HUB_PASSWORD", "stand-in")
            .output()
            .expect("eddy runs");
        assert!(
            output.status.success(),
            "README example:\n{block}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
