//! Hostile and unlucky peers of the TCP source, against the real binary (issue #14): session
//! poisoning and churn, `FIRST = u64::MAX`, idle sockets holding every slot, a client that
//! never reads its replies, TLS with and without client certificates, the allow-list and the
//! `#auth` token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::pki::TestPki;
use eddy_tests::{source_counter, wait_until, Eddy};

/// A TCP source `in` with acks, plus `extra` keys on it.
fn config(extra: &[(&str, eddy_tests::config::Value)]) -> String {
    let mut config = ConfigToml::new("gw-hostile")
        .table("ingest")
        .key("flush_interval", "5ms")
        .tcp_source("in")
        .key("ack", true);
    for (key, value) in extra {
        config = config.key(key, value.clone());
    }
    config.window("w", "10s").to_toml()
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// `n` valid reading lines.
fn readings(n: usize) -> String {
    let ts = now_ms() - 1000;
    (0..n).map(|idx| format!("{{\"sensor\":\"s{}\",\"ts\":{ts},\"temp_c\":21.5}}\n", idx % 3)).collect()
}

/// A connection to `address` from the local address `from` (127.0.0.2 is another peer on
/// Linux's loopback).
fn connect_from(from: &str, address: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0);
    socket.bind(&local.into()).unwrap();
    socket.connect(&address.into()).unwrap();
    socket.into()
}

/// Writes `payload`, then reads reply lines until `done` says so, the peer closes, or 10 s.
fn talk(stream: &mut (impl Read + Write), payload: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    // A refused peer may find the connection closed already; what it reads says the rest.
    let _ = stream.write_all(payload.as_bytes()).and_then(|()| stream.flush());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replies = Vec::new();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !done(&replies) && Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => replies.push(line.trim_end().to_owned()),
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    replies
}

fn plain(from: &str, address: SocketAddr) -> TcpStream {
    let stream = connect_from(from, address);
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream
}

fn has(replies: &[String], prefix: &str) -> bool {
    replies.iter().any(|reply| reply.starts_with(prefix))
}

fn acked(replies: &[String], n: u64) -> bool {
    replies.iter().any(|reply| *reply == format!("ack {n}"))
}

/// The replies of a session stored anew: `session ID SETTLED`, then acks up to `n`, no `dup`.
fn stored_anew(replies: &[String], id: &str, settled: u64, n: u64) -> bool {
    replies.first().is_some_and(|first| *first == format!("session {id} {settled}"))
        && acked(replies, n)
        && !has(replies, "dup")
}

fn refused(replies: &[String]) -> bool {
    has(replies, "session-refused") || has(replies, "err auth")
}

/// A session's lines from a peer: `#session ID FIRST` and `n` readings; waits for `ack n`
/// or a refusal.
fn session(stream: &mut (impl Read + Write), id: &str, first: u64, n: u64) -> Vec<String> {
    let payload = format!("#session {id} {first}\n{}", readings(usize::try_from(n).unwrap()));
    talk(stream, &payload, |replies| acked(replies, n) || refused(replies) || has(replies, "dup"))
}

#[test]
fn issue_14_a_stranger_cannot_poison_a_numbered_session_without_credentials() {
    let eddy = Eddy::start(&config(&[])).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    // The real sender, from 127.0.0.1, owns gw7 and settles lines 1 to 3.
    let replies = session(&mut plain("127.0.0.1", address), "gw7", 1, 3);
    assert!(acked(&replies, 3), "{replies:?}");

    // A stranger from 127.0.0.2 claims it with a number near u64::MAX.
    let stranger = session(&mut plain("127.0.0.2", address), "gw7", 18_446_744_073_709_551_614, 1);

    // The real sender's next lines are stored, not answered `dup`.
    let replies = session(&mut plain("127.0.0.1", address), "gw7", 4, 3);
    assert!(stored_anew(&replies, "gw7", 3, 3), "the sender's lines 4-6 are stored: {replies:?}");
    assert!(has(&stranger, "session-refused not_owner session owned by another peer"), "{stranger:?}");
}

#[test]
fn issue_14_a_token_holder_cannot_poison_a_session_past_the_skip_bound() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tcp.token");
    std::fs::write(&token_file, "  t0ken-for-gw \n").unwrap();
    let eddy = Eddy::start(&config(&[
        ("token_file", token_file.display().to_string().into()),
        ("allow_insecure", true.into()),
    ]))
    .unwrap();
    let address = eddy.tcp_address("in").unwrap();
    let auth = "#auth t0ken-for-gw\n";
    let mut real = plain("127.0.0.1", address);
    talk(&mut real, auth, |_| true);
    assert!(acked(&session(&mut real, "gw7", 1, 3), 3));
    drop(real);

    // Without the token: `err auth`, closed, nothing stored.
    let replies = session(&mut plain("127.0.0.2", address), "gw7", 18_446_744_073_709_551_614, 1);
    assert_eq!(replies, ["err auth"]);
    // With the token (the same owner), a jump past the bound is refused, not persisted.
    let mut holder = plain("127.0.0.2", address);
    talk(&mut holder, auth, |_| true);
    let replies = session(&mut holder, "gw7", 18_446_744_073_709_551_614, 1);
    assert!(has(&replies, "session-refused too_far_ahead settled through line 3"), "{replies:?}");

    let mut real = plain("127.0.0.1", address);
    talk(&mut real, auth, |_| true);
    let replies = session(&mut real, "gw7", 4, 3);
    assert!(stored_anew(&replies, "gw7", 3, 3), "the sender's lines 4-6 are stored: {replies:?}");
}

#[test]
fn issue_14_first_u64_max_is_refused_without_overflow() {
    let mut eddy = Eddy::start(&config(&[])).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let replies = session(&mut plain("127.0.0.1", address), "big", u64::MAX, 2);
    assert!(has(&replies, "session-refused too_far_ahead settled through line 0"), "{replies:?}");
    // One past the bound from the settled line is refused; the bound itself is taken.
    let replies = session(&mut plain("127.0.0.1", address), "big", 1_000_002, 1);
    assert!(has(&replies, "session-refused too_far_ahead"), "{replies:?}");
    let replies = session(&mut plain("127.0.0.1", address), "big", 1_000_001, 2);
    assert!(stored_anew(&replies, "big", 0, 2), "{replies:?}");
    assert!(!eddy.log().contains("panicked"), "{}", eddy.log());
    assert!(eddy.stop().unwrap().success(), "{}", eddy.log());
}

#[test]
fn issue_14_session_churn_by_one_connection_does_not_evict_another_peers_session() {
    let eddy = Eddy::start(&config(&[("max_connections", 8.into()), ("max_sessions", 16.into())])).unwrap();
    let address = eddy.tcp_address("in").unwrap();
    assert!(acked(&session(&mut plain("127.0.0.1", address), "gw7", 1, 3), 3));

    // One connection of another peer declares 100 sessions, one line each.
    let mut churn = plain("127.0.0.2", address);
    for idx in 1..=100 {
        let payload = format!("#session junk-{idx} 1\n{}", readings(1));
        let replies = talk(&mut churn, &payload, |replies| has(replies, "ack ") || refused(replies));
        assert!(acked(&replies, idx), "junk-{idx}: {replies:?}");
    }
    // gw7 is remembered: the resend of lines 1-3 is answered `dup`, not stored again.
    let replies = session(&mut plain("127.0.0.1", address), "gw7", 1, 3);
    assert_eq!(replies, ["session gw7 3", "dup 3"], "gw7 was forgotten");
}

/// Longer than the 1 s idle/auth deadline of the lock-out tests, with room for a busy machine.
const DEADLINE_SETTLE: Duration = Duration::from_secs(2);

/// `n` connections that send nothing.
fn silent_sockets(address: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect(address).ok()).collect()
}

/// One reading from 127.0.0.1 (after `preamble`); its replies.
fn real_sender_is_served(address: SocketAddr, preamble: &str) -> Vec<String> {
    let mut stream = plain("127.0.0.1", address);
    talk(&mut stream, &format!("{preamble}{}", readings(1)), |replies| acked(replies, 1) || refused(replies))
}

/// A real sender retrying (a full source closes new connections at once) until its reading
/// is acked or `within` passes; how long it took.
fn real_sender_gets_in(address: SocketAddr, preamble: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if acked(&real_sender_is_served(address, preamble), 1) {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn issue_14_idle_silent_sockets_do_not_lock_out_a_real_sender() {
    for n_idle in [64, 200] {
        let mut eddy = Eddy::start(&config(&[("idle_timeout", "1s".into())])).expect("eddy starts");
        let address = eddy.tcp_address("in").unwrap();
        let idle = silent_sockets(address, n_idle);
        let served = real_sender_gets_in(address, "", Duration::from_secs(8));
        assert!(served.is_some(), "{n_idle} idle sockets locked the real sender out");
        // Every socket holding a slot connected before the sender began, so its deadline has
        // passed a moment after; closing them sooner would count them as ordinary hang-ups.
        thread::sleep(DEADLINE_SETTLE);
        drop(idle);
        assert!(eddy.stop().unwrap().success());
        let timed_out = source_counter(&eddy.log(), "in", "timed_out").unwrap_or(0);
        assert!(timed_out >= 64, "timed_out={timed_out}");
    }
}

#[test]
fn issue_14_silent_sockets_cannot_outwait_the_auth_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tcp.token");
    std::fs::write(&token_file, "sesame\n").unwrap();
    let extra = [
        ("token_file", token_file.display().to_string().into()),
        ("auth_timeout", "1s".into()),
        ("allow_insecure", true.into()),
    ];
    let mut eddy = Eddy::start(&config(&extra)).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let idle = silent_sockets(address, 200);
    let served = real_sender_gets_in(address, "#auth sesame\n", Duration::from_secs(8));
    assert!(served.is_some(), "200 silent sockets locked the real sender out");
    // The sender got in at the first freed slot; the other slot holders' deadlines (all set
    // before it began) pass within a second: wait for them before closing the sockets.
    thread::sleep(DEADLINE_SETTLE);
    drop(idle);
    assert!(eddy.stop().unwrap().success());
    let auth_failures = source_counter(&eddy.log(), "in", "auth_failures").unwrap_or(0);
    assert!(auth_failures >= 64, "auth_failures={auth_failures}");
}

#[test]
fn issue_14_a_client_that_never_reads_its_replies_does_not_grow_memory() {
    let eddy = Eddy::start(&config(&[])).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    // Warm up the allocator and the runtime with ordinary traffic.
    assert!(acked(&real_sender_is_served(address, ""), 1));
    let rss_before = eddy.proc_status_kib("VmRSS:").unwrap();

    // 32 connections send 1 MB each of two-byte garbage lines (an `err` reply of ~50 bytes
    // each, more than the socket buffers take) and never read a reply.
    let garbage: Arc<Vec<u8>> = Arc::new(b"x\n".repeat(512 * 1024));
    let senders: Vec<_> = (0..32)
        .map(|_| {
            let garbage = garbage.clone();
            thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut sent = 0;
                for chunk in garbage.chunks(64 * 1024) {
                    if stream.write_all(chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                (stream, sent)
            })
        })
        .collect();
    let streams: Vec<(TcpStream, usize)> = senders.into_iter().map(|sender| sender.join().unwrap()).collect();
    // Until eddy has read what it will read: the resident size stops moving.
    let mut rss_after = eddy.proc_status_kib("VmRSS:").unwrap();
    let settle_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle_deadline {
        thread::sleep(Duration::from_millis(700));
        let rss = eddy.proc_status_kib("VmRSS:").unwrap();
        if rss == rss_after {
            break;
        }
        rss_after = rss;
    }
    let sent_mb = streams.iter().map(|(_, sent)| sent).sum::<usize>() / 1_000_000;
    let growth_kib = rss_after.saturating_sub(rss_before);
    // Before issue #14 each such connection pinned ~1-3 MB of pending replies (14-30 MB for
    // 16 of them, measured); now 64 KiB (2-3 MB for 16 of them, with the allocator's slack).
    eprintln!("VmRSS {rss_before} -> {rss_after} KiB after {sent_mb} MB sent with replies unread");
    assert!(
        growth_kib < 12 * 1024,
        "VmRSS grew {growth_kib} KiB ({rss_before} -> {rss_after}) after {sent_mb} MB sent with replies unread"
    );
    // The stalled connections hold no one else up.
    assert!(acked(&real_sender_is_served(address, ""), 1));
    drop(streams);
}

#[test]
fn issue_14_a_stalled_reader_is_closed_after_reply_timeout() {
    let mut eddy = Eddy::start(&config(&[("reply_timeout", "1s".into())])).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let garbage = b"{\"sensor\":nope}\n".repeat(4096);
    // eddy stops reading once its replies are stuck, then closes: the writes fail.
    let started = Instant::now();
    let mut closed = false;
    while !closed && started.elapsed() < Duration::from_secs(20) {
        closed = stream.write_all(&garbage).is_err();
    }
    assert!(closed, "eddy kept the connection of a peer that reads nothing");
    assert!(eddy.stop().unwrap().success());
    assert_eq!(source_counter(&eddy.log(), "in", "timed_out"), Some(1), "{}", eddy.log());
}

/// A TLS client (trusting the test CA, presenting the client certificate if `with_cert`).
fn tls_client(
    pki: &TestPki,
    address: SocketAddr,
    with_cert: bool,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let client_auth = with_cert.then_some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let config = eddy_common::tls_client_config(Some(&pki.ca_cert), client_auth, &[]).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let stream = plain("127.0.0.1", address);
    rustls::StreamOwned::new(connection, stream)
}

fn tls_config(pki: &TestPki, client_ca: Option<&Path>) -> String {
    let mut extra = vec![
        ("tls_cert_file", pki.server_cert.display().to_string().into()),
        ("tls_key_file", pki.server_key.display().to_string().into()),
    ];
    if let Some(ca) = client_ca {
        extra.push(("tls_client_ca_file", ca.display().to_string().into()));
    }
    config(&extra)
}

#[test]
fn issue_14_tls_serves_tls_clients_and_refuses_plain_ones() {
    let pki = TestPki::generate("gw-sensor-7").unwrap();
    let mut eddy = Eddy::start(&tls_config(&pki, None)).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let replies = session(&mut tls_client(&pki, address, false), "tls-gw", 1, 5);
    assert!(stored_anew(&replies, "tls-gw", 0, 5), "{replies:?}");
    // Plain text on the TLS port: at most a TLS alert record, never a reply; closed.
    let replies = talk(&mut plain("127.0.0.1", address), &readings(1), |_| false);
    assert!(replies.iter().all(|reply| reply.starts_with('\u{15}')), "{replies:?}");
    assert!(eddy.stop().unwrap().success());
    assert_eq!(source_counter(&eddy.log(), "in", "auth_failures"), Some(1));
}

#[test]
fn issue_14_tls_with_client_certificates_refuses_a_client_without_one() {
    let pki = TestPki::generate("gw-sensor-7").unwrap();
    let mut eddy = Eddy::start(&tls_config(&pki, Some(&pki.ca_cert))).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let replies = session(&mut tls_client(&pki, address, true), "cert-gw", 1, 5);
    assert!(stored_anew(&replies, "cert-gw", 0, 5), "{replies:?}");
    // Without a certificate the handshake fails (TLS 1.3: seen at the first read).
    let mut anonymous = tls_client(&pki, address, false);
    let replies = session(&mut anonymous, "cert-gw", 6, 1);
    assert!(replies.is_empty(), "{replies:?}");
    assert!(eddy.stop().unwrap().success());
    assert_eq!(source_counter(&eddy.log(), "in", "auth_failures"), Some(1), "{}", eddy.log());
}

#[test]
fn issue_14_an_allow_list_refuses_other_peers_at_accept() {
    let mut eddy = Eddy::start(&config(&[("allow", vec!["127.0.0.1/32", "::1/128"].into())])).unwrap();
    let address = eddy.tcp_address("in").unwrap();
    let replies = talk(&mut plain("127.0.0.2", address), &readings(2), |_| false);
    assert!(replies.is_empty(), "{replies:?}");
    let replies = talk(&mut plain("127.0.0.1", address), &readings(2), |replies| acked(replies, 2));
    assert!(acked(&replies, 2), "{replies:?}");
    assert!(
        wait_until(Duration::from_secs(5), || eddy.log().contains("the peer is not in `allow`")),
        "{}",
        eddy.log()
    );
    assert!(eddy.log().contains("peer=127.0.0.2:"), "the log names the peer");
    assert!(eddy.stop().unwrap().success());
    assert_eq!(source_counter(&eddy.log(), "in", "peers_refused"), Some(1));
}

#[test]
fn issue_14_token_auth_accepts_the_token_and_refuses_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tcp.token");
    std::fs::write(&token_file, "c0rrect-h0rse\n").unwrap();
    let mut eddy = Eddy::start(&config(&[
        ("token_file", token_file.display().to_string().into()),
        ("allow_insecure", true.into()),
    ]))
    .unwrap();
    let address = eddy.tcp_address("in").unwrap();
    let reply = |payload: String| {
        talk(&mut plain("127.0.0.1", address), &payload, |replies| acked(replies, 2) || refused(replies))
    };
    assert_eq!(reply(format!("#auth c0rrect-h0rse\n{}", readings(2))), ["ack 2"]);
    assert_eq!(reply(format!("#auth c0rrect-h0rsf\n{}", readings(2))), ["err auth"]);
    assert_eq!(reply(format!("#auth c0rrect-h0rse-and-more\n{}", readings(2))), ["err auth"]);
    assert_eq!(reply(readings(2)), ["err auth"], "a reading before #auth");
    assert!(eddy.stop().unwrap().success());
    let log = eddy.log();
    assert_eq!(source_counter(&log, "in", "auth_failures"), Some(3));
    assert_eq!(source_counter(&log, "in", "accepted"), Some(2));
    assert!(!log.contains("c0rrect-h0rse"), "the token is never logged");
}

#[test]
fn the_readme_security_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("### Security (the TCP source)")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README has a TCP security example");
    let pki = TestPki::generate("gw-sensor-7").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tcp.token");
    std::fs::write(&token_file, "c0rrect-h0rse\n").unwrap();
    let block = block
        .replace("/etc/eddy/tcp.token", &token_file.display().to_string())
        .replace("/etc/eddy/tcp.crt", &pki.server_cert.display().to_string())
        .replace("/etc/eddy/tcp.key", &pki.server_key.display().to_string());
    let path = dir.path().join("eddy.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(&path, format!("device_id = \"gw\"\ndata_dir = \"{}\"\n{block}", data_dir.display()))
        .unwrap();
    let output = std::process::Command::new(eddy_tests::eddy_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("eddy runs");
    assert!(output.status.success(), "README example: {}", String::from_utf8_lossy(&output.stderr));
    // A key error names its key: a missing key file.
    std::fs::write(
        &path,
        format!(
            "device_id = \"gw\"\ndata_dir = \"{}\"\n{}",
            data_dir.display(),
            block.replace(&pki.server_key.display().to_string(), "/nonexistent/tcp.key",)
        ),
    )
    .unwrap();
    let output = std::process::Command::new(eddy_tests::eddy_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("eddy runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sources[0].tls_key_file"), "{stderr}");
    assert!(!stderr.contains("c0rrect-h0rse"), "{stderr}");
}
