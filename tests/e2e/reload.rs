//! SIGHUP on the real binary: a changed `[log] level` is applied at once; sinks are added,
//! restarted with new settings and removed without a restart, losing nothing and repeating
//! nothing already confirmed; other changed settings are named as needing a restart; a file
//! that does not parse changes nothing; a sink whose new settings are invalid or cannot be set
//! up keeps running as it is while the others reload, also when a restart-only section is
//! invalid; a stop while a reload sets its sinks up keeps its deadline.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use eddy_tests::config::{raw, ConfigToml};
use eddy_tests::http_hub::HttpHub;
use eddy_tests::{read_jsonl, Eddy};

use crate::api::{api_address, get};
use crate::uplink::{
    all_delivered, base_ms, check_every_result_in_order, check_oracle, oracle, readings, send, wait_for,
};

fn log_config() -> String {
    ConfigToml::new("gw-hup")
        .table("log")
        .key("level", "info")
        .tcp_source("in")
        .file_sink("results", "{dir}/results.jsonl")
        .to_toml()
}

fn hangup(eddy: &Eddy) {
    let pid = eddy.pid().expect("eddy runs").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

#[test]
fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // [log] level applies only without EDDY_LOG, which the harness sets: empty is unset.
    let mut eddy = Eddy::spawn_in_with_env(dir.path(), &log_config(), &[("EDDY_LOG", "")]).unwrap();
    eddy.wait_for_log("eddy is ready.", Duration::from_secs(30)).unwrap();
    let config_path = dir.path().join("eddy.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();

    std::fs::write(&config_path, "this is not toml [").unwrap();
    hangup(&eddy);
    eddy.wait_for_log("SIGHUP: invalid configuration; keeping the running one.", Duration::from_secs(10))
        .unwrap();

    let changed =
        text.replace("level = \"info\"", "level = \"eddy=debug,info\"").replace("gw-hup", "gw-other");
    std::fs::write(&config_path, changed).unwrap();
    hangup(&eddy);
    eddy.wait_for_log("SIGHUP: log level applied.", Duration::from_secs(10)).unwrap();
    eddy.wait_for_log("take effect only after a restart", Duration::from_secs(10)).unwrap();
    let log = eddy.log();
    let warning = log.lines().find(|line| line.contains("take effect only after a restart")).unwrap();
    assert!(warning.contains("device_id") && !warning.contains("\"log\""), "{warning}");
    assert!(!log.contains("DEBUG"), "no debug line before the reload:\n{log}");
    assert!(eddy.stop().expect("eddy stops").success());
    // The drain logs each stopped component at debug level: shown only with the new level.
    assert!(eddy.log().contains("Component stopped."), "{}", eddy.log());
}

/// Records per delivery of the sinks under test: the duplicate bound is one such batch.
const BATCH: usize = 16;
/// Sensors in every test: each event second closes this many one-second windows.
const SENSORS: usize = 3;

/// An eddy with a TCP source, one-second windows, the endpoint and a file sink `oracle` (the
/// outbox in order); a test adds the sinks under test.
fn config() -> ConfigToml {
    crate::uplink::pipeline("gw-reload", &["window"]).table("api").key("listen", "127.0.0.1:0")
}

fn file_sink(config: ConfigToml, name: &str, path: &str) -> ConfigToml {
    config.file_sink(name, path).key("records", ["window"]).key("batch_max_records", BATCH)
}

fn http_sink(config: ConfigToml, name: &str, url: &str) -> ConfigToml {
    config
        .http_sink(name, url)
        .key("records", ["window"])
        .key("batch_max_records", BATCH)
        .key("max_backoff", "300ms")
        .key("timeout", "1s")
        .key("connect_timeout", "500ms")
}

/// Writes `config` as eddy's file, sends SIGHUP and waits for one more log line with `needle`.
fn reload(eddy: &Eddy, config: &str, needle: &str) {
    let seen = eddy.log().matches(needle).count();
    let text = config.replace("{dir}", &eddy.dir.display().to_string());
    std::fs::write(eddy.dir.join("eddy.toml"), text).unwrap();
    hangup(eddy);
    wait_for(eddy, Duration::from_secs(10), needle, || eddy.log().matches(needle).count() > seen);
}

fn ids(records: &[serde_json::Value]) -> Vec<String> {
    records.iter().map(|record| record["id"].as_str().expect("an id").to_owned()).collect()
}

fn status(eddy: &Eddy) -> serde_json::Value {
    let (code, body) = get(api_address(eddy), "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn uplink_names(status: &serde_json::Value) -> Vec<String> {
    status["uplinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|uplink| uplink["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sighup_moves_a_file_sink_to_its_new_path_losing_and_repeating_nothing() {
    let mut eddy =
        Eddy::start(&file_sink(config(), "results", "{dir}/before.jsonl").to_toml()).expect("eddy starts");
    let (before_path, after_path) = (eddy.dir.join("before.jsonl"), eddy.dir.join("after.jsonl"));
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows in before.jsonl", || {
        read_jsonl(&before_path).len() == 2 * SENSORS
    });

    reload(
        &eddy,
        &file_sink(config(), "results", "{dir}/after.jsonl").to_toml(),
        "SIGHUP: sinks reloaded: added [], changed [results], removed [].",
    );
    wait_for(&eddy, Duration::from_secs(10), "the sink restarted", || {
        eddy.log().contains("Sink restarted with its new settings.")
    });
    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows in after.jsonl", || {
        let mut both = read_jsonl(&before_path);
        both.extend(read_jsonl(&after_path));
        all_delivered(&eddy, 5 * SENSORS, &both)
    });
    assert!(eddy.stop().expect("eddy stops").success());

    let oracle = oracle(&eddy);
    check_oracle(&oracle, SENSORS, 6);
    let (before, after) = (read_jsonl(&before_path), read_jsonl(&after_path));
    assert_eq!(ids(&before), ids(&oracle[..2 * SENSORS]), "before.jsonl holds what came before the reload");
    let mut both = before.clone();
    both.extend(after.iter().cloned());
    // The old sink had confirmed everything when it was retired: the new one starts right
    // after its flushed cursor, so nothing is repeated (the bound would be one batch).
    let repeats = check_every_result_in_order(&oracle, &both, BATCH);
    assert_eq!(repeats, 0, "a confirmed result was delivered again after the reload");
    let before_ids: HashSet<String> = ids(&before).into_iter().collect();
    assert!(ids(&after).iter().all(|id| !before_ids.contains(id)));
}

#[test]
fn a_sink_added_by_sighup_gets_what_the_outbox_still_holds_and_what_follows() {
    // A hub that answers 503 keeps every result in the outbox (its cursor stays at 0).
    let down = HttpHub::start().expect("the HTTP hub starts");
    down.set_status(503);
    let mut eddy = Eddy::start(&http_sink(config(), "down", &down.url()).to_toml()).expect("eddy starts");
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows in the oracle", || {
        oracle(&eddy).len() == 2 * SENSORS
    });

    let hub = HttpHub::start().expect("the HTTP hub starts");
    let both = http_sink(http_sink(config(), "down", &down.url()), "hub", &hub.url()).to_toml();
    reload(&eddy, &both, "SIGHUP: sinks reloaded: added [hub], changed [], removed [].");
    wait_for(&eddy, Duration::from_secs(10), "the outbox's windows at the new hub", || {
        all_delivered(&eddy, 2 * SENSORS, &hub.records())
    });
    assert!(uplink_names(&status(&eddy)).contains(&"hub".to_owned()), "/status lists the new sink");
    let (_, metrics) = get(api_address(&eddy), "/metrics");
    assert!(metrics.contains("eddy_uplink_delivered_total{sink=\"hub\"}"), "{metrics}");

    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows at the new hub", || {
        all_delivered(&eddy, 5 * SENSORS, &hub.records())
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, SENSORS, 6);
    check_every_result_in_order(&oracle, &hub.records(), BATCH);
}

#[test]
fn a_sink_removed_by_sighup_stops_and_no_longer_holds_the_outbox() {
    let down = HttpHub::start().expect("the HTTP hub starts");
    down.set_status(503);
    let mut eddy = Eddy::start(&http_sink(config(), "hub", &down.url()).to_toml()).expect("eddy starts");
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 6));
    wait_for(&eddy, Duration::from_secs(10), "the windows in the oracle", || {
        oracle(&eddy).len() == 5 * SENSORS
    });
    let pinned = status(&eddy);
    let hub_status =
        pinned["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").unwrap();
    assert!(hub_status["outbox_depth"].as_u64().unwrap() >= 5 * 3, "{pinned:#}");
    let pinned_bytes = pinned["store"]["used_bytes"].as_u64().unwrap();
    assert!(pinned_bytes > 0, "{pinned:#}");

    reload(&eddy, &config().to_toml(), "SIGHUP: sinks reloaded: added [], changed [], removed [hub].");
    wait_for(&eddy, Duration::from_secs(10), "the removed sink's task to end", || {
        eddy.log().lines().any(|line| line.contains("Sink stopped.") && line.contains("sink=hub"))
    });
    assert_eq!(uplink_names(&status(&eddy)), ["oracle"]);
    let (_, metrics) = get(api_address(&eddy), "/metrics");
    assert!(!metrics.contains("sink=\"hub\""), "{metrics}");

    // The hub would now take records, but the sink is gone; and the outbox it held is trimmed.
    let requests = down.requests();
    down.set_status(200);
    send(&eddy, &readings(base, SENSORS, 6, 9));
    wait_for(&eddy, Duration::from_secs(10), "the later windows in the oracle", || {
        oracle(&eddy).len() == 8 * SENSORS
    });
    wait_for(&eddy, Duration::from_secs(10), "the outbox trimmed past the removed sink", || {
        status(&eddy)["store"]["used_bytes"].as_u64().unwrap() < pinned_bytes
    });
    assert_eq!(down.requests(), requests, "the removed sink still sent requests");
    assert!(down.records().is_empty());
    assert!(eddy.stop().expect("eddy stops").success());
}

#[test]
fn sink_settings_that_fail_keep_the_running_sinks() {
    let mut eddy =
        Eddy::start(&file_sink(config(), "results", "{dir}/results.jsonl").to_toml()).expect("eddy starts");
    let results_path = eddy.dir.join("results.jsonl");
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows", || {
        read_jsonl(&results_path).len() == 2 * SENSORS
    });

    // Invalid settings of this sink: it keeps running as it is, the key named at ERROR.
    reload(
        &eddy,
        &http_sink(config(), "results", "ftp://hub.invalid/").to_toml(),
        "SIGHUP: cannot set up the new settings of this sink",
    );
    assert!(eddy.log().contains("sinks[1].url"), "{}", eddy.log());
    // Valid, but the new path cannot be opened (its parent is a regular file): the sink keeps
    // its old settings, said at ERROR.
    reload(
        &eddy,
        &file_sink(config(), "results", "{dir}/eddy.toml/results.jsonl").to_toml(),
        "SIGHUP: cannot set up the new settings of this sink",
    );
    let log = eddy.log();
    let line = log.lines().find(|line| line.contains("cannot set up the new settings")).unwrap();
    assert!(line.contains("ERROR") && line.contains("sink=results"), "{line}");
    assert!(!log.contains("SIGHUP: sinks reloaded"), "{log}");

    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows in the old file", || {
        read_jsonl(&results_path).len() == 5 * SENSORS
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_every_result_in_order(&oracle, &read_jsonl(&results_path), 0);
    assert!(!eddy.log().contains("Sink restarted"), "{}", eddy.log());
}

#[test]
fn a_rotated_token_file_restarts_the_hub_sink_with_the_new_secret() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer old-token\n").unwrap();
    let with_token = http_sink(config(), "hub", &hub.url())
        .key("header_files", raw(format!("{{ authorization = \"{}\" }}", token.display())))
        .key("allow_insecure", true)
        .to_toml();
    let mut eddy = Eddy::start(&with_token).expect("eddy starts");
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows at the hub", || {
        all_delivered(&eddy, 2 * SENSORS, &hub.records())
    });
    assert_eq!(hub.last_header("authorization").as_deref(), Some("Bearer old-token"));

    // The file's text is unchanged; only the secret it names is new.
    std::fs::write(&token, "Bearer new-token\n").unwrap();
    reload(&eddy, &with_token, "SIGHUP: sinks reloaded: added [], changed [hub], removed [].");
    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows at the hub", || {
        all_delivered(&eddy, 5 * SENSORS, &hub.records())
    });
    assert_eq!(hub.last_header("authorization").as_deref(), Some("Bearer new-token"));
    assert!(eddy.stop().expect("eddy stops").success());
    let repeats = check_every_result_in_order(&oracle(&eddy), &hub.records(), BATCH);
    assert_eq!(repeats, 0, "the hub had confirmed everything before the reload");
    assert!(!eddy.log().contains("new-token") && !eddy.log().contains("old-token"), "a secret was logged");
}

/// A restart-only section that does not validate: a TLS source whose client CA file is missing.
const SOURCE_WITHOUT_CA: &str = "\n[[sources]]\nkind = \"tcp\"\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n\
    tls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"\n\
    tls_client_ca_file = \"/nonexistent/ca.pem\"\n";

/// An eddy whose hub sink `hub` sends the token in `{dir}/token` (written as `Bearer old`).
fn with_token_file(hub: &HttpHub) -> (Eddy, String) {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("token"), "Bearer old-token\n").unwrap();
    let config = http_sink(config(), "hub", &hub.url())
        .key("header_files", raw("{ authorization = \"{dir}/token\" }"))
        .key("allow_insecure", true)
        .to_toml();
    let eddy = Eddy::start_in(&dir, &config).expect("eddy starts");
    (eddy, config)
}

#[test]
fn a_token_rotation_applies_although_a_source_ca_file_is_missing() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let (mut eddy, config) = with_token_file(&hub);
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows at the hub", || {
        all_delivered(&eddy, 2 * SENSORS, &hub.records())
    });
    assert_eq!(hub.last_header("authorization").as_deref(), Some("Bearer old-token"));

    // The new token, and a source that cannot validate: the sink is applied all the same.
    std::fs::write(eddy.dir.join("token"), "Bearer new-token\n").unwrap();
    reload(
        &eddy,
        &format!("{config}{SOURCE_WITHOUT_CA}"),
        "SIGHUP: sinks reloaded: added [], changed [hub], removed [].",
    );
    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows at the hub", || {
        all_delivered(&eddy, 5 * SENSORS, &hub.records())
    });
    assert_eq!(hub.last_header("authorization").as_deref(), Some("Bearer new-token"));

    // The report matches what was applied: the invalid section by its key, as not applied;
    // the changed restart-only section named; the sinks as they run.
    let log = eddy.log();
    let error =
        log.lines().find(|line| line.contains("SIGHUP: invalid configuration: this setting")).expect(&log);
    assert!(error.contains("ERROR") && error.contains("sources[1].tls_client_ca_file"), "{error}");
    let restart = log.lines().find(|line| line.contains("take effect only after a restart")).expect(&log);
    assert!(restart.contains("\"sources\"") && !restart.contains("\"sinks\""), "{restart}");
    assert_eq!(uplink_names(&status(&eddy)), ["oracle", "hub"]);
    assert!(eddy.stop().expect("eddy stops").success());
    check_every_result_in_order(&oracle(&eddy), &hub.records(), BATCH);
    assert!(!eddy.log().contains("new-token") && !eddy.log().contains("old-token"), "a secret was logged");
}

#[test]
fn an_empty_token_file_on_sighup_keeps_the_old_token() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let (mut eddy, config) = with_token_file(&hub);
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows at the hub", || {
        all_delivered(&eddy, 2 * SENSORS, &hub.records())
    });

    // Half written: the file is there, its content not yet.
    std::fs::write(eddy.dir.join("token"), "").unwrap();
    reload(&eddy, &config, "SIGHUP: cannot set up the new settings of this sink");
    let log = eddy.log();
    let line = log.lines().find(|line| line.contains("cannot set up the new settings")).unwrap();
    assert!(
        line.contains("ERROR")
            && line.contains("sink=hub")
            && line.contains("sinks[1].header_files.authorization"),
        "{line}"
    );
    assert!(line.contains("holds no secret"), "{line}");
    assert!(!log.contains("SIGHUP: sinks reloaded"), "{log}");

    send(&eddy, &readings(base, SENSORS, 3, 6));
    wait_for(&eddy, Duration::from_secs(10), "the later windows at the hub", || {
        all_delivered(&eddy, 5 * SENSORS, &hub.records())
    });
    assert_eq!(hub.last_header("authorization").as_deref(), Some("Bearer old-token"));
    assert!(eddy.stop().expect("eddy stops").success());
    let repeats = check_every_result_in_order(&oracle(&eddy), &hub.records(), BATCH);
    assert_eq!(repeats, 0, "the hub sink ran on untouched");
    assert!(!eddy.log().contains("Sink restarted"), "{}", eddy.log());
}

#[test]
fn a_stop_during_a_sink_reload_keeps_its_deadline_and_loses_nothing() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let dir = tempfile::tempdir().unwrap();
    let first = http_sink(config().root("shutdown_timeout", "3s"), "hub", &hub.url()).to_toml();
    // The test switch makes setting up a reload's sinks take a minute, as a hung file or TLS
    // read would.
    let mut eddy = Eddy::start_in_with_env(dir.path(), &first, &[("EDDY_TEST_SLOW_SINK_SET_UP", "1")])
        .expect("eddy starts");
    let base = base_ms();
    send(&eddy, &readings(base, SENSORS, 0, 3));
    wait_for(&eddy, Duration::from_secs(10), "the first windows at the hub", || {
        all_delivered(&eddy, 2 * SENSORS, &hub.records())
    });
    // The hub goes away mid-stream: what follows is acked and waits in the outbox.
    hub.stop();
    send(&eddy, &readings(base, SENSORS, 3, 6));

    let changed = http_sink(config().root("shutdown_timeout", "3s"), "hub", &hub.url()).key("timeout", "2s");
    reload(&eddy, &changed.to_toml(), "EDDY_TEST_SLOW_SINK_SET_UP=1: ");
    let stop_at = std::time::Instant::now();
    eddy.terminate();
    eddy.wait(Duration::from_secs(30)).expect("eddy exits");
    let took = stop_at.elapsed();
    let log = eddy.log();
    assert!(took < Duration::from_secs(3 + 3), "the stop took {took:?} (shutdown_timeout 3s):\n{log}");
    assert!(log.contains("Stopping while a SIGHUP's sinks were being set up: not applied."), "{log}");
    assert!(!log.contains("SIGHUP: sinks reloaded") && !log.contains("eddy: panic"), "{log}");

    // Nothing acked is lost: with the hub back, a restart delivers the rest.
    hub.restart().expect("the hub listens again");
    let mut eddy = Eddy::start_in(dir.path(), &first).expect("eddy starts again");
    send(&eddy, &readings(base, SENSORS, 6, 7));
    wait_for(&eddy, Duration::from_secs(20), "every window at the hub", || {
        all_delivered(&eddy, 6 * SENSORS, &hub.records())
    });
    assert!(eddy.stop().expect("eddy stops").success());
    check_every_result_in_order(&oracle(&eddy), &hub.records(), BATCH);
}
