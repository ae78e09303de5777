//! Tests of the configuration: defaults, and every mistake reported with its key.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, ConfigError, SinkKind, SourceKind};

fn load_str(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text)
}

const MINIMAL: &str = "device_id = \"gw\"\ndata_dir = \"/tmp/x\"\n[[sources]]\nkind = \"simulator\"\n";

fn check_err(extra: &str, expected_fragment: &str) {
    let text = format!("{MINIMAL}{extra}");
    let error = load_str(&text).expect_err("config should be rejected").to_string();
    assert!(error.contains(expected_fragment), "error `{error}` should mention `{expected_fragment}`");
}

#[test]
fn built_in_default_config_is_valid_and_matches_the_documented_pipeline() {
    let config = Config::load(None).expect("default config loads");
    assert_eq!(config.device_id, "gw-01");
    assert_eq!(config.engine.windows.len(), 1);
    assert_eq!(config.engine.windows[0].length_ms(), 10_000);
    assert_eq!(config.engine.windows[0].slide_ms(), 5_000);
    assert_eq!(config.engine.batch_interval, Duration::from_secs(2));
    assert!(matches!(config.sources[0].kind, SourceKind::Simulator { .. }));
    assert!(matches!(config.sinks[0].kind, SinkKind::Console));
    assert_eq!(config.data_dir, PathBuf::from("./eddy-data"));
}

#[test]
fn toml_text_loads_like_a_file_and_bad_text_is_a_load_error() {
    let config = Config::from_toml_str(crate::config::DEFAULT_CONFIG_TOML).expect("default config loads");
    assert_eq!(config.device_id, "gw-01");
    assert!(matches!(Config::from_toml_str("device_id = "), Err(ConfigError::Load(_))));
    assert!(matches!(Config::from_toml_str(""), Err(ConfigError::Invalid { .. } | ConfigError::Load(_))));
}

#[test]
fn invalid_values_are_reported_with_their_key() {
    check_err("[batch]\ninterval = \"0s\"\n", "batch.interval");
    check_err("[ingest]\nflush_interval = \"5s\"\n", "ingest.flush_interval");
    check_err(
        "[engine]\ncheckpoint_interval = \"1s\"\nresult_commit_delay = \"1s\"\n",
        "engine.result_commit_delay",
    );
    check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\nslide = \"10s\"\n", "windows[0]: slide");
    check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\nfields = [\"nope\"]\n", "windows[0].fields");
    check_err(
        "[[windows]]\nname = \"w\"\nlength = \"5s\"\naggregates = [\"median\"]\n",
        "windows[0].aggregates",
    );
    check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\ntime = \"wall\"\n", "windows[0].time");
    check_err("[[sources]]\nkind = \"tcp\"\nlisten = \"nowhere\"\n", "sources[1].listen");
    check_err("[[sources]]\nkind = \"tcp\"\nformat = \"xml\"\n", "sources[1].format");
    check_err("[[sources]]\nkind = \"tcp\"\nrate = 2.0\n", "sources[1].rate");
    check_err("[[sources]]\nkind = \"modbus\"\n", "sources[1].kind");
    check_err("[[sources]]\nkind = \"tcp\"\nmax_sessions = 8\n", "sources[1].max_sessions");
    check_err("[[sources]]\nkind = \"simulator\"\nmax_sessions = 8\n", "sources[1].max_sessions");
    check_err("[[sinks]]\nkind = \"file\"\n", "sinks[0].path");
    check_err("[[sinks]]\nkind = \"file\"\npath = \"o\"\nmax_file_bytes = 10\n", "sinks[0].max_file_bytes");
    check_err("[[sinks]]\nkind = \"file\"\npath = \"o\"\nmax_files = 0\n", "sinks[0].max_files");
    check_err("[[windows]]\nname = \"batch\"\nlength = \"5s\"\n", "windows[0].name");
    check_err("[schema]\nfields = [{ name = \"late\" }]\n", "schema.fields[0].name");
    check_err("[[sinks]]\nkind = \"console\"\nrecords = [\"raw\"]\n", "sinks[0].records");
    check_err(
        "[[sinks]]\nkind = \"console\"\n[[sinks]]\nkind = \"console\"\nname = \"console-0\"\n",
        "used twice",
    );
}

#[test]
fn sources_share_the_gateway_sensor_cap_and_may_not_overbook_it_issue_14() {
    let two = "[[sources]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n";
    let config = load_str(&format!("{MINIMAL}{two}")).expect("two sources");
    let caps: Vec<usize> = config.sources.iter().map(|source| source.max_sensors).collect();
    assert_eq!((config.max_sensors, caps), (10_000, vec![5000, 5000]));
    // A written cap is kept; the sources without one share what it leaves.
    let text = format!("{MINIMAL}max_sensors = 10\n{two}{two}[ingest]\nmax_sensors = 100\n");
    let config = load_str(&text).expect("one written cap");
    let caps: Vec<usize> = config.sources.iter().map(|source| source.max_sensors).collect();
    assert_eq!(caps, vec![10, 45, 45]);
    check_err("max_sensors = 0\n", "sources[0].max_sensors");
    check_err("max_sensors = 10001\n", "ingest.max_sensors");
    check_err(
        "[ingest]\nmax_sensors = 1\n[[sources]]\nkind = \"simulator\"\nsensors = 1\n",
        "ingest.max_sensors",
    );
}

#[test]
fn count_by_max_values_is_checked() {
    let config = load_str(MINIMAL).expect("minimal");
    assert_eq!(config.engine.count_by_max_values, 64);
    check_err("[engine]\ncount_by_max_values = 0\n", "engine.count_by_max_values");
    check_err("[engine]\ncount_by_max_values = 10001\n", "engine.count_by_max_values");
}

#[test]
fn forget_after_is_at_least_what_a_sensor_keeps_open() {
    let config = load_str(MINIMAL).expect("minimal");
    assert_eq!(config.engine.forget_after, Some(Duration::from_secs(24 * 3600)));
    let config = load_str(&format!("{MINIMAL}[engine]\nforget_after = \"off\"\n")).expect("off");
    assert_eq!(config.engine.forget_after, None);
    check_err("[engine]\nforget_after = \"1m\"\n", "engine.forget_after");
    check_err("[engine]\nidle_timeout = \"10s\"\nforget_after = \"5s\"\n", "engine.forget_after");
    check_err(
        "[engine]\nidle_timeout = \"10s\"\nforget_after = \"20s\"\n[[windows]]\nname = \"p\"\nlength = \"1m\"\ntime = \"processing\"\n",
        "engine.forget_after",
    );
    let text = format!("{MINIMAL}[engine]\nidle_timeout = \"10s\"\nforget_after = \"10s\"\n");
    assert_eq!(
        load_str(&text).expect("equal to idle_timeout").engine.forget_after,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn log_level_takes_a_default_level_and_target_levels() {
    for level in ["info", "WARN", "off", "eddy=debug,info", "eddy::storage=trace,rumqttc=warn,error"] {
        let config = load_str(&format!("{MINIMAL}[log]\nlevel = \"{level}\"\n")).expect(level);
        assert_eq!(config.log_level.as_deref(), Some(level));
    }
    check_err("[log]\nlevel = \"eddy=loud\"\n", "log.level");
    check_err("[log]\nlevel = \"eddy=debug=info\"\n", "log.level");
}

#[test]
fn unknown_keys_and_wrong_types_are_rejected() {
    check_err("colour = \"blue\"\n", "colour");
    check_err("[batch]\ninterval = 5\n", "interval");
}

#[test]
fn a_custom_schema_drives_window_fields() {
    let config = load_str(&format!(
        "{MINIMAL}[schema]\nfields = [{{ name = \"pressure\", required = true, min = 0.0, max = 2000.0 }}]\n\
         [[windows]]\nname = \"p\"\nlength = \"1m\"\n"
    ))
    .expect("valid");
    assert_eq!(config.engine.field_names, vec!["pressure".to_owned()]);
    assert_eq!(config.engine.windows[0].fields(), &[0]);
}

fn load_source(source: &str) -> Result<Config, ConfigError> {
    load_str(&format!("device_id = \"gw\"\ndata_dir = \"/tmp/x\"\n[[sources]]\n{source}"))
}

#[track_caller]
fn check_source_err(source: &str, expected_key: &str) {
    let error = load_source(source).expect_err("config should be rejected").to_string();
    assert!(error.starts_with(expected_key), "error `{error}` should name `{expected_key}`");
}

fn load_extra(extra: &str) -> Result<Config, ConfigError> {
    load_str(&format!("{MINIMAL}{extra}"))
}

#[track_caller]
fn check_key(extra: &str, key: &str) {
    let error = load_extra(extra).expect_err("must be rejected").to_string();
    assert!(error.starts_with(key), "error `{error}` should name `{key}`");
}

#[test]
fn serial_source_keys_are_typed_with_defaults() {
    let config = load_source(
        "kind = \"serial\"\npath = \"/dev/ttyUSB0\"\nbaud = 115200\nparity = \"even\"\nformat = \"csv\"\n",
    )
    .unwrap();
    let SourceKind::Serial { serial, format } = &config.sources[0].kind else { panic!() };
    assert_eq!((serial.baud, serial.data_bits, serial.stop_bits), (115_200, 8, 1));
    assert_eq!(serial.parity, eddy_sensors::SerialParity::Even);
    assert_eq!(*format, eddy_sensors::Format::Csv);
    assert_eq!(config.sources[0].name, "serial-0");
}

#[test]
fn serial_source_errors_name_the_key() {
    check_source_err("kind = \"serial\"\n", "sources[0].path");
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\nbaud = 0\n", "sources[0].baud");
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\ndata_bits = 9\n", "sources[0].data_bits");
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\nparity = \"mark\"\n", "sources[0].parity");
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\nstop_bits = 3\n", "sources[0].stop_bits");
    check_source_err(
        "kind = \"serial\"\npath = \"/dev/x\"\nline_separator = \"nul\"\n",
        "sources[0].line_separator",
    );
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\nlisten = \"127.0.0.1:1\"\n", "sources[0].listen");
    check_source_err("kind = \"serial\"\npath = \"/dev/x\"\ntopics = [\"a\"]\n", "sources[0].topics");
    check_source_err("kind = \"tcp\"\nbaud = 9600\n", "sources[0].baud");
}

#[test]
fn mqtt_source_keys_are_typed_with_a_persistent_session_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let config = load_source(&format!(
        "kind = \"mqtt\"\nurl = \"mqtt://broker:1884\"\nclient_id = \"gw-17\"\ntopics = [\"sensors/+/reading\"]\n\
         username = \"eddy\"\npassword_file = \"{}\"\nsensor_from_topic = 1\nkeep_alive = \"10s\"\nallow_insecure = true\n",
        password_file.display()
    ))
    .unwrap();
    let SourceKind::Mqtt { mqtt, .. } = &config.sources[0].kind else { panic!() };
    assert_eq!((mqtt.broker.host.as_str(), mqtt.broker.port), ("broker", 1884));
    assert!(!mqtt.clean_session);
    assert_eq!(mqtt.qos, eddy_sensors::MqttQos::AtLeastOnce);
    assert_eq!(mqtt.password.as_ref().map(eddy_sensors::Secret::expose), Some("s3cret"));
    assert_eq!(mqtt.sensor_from_topic, Some(1));
    assert!(!format!("{config:?}").contains("s3cret"), "the password is never printed");
}

#[test]
fn mqtt_source_errors_name_the_key() {
    let base = "kind = \"mqtt\"\nurl = \"mqtt://localhost\"\nclient_id = \"gw\"\ntopics = [\"a/#\"]\n";
    check_source_err("kind = \"mqtt\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n", "sources[0].url");
    check_source_err(
        "kind = \"mqtt\"\nurl = \"http://x\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n",
        "sources[0].url",
    );
    check_source_err("kind = \"mqtt\"\nurl = \"mqtt://x\"\ntopics = [\"a\"]\n", "sources[0].client_id");
    check_source_err("kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\n", "sources[0].topics");
    check_source_err(
        "kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\ntopics = [\"a/#/b\"]\n",
        "sources[0].topics[0]",
    );
    check_source_err(
        "kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\ntopics = [\"a+\"]\n",
        "sources[0].topics[0]",
    );
    check_source_err(&format!("{base}qos = 3\n"), "sources[0].qos");
    check_source_err(
        &format!("{base}password_env = \"EDDY_TEST_SURELY_UNSET_VARIABLE\"\nusername = \"u\"\n"),
        "sources[0].password_env",
    );
    check_source_err(
        &format!("{base}password_file = \"/nonexistent/pw\"\nusername = \"u\"\n"),
        "sources[0].password_file",
    );
    check_source_err(
        "kind = \"mqtt\"\nurl = \"mqtts://x\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n",
        "sources[0].ca_file",
    );
    check_source_err(&format!("{base}ca_file = \"/ca.pem\"\n"), "sources[0].ca_file");
    check_source_err(
        &format!("{base}sensor_from_topic = 1\nformat = \"csv\"\n"),
        "sources[0].sensor_from_topic",
    );
    check_source_err(&format!("{base}keep_alive = \"1s\"\n"), "sources[0].keep_alive");
    check_source_err(&format!("{base}max_in_flight = 0\n"), "sources[0].max_in_flight");
    check_source_err(&format!("{base}rate = 1.0\n"), "sources[0].rate");
    check_source_err(&format!("{base}path = \"/dev/x\"\n"), "sources[0].path");
}

#[test]
fn uplink_and_budget_mistakes_name_their_key() {
    check_key("[[sinks]]\nkind = \"mqtt\"\n", "sinks[0].url");
    check_key("[[sinks]]\nkind = \"mqtt\"\nurl = \"tcp://x\"\n", "sinks[0].url");
    check_key("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\ntopic = \"a/{sensor}\"\n", "sinks[0].topic");
    check_key(
        "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\npassword_env = \"EDDY_TEST_UNSET_VAR\"\n",
        "sinks[0].password_env",
    );
    check_key("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\ntimeout = \"1s\"\n", "sinks[0].timeout");
    check_key(
        "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\nca_file = \"/nonexistent.pem\"\n",
        "sinks[0].ca_file",
    );
    check_key("[[sinks]]\nkind = \"http\"\nurl = \"ftp://x\"\n", "sinks[0].url");
    check_key("[[sinks]]\nkind = \"http\"\nurl = \"http://x\"\ntopic = \"t\"\n", "sinks[0].topic");
    check_key("[[sinks]]\nkind = \"http\"\nurl = \"http://x\"\nheader_env = { authorization = \"EDDY_TEST_UNSET_VAR\" }\n", "sinks[0].header_env.authorization");
    check_key("[[sinks]]\nkind = \"console\"\nurl = \"http://x\"\n", "sinks[0].url");
    check_key("[[sinks]]\nkind = \"console\"\nrate_limit = 0.0\n", "sinks[0].rate_limit");
    check_key("[[sinks]]\nkind = \"console\"\nbatch_max_records = 0\n", "sinks[0].batch_max_records");
    check_key("[[sinks]]\nkind = \"console\"\nrecords = [\"raw\"]\n", "sinks[0].records");
    check_key("[engine]\nforward_raw = true\n[[sinks]]\nkind = \"console\"\n", "engine.forward_raw");
    check_key("[storage]\npolicy = \"panic\"\n", "storage.policy");
    check_key("[storage]\nmax_bytes = 1000\n", "storage.max_bytes");
    check_key("[storage]\ndead_letter_max_bytes = 100\n", "storage.dead_letter_max_bytes");
    check_key("[storage]\ndead_letter_max_bytes = 99999999999999\n", "storage.dead_letter_max_bytes");
    let config = load_extra("[storage]\ndead_letter_max_bytes = 65536\n").expect("valid");
    assert_eq!(config.budget.dead_letter_max_bytes, 65536);
    // Downsampling levels (issue #17): durations, finest first, each a multiple of the one before.
    check_key("[storage]\ndownsample_levels = []\n", "storage.downsample_levels");
    check_key("[storage]\ndownsample_levels = [\"soon\"]\n", "storage.downsample_levels");
    check_key("[storage]\ndownsample_levels = [\"30s\"]\n", "storage.downsample_levels");
    check_key("[storage]\ndownsample_levels = [\"1h\", \"90m\"]\n", "storage.downsample_levels");
    check_key("[storage]\ndownsample_levels = [\"1d\", \"1h\"]\n", "storage.downsample_levels");
    let config = load_extra("[storage]\ndownsample_levels = [\"15m\", \"1h\", \"1d\"]\n").expect("valid");
    assert_eq!(config.budget.downsample_levels, [900, 3600, 86_400].map(std::time::Duration::from_secs));
    let config = load_extra("").expect("valid");
    assert_eq!(config.budget.policy, crate::storage::Policy::Downsample, "the default policy");
    assert_eq!(config.budget.downsample_levels, crate::storage::DEFAULT_DOWNSAMPLE_LEVELS);
}

#[test]
fn an_mqtt_sink_gets_its_defaults_and_secret() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let config = load_extra(&format!(
        "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub.local\"\nusername = \"u\"\npassword_file = \"{}\"\n",
        password.display()
    ))
    .expect("valid");
    let SinkKind::Mqtt(mqtt) = &config.sinks[0].kind else { panic!("not mqtt") };
    assert_eq!(mqtt.broker.port, 8883);
    assert_eq!(mqtt.topic, "devices/{device_id}/{type}");
    assert_eq!(mqtt.client_id, "eddy-gw");
    assert_eq!(mqtt.password.as_ref().map(|secret| secret.expose()), Some("s3cret"));
    assert!(!format!("{config:?}").contains("s3cret"), "the password must not show in Debug");
    assert_eq!(config.sinks[0].delivery.batch_max_records, 512);
}

#[test]
fn a_kafka_sink_gets_its_defaults_and_secret_and_its_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("connection-string");
    std::fs::write(&password, "Endpoint=sb://ns/;SharedAccessKey=s3cret\n").unwrap();
    let config = load_extra(&format!(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = [\"ns.servicebus.windows.net:9093\"]\ntls = true\n\
         sasl_mechanism = \"PLAIN\"\nusername = \"$ConnectionString\"\npassword_file = \"{}\"\n",
        password.display()
    ))
    .expect("valid");
    let SinkKind::Kafka(kafka) = &config.sinks[0].kind else { panic!("not kafka") };
    assert_eq!(config.sinks[0].name, "kafka-0");
    assert_eq!(kafka.topic, "eddy.{type}");
    assert_eq!(kafka.key, "{device_id}/{sensor}");
    assert_eq!(kafka.device_id, "gw");
    assert!(kafka.sasl.as_ref().unwrap().password.expose().ends_with("s3cret"));
    assert!(!format!("{config:?}").contains("s3cret"), "the password must not show in Debug");
    check_key("[[sinks]]\nkind = \"kafka\"\n", "sinks[0].brokers");
    check_key(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\ncompression = \"zstd\"\n",
        "sinks[0].compression",
    );
    check_key("[[sinks]]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\nurl = \"x\"\n", "sinks[0].url");
    check_key(
        &format!(
            "[[sinks]]\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            password.display()
        ),
        "sinks[0].sasl_mechanism",
    );
}

#[test]
fn tcp_security_keys_are_checked_and_named() {
    let tcp = |keys: &str| format!("[[sources]]\nkind = \"tcp\"\n{keys}\n");
    check_message(
        &tcp("allow = [\"192.168.10.7/24\"]"),
        "sources[1].allow: `192.168.10.7/24` has host bits set; did you mean 192.168.10.0/24?",
    );
    check_message(
        &tcp("allow = [\"::1/129\"]"),
        "sources[1].allow: `::1/129`: the prefix length must be 0 to 128",
    );
    check_message(
        &tcp("tls_cert_file = \"/x.crt\""),
        "sources[1].tls_key_file: is required with tls_cert_file",
    );
    check_message(
        &tcp("tls_client_ca_file = \"/ca.crt\""),
        "sources[1].tls_client_ca_file: needs tls_cert_file and tls_key_file (client certificates are a TLS feature)",
    );
    check_message(&tcp("idle_timeout = \"10ms\""), "sources[1].idle_timeout: must be between 1s and 1day");
    check_message(
        &tcp("max_sessions_per_peer = 0"),
        "sources[1].max_sessions_per_peer: must be between 1 and max_sessions",
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("tcp.token");
    std::fs::write(&token, " \n").unwrap();
    check_message(
        &tcp(&format!("token_file = \"{}\"", token.display())),
        &format!("sources[1].token_file: {} holds no secret (it is empty)", token.display()),
    );
    std::fs::write(&token, "  hunter2\n").unwrap();
    let config = load_extra(&tcp(&format!(
        "token_file = \"{}\"\nallow = [\"10.0.0.0/8\"]\nallow_insecure = true",
        token.display()
    )))
    .expect("valid");
    let SourceKind::Tcp { tcp, .. } = &config.sources[1].kind else { panic!("not tcp") };
    assert_eq!(tcp.token.as_ref().map(|token| token.expose()), Some("hunter2"));
    assert_eq!(tcp.idle_timeout, Duration::from_secs(300));
    assert_eq!(
        (tcp.max_sessions_per_peer, tcp.max_session_skip_lines, tcp.max_reply_bytes),
        (64, 1_000_000, 65_536)
    );
    assert!(!format!("{config:?}").contains("hunter2"), "the token must not show in Debug");
}

#[track_caller]
fn check_message(extra: &str, expected: &str) {
    let error = load_extra(extra).expect_err("must be rejected").to_string();
    assert_eq!(error, expected);
}

#[test]
fn a_key_of_another_kind_or_of_the_wrong_type_is_named_in_full() {
    check_message(
        "[[sources]]\nkind = \"tcp\"\nrate = 2.0\n",
        "sources[1].rate: does not apply to kind = \"tcp\" (its keys: `name`, `max_sensors`, `listen`, `format`, \
         `precision`, `ack`, `max_connections`, `max_sessions`, `max_sessions_per_peer`, \
         `max_session_skip_lines`, `tls_cert_file`, `tls_key_file`, `tls_client_ca_file`, `allow`, \
         `token_file`, `allow_insecure`, `idle_timeout`, `auth_timeout`, `max_reply_bytes`, `reply_timeout`)",
    );
    check_message(
        "[[sinks]]\nkind = \"console\"\nurl = \"http://x\"\n",
        "sinks[0].url: does not apply to kind = \"console\" (its keys: `name`, `records`, \
         `batch_max_records`, `linger`, `rate_limit`, `max_backoff`, `backlog_share`, `backlog_after`)",
    );
    check_message(
        "[[sources]]\nkind = \"tcp\"\nmax_connections = \"x\"\n",
        // The value is not quoted: it might be a secret in the wrong place.
        "sources[1].max_connections: invalid type: a string, expected u64",
    );
    check_message(
        "[[sinks]]\nkind = \"console\"\nrecords = [3]\n",
        "sinks[0].records[0]: invalid type: integer `3`, expected a string",
    );
    check_message(
        "[[sources]]\nkind = \"modbus\"\n",
        "sources[1].kind: `modbus` is not one of: tcp, serial, mqtt, simulator",
    );
    check_message(
        "[[sinks]]\nkind = \"amqp\"\n",
        "sinks[0].kind: `amqp` is not one of: console, file, mqtt, http, kafka",
    );
    check_key("[[sources]]\nname = \"x\"\n", "sources[1].kind");
}

#[test]
fn client_cert_and_client_key_still_load_with_a_deprecation_warning() {
    let mqtts = "kind = \"mqtt\"\nurl = \"mqtts://broker\"\nclient_id = \"gw\"\ntopics = [\"a/#\"]\n\
                 ca_file = \"/etc/eddy/ca.pem\"\n";
    let config = load_source(&format!(
        "{mqtts}client_cert = \"/etc/eddy/gw.pem\"\nclient_key = \"/etc/eddy/gw.key\"\n"
    ))
    .expect("the old spelling loads");
    let SourceKind::Mqtt { mqtt, .. } = &config.sources[0].kind else { panic!("not mqtt") };
    let tls = mqtt.tls.as_ref().expect("tls");
    assert_eq!(tls.client_auth, Some((PathBuf::from("/etc/eddy/gw.pem"), PathBuf::from("/etc/eddy/gw.key"))));
    assert_eq!(
        config.warnings,
        [
            "sources[0].client_cert is deprecated: write sources[0].cert_file instead",
            "sources[0].client_key is deprecated: write sources[0].key_file instead",
        ]
    );
    let config =
        load_source(&format!("{mqtts}cert_file = \"/etc/eddy/gw.pem\"\nkey_file = \"/etc/eddy/gw.key\"\n"))
            .expect("the new spelling loads");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    check_source_err(
        &format!("{mqtts}cert_file = \"/a.pem\"\nclient_cert = \"/a.pem\"\nkey_file = \"/a.key\"\n"),
        "sources[0].client_cert: give cert_file or its old spelling client_cert, not both",
    );
}

#[test]
fn non_finite_numbers_reach_validation_and_are_refused() {
    // The entries are buffered as TOML values, which keep nan and inf (JSON values would
    // turn them into null, and so into the default).
    check_message(
        "[[sources]]\nkind = \"simulator\"\nrate = nan\n",
        "sources[1].rate: must be a number of readings/s from 0.01 to 1000000",
    );
    check_message(
        "[[sinks]]\nkind = \"console\"\nrate_limit = inf\n",
        "sinks[0].rate_limit: must be a number of records/s from 0.01 to 1000000",
    );
    for share in ["1.5", "-0.1", "nan"] {
        check_message(
            &format!("[[sinks]]\nkind = \"console\"\nbacklog_share = {share}\n"),
            "sinks[0].backlog_share: must be a number from 0.0 to 1.0",
        );
    }
    check_key("[[sinks]]\nkind = \"console\"\nbacklog_after = \"100ms\"\n", "sinks[0].backlog_after");
}

#[test]
fn every_shared_key_is_taken_by_every_kind() {
    let shared = "records = [\"batch\"]\nbatch_max_records = 10\nlinger = \"1s\"\nrate_limit = 5.0\nmax_backoff = \"1s\"\nbacklog_share = 0.25\nbacklog_after = \"30s\"\n";
    for (idx, kind) in [
        "kind = \"console\"",
        "kind = \"file\"\npath = \"/tmp/x.jsonl\"",
        "kind = \"mqtt\"\nurl = \"mqtt://hub\"",
        "kind = \"http\"\nurl = \"http://hub\"",
    ]
    .iter()
    .enumerate()
    {
        let config = load_extra(&format!("[[sinks]]\nname = \"s{idx}\"\n{kind}\n{shared}")).expect(kind);
        let sink = &config.sinks[0];
        assert_eq!(sink.name, format!("s{idx}"));
        assert_eq!(sink.delivery.batch_max_records, 10);
        assert_eq!(sink.delivery.rate_limit, Some(5.0));
        assert_eq!(sink.delivery.backlog_share, 0.25);
        assert_eq!(sink.delivery.backlog_after, Duration::from_secs(30));
    }
    for kind in ["kind = \"tcp\"", "kind = \"serial\"\npath = \"/dev/x\"", "kind = \"simulator\""] {
        let config = load_extra(&format!("[[sources]]\nname = \"named\"\n{kind}\n")).expect(kind);
        assert_eq!(config.sources[1].name, "named");
    }
}

/// The configuration the .deb installs is valid, and its results file cannot fill the disk:
/// rotated, with a bound on the bytes kept.
#[test]
fn the_packaged_config_is_valid_and_bounds_its_results_file() {
    let config = load_str(include_str!("../../../systemd/eddy.toml")).expect("systemd/eddy.toml loads");
    let file = config.sinks.iter().find_map(|sink| match &sink.kind {
        SinkKind::File(file) => Some(file),
        _ => None,
    });
    let file = file.expect("the packaged configuration has a file sink");
    assert_eq!(file.path, std::path::Path::new("/var/lib/eddy/results.jsonl"));
    let bound = file.max_file_bytes.expect("rotated") * u64::from(file.max_files);
    assert!(bound <= 64 * 1024 * 1024, "up to {bound} bytes of results");
    assert!(config.budget.min_free_bytes > 0, "the free-space guard is on");
}

#[test]
fn future_outlier_hold_defaults_to_a_minute_and_three_confirmations_and_can_be_turned_off() {
    let config = load_str(MINIMAL).expect("minimal config");
    assert_eq!(config.engine.outlier_after, Some(Duration::from_secs(60)));
    assert_eq!(config.engine.outlier_confirm, 3);
    let config = Config::load(None).expect("default config loads");
    assert_eq!(config.engine.outlier_after, Some(Duration::from_secs(60)));
    assert_eq!(config.engine.outlier_confirm, 3);

    let config = load_str(&format!("{MINIMAL}[engine]\noutlier_after = \"off\"\noutlier_confirm = 16\n"))
        .expect("hold off");
    assert_eq!((config.engine.outlier_after, config.engine.outlier_confirm), (None, 16));
    let config = load_str(&format!("{MINIMAL}[engine]\noutlier_after = \"2m 30s\"\n")).expect("2m 30s");
    assert_eq!(config.engine.outlier_after, Some(Duration::from_secs(150)));

    check_err("[engine]\noutlier_after = \"0s\"\n", "engine.outlier_after: must be greater than zero");
    check_err(
        "[engine]\noutlier_after = \"soon\"\n",
        "engine.outlier_after: `soon` is neither a duration nor `off`",
    );
    check_err("[engine]\noutlier_after = \"1500us\"\n", "engine.outlier_after: must be a whole number");
    check_err("[engine]\noutlier_confirm = 0\n", "engine.outlier_confirm: must be 1 to 16");
    check_err("[engine]\noutlier_confirm = 17\n", "engine.outlier_confirm: must be 1 to 16");
}

#[test]
fn plain_text_credentials_are_refused_unless_allow_insecure_issue_15() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret = secret.display();
    let instead = |scheme: &str| format!("would be sent in plain text over {scheme}");
    for (entry, key, transport) in [
        (
            format!("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://hub\"\nusername = \"u\"\npassword_file = \"{secret}\""),
            "sinks[0].password_file",
            "mqtt://",
        ),
        ("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://hub\"\nusername = \"token-as-user\"".to_owned(), "sinks[0].username", "mqtt://"),
        (
            format!("[[sinks]]\nkind = \"http\"\nurl = \"http://hub/in\"\nheader_files = {{ x-key = \"{secret}\" }}"),
            "sinks[0].header_files.x-key",
            "http://",
        ),
        (
            "[[sinks]]\nkind = \"http\"\nurl = \"http://hub/in\"\nheaders = { authorization = \"Bearer x\" }".to_owned(),
            "sinks[0].headers.authorization",
            "http://",
        ),
        (
            format!(
                "[[sources]]\nkind = \"mqtt\"\nurl = \"mqtt://b\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n\
                 username = \"u\"\npassword_file = \"{secret}\""
            ),
            "sources[1].password_file",
            "mqtt://",
        ),
        (format!("[[sources]]\nkind = \"tcp\"\ntoken_file = \"{secret}\""), "sources[1].token_file", "plain TCP"),
    ] {
        let error = load_extra(&format!("{entry}\n")).expect_err("plain text refused").to_string();
        assert!(error.starts_with(&format!("{key}: {}", instead(transport))), "{error}");
        assert!(error.ends_with("or set allow_insecure = true"), "{error}");
        let config = load_extra(&format!("{entry}\nallow_insecure = true\n")).expect("allowed");
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].starts_with(&format!("{key}: sent in plain text")), "{:?}", config.warnings);
    }
    // Without credentials, or with TLS, nothing to allow and nothing to warn about.
    for entry in [
        "[[sinks]]\nkind = \"http\"\nurl = \"http://hub/in\"\nheaders = { x-gateway = \"gw\" }",
        "[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in\"\nheaders = { authorization = \"Bearer x\" }",
        "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub\"\nusername = \"u\"",
        "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://hub\"",
    ] {
        let config = load_extra(&format!("{entry}\n")).expect("valid");
        assert!(config.warnings.is_empty(), "{entry}: {:?}", config.warnings);
    }
}

#[test]
fn configuration_errors_never_show_a_value_issue_15() {
    for (extra, key) in [
        // A string where a number goes, next to the secret.
        ("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub\"\nrecords_per_message = \"hunter2\"\n", "sinks[0].records_per_message"),
        ("[batch]\ninterval = [\"hunter2\"]\n", "batch.interval"),
        ("[[sinks]]\nkind = \"http\"\nurl = \"hunter2\"\n", "sinks[0].url"),
        ("[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig=hunter2\"\nheaders = 5\n", "sinks[0].headers"),
        ("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://u:hunter2@hub\"\n", "sinks[0].url"),
        ("[[sinks]]\nkind = \"http\"\nurl = \"https://u:hunter2@hub/in\"\n", "sinks[0].url"),
        ("[[sources]]\nkind = \"mqtt\"\nurl = \"mqtt://u:hunter2@b\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n", "sources[1].url"),
        ("[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in\"\nheaders = \"Bearer hunter2\"\n", "sinks[0].headers"),
        ("[batch]\ninterval = \"hunter2\"\n", "batch.interval"),
    ] {
        let error = load_extra(extra).expect_err("invalid").to_string();
        assert!(error.starts_with(key), "{error} should name {key}");
        assert!(!error.contains("hunter2"), "{error}");
    }
    // A broken file: the position, never the line.
    let error =
        load_str(&format!("{MINIMAL}[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig=hunter2\n"))
            .expect_err("unclosed string")
            .to_string();
    assert!(error.contains("line 7, column"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    // The same file as a reload (or `eddy run`) reads it: the text, parsed once.
    let text = format!("{MINIMAL}[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig=hunter2\n");
    let error = Config::raw_from_text(std::path::Path::new("eddy.toml"), &text)
        .expect_err("unclosed string")
        .to_string();
    assert!(error.contains("line 7, column"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn result_commit_delay_is_unset_by_default_and_may_be_zero() {
    let config = load_str(MINIMAL).expect("loads");
    assert_eq!(config.result_commit_delay, None);
    let config = load_str(&format!("{MINIMAL}[engine]\nresult_commit_delay = \"0s\"\n")).expect("loads");
    assert_eq!(config.result_commit_delay, Some(Duration::ZERO));
    let config = load_str(&format!("{MINIMAL}[engine]\nresult_commit_delay = \"5ms\"\n")).expect("loads");
    assert_eq!(config.result_commit_delay, Some(Duration::from_millis(5)));
}
