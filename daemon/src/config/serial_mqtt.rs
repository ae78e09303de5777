//! Validation of the `kind = "serial"` and `kind = "mqtt"` source keys: from the raw TOML
//! entry to the typed settings of the sensors crate, each error naming its key.

use std::path::Path;
use std::time::Duration;

use eddy_sensors::{
    LineSeparator, MqttBroker, MqttQos, MqttSourceConfig, MqttTls, Secret, SerialParity, SerialSourceConfig,
};

use crate::config::{invalid, parse_format, ConfigError, RawSource, SourceKind};

/// Keys that belong to one kind of source only, with the kinds they apply to.
const KIND_KEYS: [(&str, &[&str]); 22] = [
    ("path", &["serial"]),
    ("baud", &["serial"]),
    ("data_bits", &["serial"]),
    ("parity", &["serial"]),
    ("stop_bits", &["serial"]),
    ("line_separator", &["serial"]),
    ("max_pending_readings", &["serial"]),
    ("url", &["mqtt"]),
    ("client_id", &["mqtt"]),
    ("topics", &["mqtt"]),
    ("qos", &["mqtt"]),
    ("username", &["mqtt"]),
    ("password_file", &["mqtt"]),
    ("password_env", &["mqtt"]),
    ("ca_file", &["mqtt"]),
    ("client_cert", &["mqtt"]),
    ("client_key", &["mqtt"]),
    ("clean_session", &["mqtt"]),
    ("keep_alive", &["mqtt"]),
    ("sensor_from_topic", &["mqtt"]),
    ("max_in_flight", &["mqtt"]),
    ("max_payload_bytes", &["mqtt"]),
];

/// Refuses a serial or MQTT key on a source of another kind, and the TCP/simulator keys on
/// serial and MQTT sources.
pub(super) fn check_keys_apply(key: &str, raw: &RawSource) -> Result<(), ConfigError> {
    let present = [
        raw.path.is_some(),
        raw.baud.is_some(),
        raw.data_bits.is_some(),
        raw.parity.is_some(),
        raw.stop_bits.is_some(),
        raw.line_separator.is_some(),
        raw.max_pending_readings.is_some(),
        raw.url.is_some(),
        raw.client_id.is_some(),
        raw.topics.is_some(),
        raw.qos.is_some(),
        raw.username.is_some(),
        raw.password_file.is_some(),
        raw.password_env.is_some(),
        raw.ca_file.is_some(),
        raw.client_cert.is_some(),
        raw.client_key.is_some(),
        raw.clean_session.is_some(),
        raw.keep_alive.is_some(),
        raw.sensor_from_topic.is_some(),
        raw.max_in_flight.is_some(),
        raw.max_payload_bytes.is_some(),
    ];
    for ((name, kinds), present) in KIND_KEYS.iter().zip(present) {
        if present && !kinds.contains(&raw.kind.as_str()) {
            return Err(invalid(
                format!("{key}.{name}"),
                format!("does not apply to kind = \"{}\"", raw.kind),
            ));
        }
    }
    if matches!(raw.kind.as_str(), "serial" | "mqtt") {
        let others = [
            ("listen", raw.listen.is_some()),
            ("ack", raw.ack.is_some()),
            ("max_connections", raw.max_connections.is_some()),
            ("max_sessions", raw.max_sessions.is_some()),
            ("sensors", raw.sensors.is_some()),
            ("rate", raw.rate.is_some()),
            ("seed", raw.seed.is_some()),
        ];
        if let Some((name, _)) = others.iter().find(|(_, present)| *present) {
            return Err(invalid(
                format!("{key}.{name}"),
                format!("does not apply to kind = \"{}\"", raw.kind),
            ));
        }
    }
    Ok(())
}

/// `kind = "serial"`.
pub(super) fn serial_from_raw(key: &str, raw: &RawSource) -> Result<SourceKind, ConfigError> {
    let path = raw
        .path
        .clone()
        .ok_or_else(|| invalid(format!("{key}.path"), "is required for kind = \"serial\""))?;
    if path.as_os_str().is_empty() || path.to_str().is_none() {
        return Err(invalid(format!("{key}.path"), "must be a non-empty UTF-8 path"));
    }
    let mut serial = SerialSourceConfig::new(path);
    if let Some(baud) = raw.baud {
        serial.baud = u32::try_from(baud)
            .ok()
            .filter(|baud| (50..=4_000_000).contains(baud))
            .ok_or_else(|| invalid(format!("{key}.baud"), "must be between 50 and 4000000"))?;
    }
    if let Some(data_bits) = raw.data_bits {
        serial.data_bits = u8::try_from(data_bits)
            .ok()
            .filter(|bits| (5..=8).contains(bits))
            .ok_or_else(|| invalid(format!("{key}.data_bits"), "must be 5, 6, 7 or 8"))?;
    }
    serial.parity = match raw.parity.as_deref() {
        None | Some("none") => SerialParity::None,
        Some("odd") => SerialParity::Odd,
        Some("even") => SerialParity::Even,
        Some(other) => {
            return Err(invalid(format!("{key}.parity"), format!("`{other}` is not one of: none, odd, even")))
        }
    };
    if let Some(stop_bits) = raw.stop_bits {
        serial.stop_bits = u8::try_from(stop_bits)
            .ok()
            .filter(|bits| (1..=2).contains(bits))
            .ok_or_else(|| invalid(format!("{key}.stop_bits"), "must be 1 or 2"))?;
    }
    serial.line_separator = match raw.line_separator.as_deref() {
        None | Some("lf") => LineSeparator::Lf,
        Some("cr") => LineSeparator::Cr,
        Some(other) => {
            return Err(invalid(format!("{key}.line_separator"), format!("`{other}` is not one of: lf, cr")))
        }
    };
    if let Some(max_pending) = raw.max_pending_readings {
        serial.max_pending_readings = usize::try_from(max_pending)
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}.max_pending_readings"), "must be between 1 and 1000000"))?;
    }
    let format = parse_format(key, raw.format.as_deref(), raw.precision.as_deref())?;
    Ok(SourceKind::Serial { serial, format })
}

/// `kind = "mqtt"`. Reads the password file or variable now, so that a missing secret is a
/// configuration error (exit 2) naming its key.
pub(super) fn mqtt_from_raw(key: &str, name: &str, raw: &RawSource) -> Result<SourceKind, ConfigError> {
    let url =
        raw.url.as_deref().ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"mqtt\""))?;
    let broker = MqttBroker::parse_url(url).map_err(|message| invalid(format!("{key}.url"), message))?;
    let client_id = raw.client_id.clone().ok_or_else(|| {
        invalid(
            format!("{key}.client_id"),
            "is required for kind = \"mqtt\": it names the persistent session at the broker, so it \
             must be stable and unique per gateway",
        )
    })?;
    if client_id.is_empty() || client_id.len() > 128 || client_id.contains(['/', '+', '#']) {
        return Err(invalid(format!("{key}.client_id"), "must be 1 to 128 characters, without / + #"));
    }
    let topics = raw.topics.clone().unwrap_or_default();
    if topics.is_empty() {
        return Err(invalid(format!("{key}.topics"), "at least one topic filter is needed"));
    }
    for (topic_idx, topic) in topics.iter().enumerate() {
        check_topic_filter(topic).map_err(|message| {
            invalid(format!("{key}.topics[{topic_idx}]"), format!("`{topic}` {message}"))
        })?;
    }
    let mut mqtt = MqttSourceConfig::new(broker, client_id, topics);
    mqtt.qos = match raw.qos {
        None | Some(1) => MqttQos::AtLeastOnce,
        Some(0) => MqttQos::AtMostOnce,
        Some(2) => MqttQos::ExactlyOnce,
        Some(_) => return Err(invalid(format!("{key}.qos"), "must be 0, 1 or 2")),
    };
    mqtt.username = raw.username.clone();
    mqtt.password = match (&raw.password_file, &raw.password_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.password_env"),
                "give password_file or password_env, not both",
            ))
        }
        (Some(path), None) => Some(read_password_file(&format!("{key}.password_file"), path)?),
        (None, Some(variable)) => Some(Secret::verbatim(std::env::var(variable).map_err(|_| {
            invalid(
                format!("{key}.password_env"),
                format!("the environment variable `{variable}` is not set"),
            )
        })?)),
        (None, None) => None,
    };
    if mqtt.password.is_some() && mqtt.username.is_none() {
        return Err(invalid(format!("{key}.username"), "is required when a password is given"));
    }
    mqtt.tls = match (&raw.ca_file, &raw.client_cert, &raw.client_key) {
        (None, None, None) => None,
        (None, _, _) => {
            return Err(invalid(format!("{key}.ca_file"), "is required with client_cert/client_key"))
        }
        (Some(ca_file), cert, key_file) => {
            let client_auth = match (cert, key_file) {
                (Some(cert), Some(key_file)) => Some((cert.clone(), key_file.clone())),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        format!("{key}.client_cert"),
                        "client_cert and client_key go together",
                    ))
                }
            };
            Some(MqttTls { ca_file: ca_file.clone(), client_auth })
        }
    };
    if mqtt.broker.tls && mqtt.tls.is_none() {
        return Err(invalid(format!("{key}.ca_file"), "is required with an mqtts:// url"));
    }
    if !mqtt.broker.tls && mqtt.tls.is_some() {
        return Err(invalid(format!("{key}.ca_file"), "applies only to an mqtts:// url"));
    }
    if let Some(clean_session) = raw.clean_session {
        mqtt.clean_session = clean_session;
    }
    if let Some(keep_alive) = raw.keep_alive {
        if !(Duration::from_secs(5)..=Duration::from_secs(65_535)).contains(&keep_alive) {
            return Err(invalid(format!("{key}.keep_alive"), "must be between 5s and 65535s"));
        }
        mqtt.keep_alive = keep_alive;
    }
    let format = parse_format(key, raw.format.as_deref(), raw.precision.as_deref())?;
    if let Some(segment) = raw.sensor_from_topic {
        if !matches!(format, eddy_sensors::Format::Json) {
            return Err(invalid(format!("{key}.sensor_from_topic"), "applies only to format = \"json\""));
        }
        mqtt.sensor_from_topic =
            Some(usize::try_from(segment).ok().filter(|segment| *segment < 64).ok_or_else(|| {
                invalid(format!("{key}.sensor_from_topic"), "must be a topic segment 0 to 63")
            })?);
    }
    if let Some(max_in_flight) = raw.max_in_flight {
        mqtt.max_in_flight = usize::try_from(max_in_flight)
            .ok()
            .filter(|n| (1..=65_535).contains(n))
            .ok_or_else(|| invalid(format!("{key}.max_in_flight"), "must be between 1 and 65535"))?;
    }
    if let Some(max_payload) = raw.max_payload_bytes {
        mqtt.max_payload_bytes = usize::try_from(max_payload)
            .ok()
            .filter(|n| (64..=16 << 20).contains(n))
            .ok_or_else(|| invalid(format!("{key}.max_payload_bytes"), "must be between 64 and 16777216"))?;
    }
    tracing::debug!(source = name, broker = %mqtt.broker, "MQTT source configured.");
    Ok(SourceKind::Mqtt { mqtt: Box::new(mqtt), format })
}

/// An MQTT topic filter: non-empty, `+` and `#` only as whole levels, `#` last.
fn check_topic_filter(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic.len() > 65_535 || topic.contains('\0') {
        return Err("is not a topic filter (empty, too long, or with a NUL)");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (level_idx, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) && level.len() > 1 {
            return Err("has a wildcard that is not a whole level");
        }
        if *level == "#" && level_idx + 1 != levels.len() {
            return Err("has `#` before its last level");
        }
    }
    Ok(())
}

fn read_password_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?;
    // A trailing newline is an artefact of `echo secret > file`, never part of the password.
    let password =
        text.strip_suffix('\n').map(|text| text.strip_suffix('\r').unwrap_or(text)).unwrap_or(&text);
    Ok(Secret::verbatim(password))
}

#[cfg(test)]
mod tests {
    use crate::config::{deserialize, Config, ConfigError, SourceKind};

    fn load(source: &str) -> Result<Config, ConfigError> {
        let text = format!("device_id = \"gw\"\ndata_dir = \"/tmp/x\"\n[[sources]]\n{source}");
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .map_err(|error| ConfigError::Load(error.to_string()))?;
        Config::from_raw(deserialize(built)?)
    }

    #[track_caller]
    fn check_err(source: &str, expected_key: &str) {
        let error = load(source).expect_err("config should be rejected").to_string();
        assert!(error.starts_with(expected_key), "error `{error}` should name `{expected_key}`");
    }

    #[test]
    fn serial_source_keys_are_typed_with_defaults() {
        let config = load("kind = \"serial\"\npath = \"/dev/ttyUSB0\"\nbaud = 115200\nparity = \"even\"\nformat = \"csv\"\n")
            .unwrap();
        let SourceKind::Serial { serial, format } = &config.sources[0].kind else { panic!() };
        assert_eq!((serial.baud, serial.data_bits, serial.stop_bits), (115_200, 8, 1));
        assert_eq!(serial.parity, eddy_sensors::SerialParity::Even);
        assert_eq!(*format, eddy_sensors::Format::Csv);
        assert_eq!(config.sources[0].name, "serial-0");
    }

    #[test]
    fn serial_source_errors_name_the_key() {
        check_err("kind = \"serial\"\n", "sources[0].path");
        check_err("kind = \"serial\"\npath = \"/dev/x\"\nbaud = 0\n", "sources[0].baud");
        check_err("kind = \"serial\"\npath = \"/dev/x\"\ndata_bits = 9\n", "sources[0].data_bits");
        check_err("kind = \"serial\"\npath = \"/dev/x\"\nparity = \"mark\"\n", "sources[0].parity");
        check_err("kind = \"serial\"\npath = \"/dev/x\"\nstop_bits = 3\n", "sources[0].stop_bits");
        check_err(
            "kind = \"serial\"\npath = \"/dev/x\"\nline_separator = \"nul\"\n",
            "sources[0].line_separator",
        );
        check_err("kind = \"serial\"\npath = \"/dev/x\"\nlisten = \"127.0.0.1:1\"\n", "sources[0].listen");
        check_err("kind = \"serial\"\npath = \"/dev/x\"\ntopics = [\"a\"]\n", "sources[0].topics");
        check_err("kind = \"tcp\"\nbaud = 9600\n", "sources[0].baud");
    }

    #[test]
    fn mqtt_source_keys_are_typed_with_a_persistent_session_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("pw");
        std::fs::write(&password_file, "s3cret\n").unwrap();
        let config = load(&format!(
            "kind = \"mqtt\"\nurl = \"mqtt://broker:1884\"\nclient_id = \"gw-17\"\ntopics = [\"sensors/+/reading\"]\n\
             username = \"eddy\"\npassword_file = \"{}\"\nsensor_from_topic = 1\nkeep_alive = \"10s\"\n",
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
        check_err("kind = \"mqtt\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n", "sources[0].url");
        check_err(
            "kind = \"mqtt\"\nurl = \"http://x\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n",
            "sources[0].url",
        );
        check_err("kind = \"mqtt\"\nurl = \"mqtt://x\"\ntopics = [\"a\"]\n", "sources[0].client_id");
        check_err("kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\n", "sources[0].topics");
        check_err(
            "kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\ntopics = [\"a/#/b\"]\n",
            "sources[0].topics[0]",
        );
        check_err(
            "kind = \"mqtt\"\nurl = \"mqtt://x\"\nclient_id = \"gw\"\ntopics = [\"a+\"]\n",
            "sources[0].topics[0]",
        );
        check_err(&format!("{base}qos = 3\n"), "sources[0].qos");
        check_err(
            &format!("{base}password_env = \"EDDY_TEST_SURELY_UNSET_VARIABLE\"\nusername = \"u\"\n"),
            "sources[0].password_env",
        );
        check_err(
            &format!("{base}password_file = \"/nonexistent/pw\"\nusername = \"u\"\n"),
            "sources[0].password_file",
        );
        check_err(
            "kind = \"mqtt\"\nurl = \"mqtts://x\"\nclient_id = \"gw\"\ntopics = [\"a\"]\n",
            "sources[0].ca_file",
        );
        check_err(&format!("{base}ca_file = \"/ca.pem\"\n"), "sources[0].ca_file");
        check_err(
            &format!("{base}sensor_from_topic = 1\nformat = \"csv\"\n"),
            "sources[0].sensor_from_topic",
        );
        check_err(&format!("{base}keep_alive = \"1s\"\n"), "sources[0].keep_alive");
        check_err(&format!("{base}max_in_flight = 0\n"), "sources[0].max_in_flight");
        check_err(&format!("{base}rate = 1.0\n"), "sources[0].rate");
        check_err(&format!("{base}path = \"/dev/x\"\n"), "sources[0].path");
    }
}
