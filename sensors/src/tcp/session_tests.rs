//! Tests of numbered sessions (`#session`) on real loopback connections: what is answered,
//! what is handed to the log with which marks, and how a session passes between connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::ingest::{ingest_channel, Durability, Mark, StoredMarks};
use crate::parse::{Format, Limits, LineParser};
use crate::registry::SensorRegistry;
use crate::schema::Schema;
use crate::stats::SourceStats;
use crate::tcp::tests::{test_config, valid_line, PROMPTLY};
use crate::tcp::TcpSource;

/// What the fake log was handed: per batch, its number of readings and its marks.
type Handed = Arc<Mutex<Vec<(usize, Vec<Mark>)>>>;

struct Setup {
    addr: SocketAddr,
    handed: Handed,
    stats: Arc<SourceStats>,
    _shutdown: tokio_util::sync::DropGuard,
}

/// A TCP source restored with `stored` sessions, over a log that stores everything (or
/// refuses the batches whose first mark starts at a line in `refuse_from`).
async fn setup(stored: Vec<(Arc<str>, u64)>, refuse_first_lines: &'static [u64]) -> Setup {
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default()));
    let stats = Arc::new(SourceStats::new("tcp-sessions"));
    let source = TcpSource::bind(test_config(), 0, parser, Arc::new(SensorRegistry::new(100)), stats.clone())
        .await
        .unwrap()
        .with_stored_marks(StoredMarks { sessions: stored, messages: Vec::new() });
    let addr = source.local_addr();
    let (ingest, mut receiver) = ingest_channel(16);
    let handed: Handed = Arc::default();
    let log = handed.clone();
    tokio::spawn(async move {
        while let Some(batch) = receiver.recv().await {
            let refused = batch
                .marks
                .iter()
                .any(|mark| matches!(mark, Mark::Lines { first, .. } if refuse_first_lines.contains(first)));
            if !refused {
                log.lock().unwrap().push((batch.readings.len(), batch.marks.clone()));
            }
            if let Some(durable) = batch.durable {
                let _ = durable.send(if refused {
                    Durability::Refused(Arc::from("budget full"))
                } else {
                    Durability::Durable
                });
            }
        }
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(source.run(ingest, shutdown.clone()));
    Setup { addr, handed, stats, _shutdown: shutdown.drop_guard() }
}

fn lines(range: std::ops::Range<u64>) -> String {
    range.map(|idx| valid_line(idx % 3, idx)).collect()
}

/// Writes `payload`, half-closes, returns every reply until the server closes.
async fn exchange(addr: SocketAddr, payload: String) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(payload.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut replies = Vec::new();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while tokio::time::timeout(*PROMPTLY, reader.read_line(&mut line))
        .await
        .expect("replies in time")
        .unwrap()
        > 0
    {
        replies.push(line.trim_end().to_owned());
        line.clear();
    }
    replies
}

fn session_marks(handed: &Handed) -> Vec<(usize, u64, u64, bool)> {
    handed
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(n_readings, marks)| {
            marks.iter().filter_map(move |mark| match mark {
                Mark::Lines { first, last, renumbered, .. } => {
                    Some((*n_readings, *first, *last, *renumbered))
                }
                _ => None,
            })
        })
        .collect()
}

#[tokio::test]
async fn lines_a_session_settled_before_are_answered_dup_and_not_stored_again() {
    let setup = setup(vec![(Arc::from("probe-1"), 3)], &[]).await;
    let replies = exchange(setup.addr, format!("#session probe-1 1\n{}", lines(0..5))).await;
    assert_eq!(replies, ["session probe-1 3", "dup 3", "ack 2"]);
    assert_eq!(session_marks(&setup.handed), [(2, 4, 5, true)], "only lines 4 and 5 are stored");

    // Resent once more on a new connection: all of it was settled.
    let replies = exchange(setup.addr, format!("#session probe-1 1\n{}", lines(0..5))).await;
    assert_eq!(replies, ["session probe-1 5", "dup 5"]);
    assert_eq!(session_marks(&setup.handed).len(), 1, "nothing more stored");
    assert_eq!(setup.stats.snapshot().duplicates, 8);

    // A sender that skips what is settled goes on from there.
    let replies = exchange(setup.addr, format!("#session probe-1 6\n{}", lines(5..7))).await;
    assert_eq!(replies, ["session probe-1 5", "ack 2"]);
    assert_eq!(session_marks(&setup.handed)[1], (2, 6, 7, true));
}

#[tokio::test]
async fn a_session_line_mid_stream_is_answered_after_every_earlier_line() {
    let setup = setup(vec![], &[]).await;
    let payload =
        format!("{}not json\n#session a 1\n{}#session b 10\n{}", lines(0..2), lines(2..4), lines(4..5));
    let replies: Vec<String> = exchange(setup.addr, payload)
        .await
        .into_iter()
        .map(|reply| reply.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    // Line numbers of `err` count reading lines only; a session line has none.
    assert_eq!(replies, ["ack 2", "err 3 bad_syntax", "session a 0", "ack 4", "session b 0", "ack 5"]);
    assert_eq!(session_marks(&setup.handed), [(2, 1, 2, true), (1, 10, 10, true)]);
}

#[tokio::test]
async fn a_malformed_session_line_is_refused_and_ends_the_connection() {
    let setup = setup(vec![], &[]).await;
    let replies = exchange(setup.addr, format!("#session bad$id 1\n{}", lines(0..3))).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("session-refused bad_syntax"), "{replies:?}");
    assert!(setup.handed.lock().unwrap().is_empty(), "nothing after it is stored unnumbered");
}

#[tokio::test]
async fn a_refused_batch_leaves_its_lines_unsettled_for_the_resend() {
    // The log refuses every batch starting at line 1: the session's number must stay below
    // the refused lines, so their resend is stored, not taken for duplicates.
    let setup = setup(vec![], &[1]).await;
    let replies = exchange(setup.addr, format!("#session s 1\n{}", lines(0..3))).await;
    assert_eq!(replies, ["session s 0", "nack 3 budget full"]);
    let replies = exchange(setup.addr, format!("#session s 2\n{}", lines(1..3))).await;
    assert_eq!(replies, ["session s 0", "ack 2"], "nothing was settled by the refused batch");
}

#[tokio::test]
async fn a_new_connection_takes_a_held_session_over_with_the_exact_number() {
    let setup = setup(vec![], &[]).await;
    // The first connection stays open, as a half-dead one would.
    let mut first = TcpStream::connect(setup.addr).await.unwrap();
    first.write_all(format!("#session gw 1\n{}", lines(0..4)).as_bytes()).await.unwrap();
    let mut first_replies = BufReader::new(first);
    let mut line = String::new();
    for expected in ["session gw 0", "ack 4"] {
        line.clear();
        tokio::time::timeout(*PROMPTLY, first_replies.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(line.trim_end(), expected);
    }
    let replies = exchange(setup.addr, format!("#session gw 1\n{}", lines(0..6))).await;
    assert_eq!(replies, ["session gw 4", "dup 4", "ack 2"]);
    // The first connection was let go.
    line.clear();
    let closed = tokio::time::timeout(*PROMPTLY, first_replies.read_line(&mut line)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "the old connection is closed, got {line:?}");
    assert_eq!(session_marks(&setup.handed), [(4, 1, 4, true), (2, 5, 6, true)]);
}
