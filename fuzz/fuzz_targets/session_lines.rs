//! Fuzz target: the TCP source's control lines. `#session ID FIRST` (`parse_session_line`)
//! never panics, accepts only well-formed ids and numbers, and what it accepts round-trips
//! through its canonical text; `#auth TOKEN` (`auth_line_matches`) agrees with a plain model.
#![no_main]

use eddy_sensors::{auth_line_matches, parse_session_line, Secret, MAX_SESSION_ID_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `TOKEN\0LINE`; without a NUL byte the whole input is the line and the token is empty.
    let (token, line) = match data.iter().position(|byte| *byte == 0) {
        Some(nul_idx) => (&data[..nul_idx], &data[nul_idx + 1..]),
        None => (&b""[..], data),
    };
    let token = String::from_utf8_lossy(token);
    if let Ok((id, first)) = parse_session_line(line) {
        assert!(!id.is_empty() && id.len() <= MAX_SESSION_ID_BYTES, "session id of {} bytes", id.len());
        assert!(id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-:@/".contains(&byte)), "{id:?}");
        assert!(first >= 1);
        let text = std::str::from_utf8(line).expect("accepted a line that is not UTF-8");
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        assert_eq!(words.len(), 3);
        assert_eq!(words[0], "#session");
        assert_eq!(words[1], &*id);
        let canonical = format!("#session {id} {first}");
        assert_eq!(parse_session_line(canonical.as_bytes()), Ok((id.clone(), first)), "no round trip");
    }
    // The input read as a session id and number: a well-formed pair is always accepted.
    let candidate = String::from_utf8_lossy(line);
    let id: String =
        candidate.chars().filter(|c| c.is_ascii_alphanumeric() || "._-:@/".contains(*c)).take(128).collect();
    if !id.is_empty() {
        let first = u64::try_from(line.len()).unwrap_or(u64::MAX).max(1);
        let text = format!("#session {id} {first}");
        assert_eq!(parse_session_line(text.as_bytes()), Ok((id.as_str().into(), first)));
    }

    let secret = Secret::verbatim(token.as_ref());
    let expected = line.strip_prefix(b"#auth ").is_some_and(|given| given.trim_ascii() == token.as_bytes());
    assert_eq!(auth_line_matches(line, &secret), expected, "auth verdict differs from the model");
    if !token.is_empty() && token.trim_ascii() == token.as_ref() {
        let good = format!("#auth {token}\r");
        assert!(auth_line_matches(good.as_bytes(), &secret), "the right token was refused");
    }
});
