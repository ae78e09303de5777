//! MQTT broker URLs, `mqtt://host[:port]` and `mqtts://host[:port]`: one parser for the MQTT
//! sources and the MQTT uplinks, each with the words and the rules it had before.

use std::fmt;

/// Where a broker is: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS,
/// default port 8883).
///
/// The two configurations that take such a URL parse it with their own method, because they
/// word errors differently and, for now, disagree on `#` (see [`BrokerUrl::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses the URL of an MQTT source (`sources[].url`, `eddy simulate --mqtt`). A path, query,
    /// fragment or user part is refused; the error says what is wrong.
    pub fn parse_url(url: &str) -> Result<BrokerUrl, String> {
        // The URL as the errors show it: a user part may hold a password.
        let shown = crate::redact_url(url);
        parse_parts(url, &['/', '?', '#', '@']).map_err(|fault| match fault {
            Fault::Scheme => format!("`{shown}` must start with mqtt:// or mqtts://"),
            Fault::NotBare => format!(
                "`{shown}` must be mqtt(s)://host[:port] without a path, query or credentials \
                 (credentials have their own keys)"
            ),
            Fault::UnclosedBracket => format!("`{shown}`: unclosed `[` in the host"),
            Fault::AfterBracket => format!("`{shown}`: unexpected text after the host"),
            Fault::NoHost => format!("`{shown}` has no host"),
            Fault::BadPort(port) => format!("`{shown}`: `{port}` is not a port number"),
        })
    }

    /// Parses the URL of an MQTT uplink (`sinks[].url`). A path, query or user part is refused;
    /// the error says what is wrong, in less detail than [`BrokerUrl::parse_url`].
    ///
    /// Unlike the sources' parser this one has always taken a `#` as part of the host
    /// (`mqtt://hub#x` is host `hub#x`, which then fails to resolve at connection time); it is
    /// kept so because #11 changes no behaviour.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        // The URL as the errors show it: a user part may hold a password.
        let shown = crate::redact_url(url);
        parse_parts(url, &['/', '?', '@']).map_err(|fault| match fault {
            Fault::Scheme => format!("`{shown}` must start with mqtt:// or mqtts://"),
            Fault::NotBare => format!("`{shown}` must be scheme://host[:port], without path, query or user"),
            Fault::UnclosedBracket | Fault::AfterBracket | Fault::NoHost | Fault::BadPort(_) => {
                format!("`{shown}` has no valid host[:port]")
            }
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// What is wrong with a URL; each parser words it its own way.
enum Fault<'a> {
    /// Neither `mqtt://` nor `mqtts://`.
    Scheme,
    /// One of the refused characters: a path, query, fragment or user part.
    NotBare,
    /// `[` without `]`.
    UnclosedBracket,
    /// Something other than `:port` after `]`.
    AfterBracket,
    /// An empty host.
    NoHost,
    /// A port that is not a number from 1 to 65535.
    BadPort(&'a str),
}

/// Splits `url` into scheme, host and port; `refused` are the characters that mark a part
/// other than `host[:port]` (checked after one trailing `/` is dropped).
fn parse_parts<'a>(url: &'a str, refused: &[char]) -> Result<BrokerUrl, Fault<'a>> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(Fault::Scheme);
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(refused) {
        return Err(Fault::NotBare);
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(Fault::UnclosedBracket)?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(Fault::AfterBracket),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(Fault::NoHost);
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(port) => port.parse::<u16>().ok().filter(|port| *port != 0).ok_or(Fault::BadPort(port))?,
    };
    Ok(BrokerUrl { host: host.to_owned(), port, tls })
}

#[cfg(test)]
mod tests {
    use crate::broker_url::BrokerUrl;

    fn broker(host: &str, port: u16, tls: bool) -> Result<BrokerUrl, String> {
        Ok(BrokerUrl { host: host.to_owned(), port, tls })
    }

    #[test]
    fn source_urls_parse_with_default_ports_and_refuse_the_rest() {
        let parse = BrokerUrl::parse_url;
        assert_eq!(parse("mqtt://localhost"), broker("localhost", 1883, false));
        assert_eq!(parse("mqtts://10.0.0.2:8884/"), broker("10.0.0.2", 8884, true));
        assert_eq!(parse("mqtts://broker.local"), broker("broker.local", 8883, true));
        assert_eq!(parse("mqtt://[::1]:1884"), broker("::1", 1884, false));
        for bad in
            ["tcp://x", "mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://u:p@h", "mqtt://h/t", "mqtt://[::1"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("mqtt://[::1]:1884").unwrap().to_string(), "mqtt://[::1]:1884");
    }

    #[test]
    fn uplink_urls_give_host_port_and_tls() {
        let check = |url: &str, host: &str, port: u16, tls: bool| {
            assert_eq!(BrokerUrl::parse(url), broker(host, port, tls), "{url}");
        };
        check("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, false);
        check("mqtt://hub.local", "hub.local", 1883, false);
        check("mqtts://x.iot.eu-west-1.amazonaws.com", "x.iot.eu-west-1.amazonaws.com", 8883, true);
        check("mqtts://[::1]:8884/", "::1", 8884, true);
        for bad in ["http://x", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://u@h", "mqtt://h/t"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_parser_keeps_its_own_error_words() {
        let check = |url: &str, source: &str, uplink: &str| {
            assert_eq!(BrokerUrl::parse_url(url).unwrap_err(), source, "source {url}");
            assert_eq!(BrokerUrl::parse(url).unwrap_err(), uplink, "uplink {url}");
        };
        let scheme = "`tcp://x` must start with mqtt:// or mqtts://";
        check("tcp://x", scheme, scheme);
        check(
            "mqtt://u@h",
            "`mqtt://…@h` must be mqtt(s)://host[:port] without a path, query or credentials \
             (credentials have their own keys)",
            "`mqtt://…@h` must be scheme://host[:port], without path, query or user",
        );
        check(
            "mqtt://[::1",
            "`mqtt://[::1`: unclosed `[` in the host",
            "`mqtt://[::1` has no valid host[:port]",
        );
        check(
            "mqtt://[::1]x",
            "`mqtt://[::1]x`: unexpected text after the host",
            "`mqtt://[::1]x` has no valid host[:port]",
        );
        check("mqtt://:1883", "`mqtt://:1883` has no host", "`mqtt://:1883` has no valid host[:port]");
        check(
            "mqtt://h:0",
            "`mqtt://h:0`: `0` is not a port number",
            "`mqtt://h:0` has no valid host[:port]",
        );
    }

    #[test]
    fn errors_never_show_a_password_written_in_the_url() {
        for url in ["mqtt://bob:hunter2@h", "mqtts://bob:hunter2@h:1/x?hunter2", "hunter2"] {
            for error in [BrokerUrl::parse_url(url).unwrap_err(), BrokerUrl::parse(url).unwrap_err()] {
                assert!(!error.contains("hunter2"), "{error}");
            }
        }
    }

    #[test]
    fn only_the_uplink_parser_takes_a_hash_into_the_host() {
        assert!(BrokerUrl::parse_url("mqtt://hub#x").is_err());
        assert_eq!(BrokerUrl::parse("mqtt://hub#x"), broker("hub#x", 1883, false));
    }
}
