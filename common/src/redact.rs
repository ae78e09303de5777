//! What may be shown of a value that can carry a secret (a URL) or came from outside (a line a
//! client sent): URLs without their user part, query and fragment, long text cut short.

/// Longest text, in characters, that [`truncate_for_log`] keeps.
pub const LOG_VALUE_CHARS: usize = 200;

/// `url` as it may be logged or reported: `scheme://host[:port]/path`, without the user part
/// (`user:password@`), the query (`?sig=…`) and the fragment, each replaced by `…` so that a
/// reader knows something was there. Text that is not a URL is shown as `<url>`, since it
/// cannot be told apart from a secret written in the wrong place.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<url>".to_owned() };
    if scheme.is_empty() || !scheme.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"+-.".contains(&byte))
    {
        return "<url>".to_owned();
    }
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((before, _)) => (before, true),
        None => (rest, false),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((before, _)) => (before, true),
        None => (before_fragment, false),
    };
    let (authority, path) = match before_query.find('/') {
        Some(slash) => before_query.split_at(slash),
        None => (before_query, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((_, host)) => (true, host),
        None => (false, authority),
    };
    let mut shown = format!("{scheme}://");
    if user {
        shown.push_str("…@");
    }
    shown.push_str(host);
    shown.push_str(path);
    if query {
        shown.push_str("?…");
    }
    if fragment {
        shown.push_str("#…");
    }
    shown
}

/// `text` cut to its first [`LOG_VALUE_CHARS`] characters plus `…(N bytes)` when longer, so a
/// client that sends 4 KB lines cannot make each log line 4 KB.
pub fn truncate_for_log(text: &str) -> String {
    match text.char_indices().nth(LOG_VALUE_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_scheme_host_port_and_path_only() {
        for (url, shown) in [
            ("https://hub.example:8443/api/v1/ingest", "https://hub.example:8443/api/v1/ingest"),
            ("https://hub.example/in?sig=SECRET&se=1", "https://hub.example/in?…"),
            ("http://user:hunter2@hub:80/in?x#frag", "http://…@hub:80/in?…#…"),
            ("mqtt://bob:pw@[::1]:1883", "mqtt://…@[::1]:1883"),
            ("http://hub?token=x/y", "http://hub?…"),
            ("http://hub#a?b", "http://hub#…"),
            ("hunter2", "<url>"),
            ("a b://x", "<url>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn long_text_is_cut_with_its_length() {
        assert_eq!(truncate_for_log("short"), "short");
        let long = "é".repeat(300);
        let cut = truncate_for_log(&long);
        assert!(cut.starts_with(&"é".repeat(200)), "{cut}");
        assert!(cut.ends_with("…(600 bytes)"), "{cut}");
        assert_eq!(truncate_for_log(&"x".repeat(200)), "x".repeat(200));
    }
}
