//! No secret leaves eddy (issue #15): passwords, tokens, `Authorization` headers and URL query
//! tokens are planted, every failure the test can provoke is provoked at trace level, and
//! everything eddy wrote (stderr, stdout, `/status`, `/metrics`, `/health`, `eddy status`,
//! `eddy check-config`) is searched for them. Also: credentials in plain text are refused by
//! `check-config` unless `allow_insecure = true`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eddy_tests::config::raw;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::mosquitto::{free_port, Mosquitto};
use eddy_tests::{eddy_binary, wait_until, Eddy};

use crate::api::{api_address, get};
use crate::uplink::{base_ms, readings, send};

/// The MQTT uplink's password (a wrong one: the broker refuses it).
const MQTT_SINK_PASSWORD: &str = "mqtt-sink-pw-5f3a9c";
/// The HTTP uplink's bearer token, from `header_files`.
const HTTP_TOKEN: &str = "http-bearer-8e1d2b";
/// A token in the HTTP uplink's URL query (`?sig=`).
const URL_SIG: &str = "url-sig-4c7e0a";
/// The TCP source's `#auth` token.
const TCP_TOKEN: &str = "tcp-token-9b2f61";
/// The MQTT source's password (a wrong one: the broker refuses it).
const MQTT_SOURCE_PASSWORD: &str = "mqtt-source-pw-3d8e47";

const SECRETS: [&str; 5] = [MQTT_SINK_PASSWORD, HTTP_TOKEN, URL_SIG, TCP_TOKEN, MQTT_SOURCE_PASSWORD];

/// `eddy check-config` of `text`: its exit code and everything it printed.
fn check_config(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let output = Command::new(eddy_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), printed)
}

/// One line from the TCP source after sending `lines`.
fn tcp_reply(address: std::net::SocketAddr, lines: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(lines.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = BufReader::new(stream).read_line(&mut reply);
    reply
}

#[test]
fn no_planted_secret_reaches_logs_status_or_errors_issue_15() {
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let mqtt_sink_password = file("mqtt-sink-password", &format!("{MQTT_SINK_PASSWORD}\n"));
    let http_authorization = file("http-authorization", &format!("Bearer {HTTP_TOKEN}\n"));
    let tcp_token = file("tcp-token", &format!("{TCP_TOKEN}\n"));
    let mqtt_source_password = file("mqtt-source-password", &format!("{MQTT_SOURCE_PASSWORD}\n"));
    let passwd = secrets.path().join("passwd");
    Mosquitto::write_password_file(&passwd, "eddy", "the-broker-knows-another-one")
        .expect("mosquitto_passwd");
    let broker =
        Mosquitto::start_with(&format!("allow_anonymous false\npassword_file {}\n", passwd.display()))
            .expect("mosquitto starts");
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.set_status(401);
    let nobody = format!("127.0.0.1:{}", free_port());

    let mut config = crate::uplink::config()
        .tcp_source("guarded")
        .key("token_file", tcp_token.as_str())
        .key("allow_insecure", true)
        .mqtt_source("broker", &broker.url())
        .key("client_id", "gw-secrets")
        .key("topics", ["sensors/+/reading"])
        .key("username", "eddy")
        .key("password_file", mqtt_source_password.as_str())
        .key("allow_insecure", true);
    for (name, url) in [("hub-mqtt", broker.url()), ("hub-mqtt-down", format!("mqtt://{nobody}"))] {
        config = config
            .mqtt_sink(name, &url)
            .key("records", ["window"])
            .key("username", "eddy")
            .key("password_file", mqtt_sink_password.as_str())
            .key("allow_insecure", true)
            .key("connect_timeout", "1s")
            .key("max_backoff", "300ms");
    }
    for (name, base) in [("hub-http", hub.url()), ("hub-http-down", format!("http://{nobody}/ingest"))] {
        config = config
            .http_sink(name, &format!("{base}?sig={URL_SIG}"))
            .key("records", ["window"])
            .key("header_files", raw(format!("{{ authorization = \"{http_authorization}\" }}")))
            .key("allow_insecure", true)
            .key("timeout", "1s")
            .key("max_backoff", "300ms");
    }
    let config = config.table("api").key("listen", "127.0.0.1:0").to_toml();
    let dir = tempfile::tempdir().unwrap();
    let mut eddy =
        Eddy::start_in_with_env(dir.path(), &config, &[("EDDY_LOG", "trace")]).expect("eddy starts");

    // The uplinks fail: 401, then 500, then the hub goes away; brokers refuse or are absent.
    let base = base_ms();
    send(&eddy, &readings(base, 2, 0, 3));
    assert!(wait_until(Duration::from_secs(20), || hub.requests() >= 1), "a 401: {}", eddy.log());
    hub.set_status(500);
    let answered = hub.requests();
    send(&eddy, &readings(base, 2, 3, 6));
    assert!(wait_until(Duration::from_secs(20), || hub.requests() > answered), "a 500: {}", eddy.log());
    hub.stop();
    let provoked = [
        "sink=hub-http reason=",
        "sink=hub-http-down reason=",
        "sink=hub-mqtt reason=",
        "sink=hub-mqtt-down reason=",
        "Cannot connect to the MQTT broker", // the MQTT source's wrong password
        "/ingest?",                          // the URL (redacted, it is checked below)
    ];
    for marker in provoked {
        assert!(
            wait_until(Duration::from_secs(20), || eddy.log().contains(marker)),
            "{marker}: {}",
            eddy.log()
        );
    }
    // A client with a wrong token, and one with the right token and a bad line.
    let guarded = eddy.tcp_address("guarded").expect("the guarded source");
    assert!(tcp_reply(guarded, "#auth not-the-token\n").starts_with("err auth"));
    let _ = tcp_reply(guarded, &format!("#auth {TCP_TOKEN}\nnot a reading\n"));
    assert!(wait_until(Duration::from_secs(10), || eddy.log().contains("authentication failed")));

    let mut written = Vec::new();
    let api = api_address(&eddy);
    for path in ["/status", "/metrics", "/health"] {
        written.push((path.to_owned(), get(api, path).1));
    }
    for args in [&["status", "--addr"][..], &["status", "--json", "--addr"][..]] {
        let output = Command::new(eddy_binary()).args(args).arg(api.to_string()).output().unwrap();
        let printed =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        written.push((args.join(" "), printed));
    }
    assert!(eddy.stop().expect("eddy stops").success());

    // check-config: the valid file (with its plain-text warnings), then bad values next to or
    // instead of a secret, a wrong type, a broken line, and credentials in plain text.
    let config_text = std::fs::read_to_string(dir.path().join("eddy.toml")).unwrap();
    let (code, printed) = check_config(dir.path(), "valid.toml", &config_text);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("sent in plain text"), "{printed}");
    written.push(("check-config valid".to_owned(), printed));
    let broken = [
        format!("[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig={URL_SIG}\"\nheaders = \"Bearer {HTTP_TOKEN}\"\n"),
        format!("[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig={URL_SIG}\"\ntimeout = \"{HTTP_TOKEN}\"\n"),
        format!("[[sinks]]\nkind = \"http\"\nurl = \"{URL_SIG}\"\n"),
        format!("[[sinks]]\nkind = \"http\"\nurl = \"http://eddy:{MQTT_SINK_PASSWORD}@hub/in?sig={URL_SIG}\"\n"),
        format!("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://eddy:{MQTT_SINK_PASSWORD}@hub\"\n"),
        format!("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub\"\nusername = [\"{MQTT_SOURCE_PASSWORD}\"]\n"),
        format!("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub\"\nclient_id = {{ x = \"{TCP_TOKEN}\" }}\n"),
        format!("[[sinks]]\nkind = \"http\"\nurl = \"https://hub/in?sig={URL_SIG}\nname = \"x\"\n"),
    ];
    for (idx, extra) in broken.iter().enumerate() {
        let (code, printed) = check_config(dir.path(), "broken.toml", &format!("{config_text}{extra}"));
        assert_eq!(code, Some(2), "{extra}\n{printed}");
        assert!(
            printed.contains("sinks[5]") || printed.contains("line "),
            "names the key or line: {printed}"
        );
        written.push((format!("check-config broken {idx}"), printed));
    }
    let insecure = config_text.replace("allow_insecure = true\n", "");
    let (code, printed) = check_config(dir.path(), "insecure.toml", &insecure);
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("or set allow_insecure = true"), "{printed}");
    written.push(("check-config insecure".to_owned(), printed));

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("eddy-stderr") || name.starts_with("eddy-stdout") {
            written.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    assert!(written.iter().any(|(name, text)| name.starts_with("eddy-stderr") && text.contains("TRACE")));
    for (name, text) in &written {
        for secret in SECRETS {
            let at = text.find(secret);
            assert!(
                at.is_none(),
                "{name} shows the secret {secret}: …{}…",
                &text[at.unwrap().saturating_sub(300)..(at.unwrap() + 100).min(text.len())]
            );
        }
    }
}

#[test]
fn check_config_refuses_plain_text_credentials_naming_the_key_issue_15() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let base = format!("device_id = \"gw\"\ndata_dir = \"{}\"\n", dir.path().join("data").display());
    let source = "[[sources]]\nkind = \"simulator\"\n";
    for (entry, key, what) in [
        (
            format!(
                "{source}[[sinks]]\nkind = \"http\"\nurl = \"http://hub/in\"\nheader_files = {{ authorization = \"{}\" }}\n",
                token.display()
            ),
            "sinks[0].header_files.authorization",
            "use an https:// url",
        ),
        (
            format!("{source}[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://hub\"\nusername = \"u\"\npassword_file = \"{}\"\n", token.display()),
            "sinks[0].password_file",
            "use an mqtts:// url",
        ),
        (
            format!("[[sources]]\nkind = \"tcp\"\ntoken_file = \"{}\"\n", token.display()),
            "sources[0].token_file",
            "use tls_cert_file and tls_key_file",
        ),
    ] {
        let (code, printed) = check_config(dir.path(), "eddy.toml", &format!("{base}{entry}"));
        assert_eq!(code, Some(2), "{printed}");
        assert!(printed.contains(&format!("{key}: would be sent in plain text")), "{printed}");
        assert!(printed.contains(&format!("{what} or set allow_insecure = true")), "{printed}");
        let (code, printed) = check_config(dir.path(), "eddy.toml", &format!("{base}{entry}allow_insecure = true\n"));
        assert_eq!(code, Some(0), "{printed}");
        assert!(printed.contains(&format!("warning: {key}: sent in plain text")), "{printed}");
    }
}
