//! Tests of the store: round trips, corruption handling, atomic commits, cursors.

use std::sync::Arc;

use eddy_sensors::Reading;

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn open(dir: &Path) -> Store {
    Store::open(dir, 1 << 20, names(&["temp_c", "humidity"]), names(&["mode"])).expect("open")
}

fn reading(sensor: &str, ts_ms: i64, temp: f64) -> Reading {
    Reading {
        sensor: Arc::from(sensor),
        ts_ms,
        values: smallvec::smallvec![Some(temp), None],
        tags: smallvec::smallvec![Some(Arc::from("heat"))],
    }
}

fn chunk(key: u64, readings: Vec<Reading>) -> LogChunk {
    LogChunk {
        key,
        ingest_ms: 1_700_000_000_000 + i64::try_from(key).unwrap(),
        batch: 7,
        readings,
        marks: Vec::new(),
    }
}

#[tokio::test]
async fn log_chunks_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = vec![
        chunk(1, vec![reading("t-1", 10, 21.5), reading("t-2", 11, -3.25)]),
        chunk(2, vec![reading("t-1", 12, 22.0)]),
    ];
    {
        let store = open(dir.path());
        store.append_log(&chunks).unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.last_log_key().unwrap(), Some(2));
    let (read, skipped) = store.read_log_after(0, 100).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(read, chunks);
    let (after_one, _) = store.read_log_after(1, 100).unwrap();
    assert_eq!(after_one, chunks[1..]);
}

#[tokio::test]
async fn undecodable_log_chunk_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append_log(&[chunk(1, vec![reading("a", 1, 1.0)])]).unwrap();
    store.log.insert(2u64.to_be_bytes(), &[0xff, 0x00, 0x13][..]).unwrap();
    store.append_log(&[chunk(3, vec![reading("b", 2, 2.0)])]).unwrap();
    let (read, skipped) = store.read_log_after(0, 100).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(read.iter().map(|c| c.key).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(read[1].readings.is_empty());
    assert_eq!(store.stats().corrupt_log_chunks.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn readings_are_remapped_by_name_when_the_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append_log(&[chunk(1, vec![reading("a", 1, 20.0)])]).unwrap();
        store.flush().await.unwrap();
    }
    let store = Store::open(dir.path(), 1 << 20, names(&["pressure", "temp_c"]), vec![]).unwrap();
    let (read, _) = store.read_log_after(0, 10).unwrap();
    assert_eq!(read[0].readings[0].values[..], [None, Some(20.0)]);
    assert!(read[0].readings[0].tags.is_empty());
}

#[tokio::test]
async fn commit_writes_results_state_and_position_together() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let entry =
            |n: u8| OutboxEntry { kind: "window".into(), group: "g".into(), payload: vec![b'{', n, b'}'] };
        store
            .commit(&Commit {
                outbox: vec![entry(1), entry(2)],
                state: vec![(b"k1".to_vec(), Some(b"v1".to_vec())), (b"k2".to_vec(), Some(b"v2".to_vec()))],
                log_pos: 5,
                next_seq: 3,
                clock_ms: 10,
                ..Commit::default()
            })
            .unwrap();
        store
            .commit(&Commit {
                outbox: vec![entry(3)],
                state: vec![(b"k1".to_vec(), None)],
                log_pos: 9,
                next_seq: 4,
                clock_ms: 20,
                ..Commit::default()
            })
            .unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    let snapshot = store.load_engine().unwrap();
    assert_eq!(snapshot.log_pos, 9);
    assert_eq!(snapshot.next_seq, 4);
    assert_eq!(snapshot.clock_ms, 20);
    assert_eq!(snapshot.entries, vec![(b"k2".to_vec(), b"v2".to_vec())]);
    let outbox = store.read_outbox_after(0, 10).unwrap();
    assert_eq!(outbox.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(outbox[2].1.payload, b"{\x03}".to_vec());
    assert_eq!(store.read_outbox_after(2, 10).unwrap().len(), 1);
    store.trim_outbox_through(2).unwrap();
    assert_eq!(store.read_outbox_after(0, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn a_fresh_store_starts_at_position_zero_and_seq_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let snapshot = store.load_engine().unwrap();
    assert_eq!((snapshot.log_pos, snapshot.next_seq, snapshot.entries.len()), (0, 1, 0));
    assert_eq!(store.last_log_key().unwrap(), None);
    assert_eq!(store.cursor("console").unwrap(), 0);
}

#[tokio::test]
async fn cursors_are_kept_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.set_cursor("console", 7).unwrap();
        store.set_cursor("file", 3).unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.cursor("console").unwrap(), 7);
    assert_eq!(store.cursor("file").unwrap(), 3);
    // A cursor key never collides with the outbox or the state.
    assert!(store.read_outbox_after(0, 10).unwrap().is_empty());
    assert!(store.load_engine().unwrap().entries.is_empty());
}

#[tokio::test]
async fn trimming_the_log_keeps_later_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let chunks: Vec<_> = (1..=5).map(|key| chunk(key, vec![reading("a", 1, 1.0)])).collect();
    store.append_log(&chunks).unwrap();
    assert_eq!(store.trim_log_through(3).unwrap(), 3);
    let (read, _) = store.read_log_after(0, 10).unwrap();
    assert_eq!(read.iter().map(|c| c.key).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn a_store_held_by_another_handle_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let error = Store::open(dir.path(), 1 << 20, vec![], vec![]).expect_err("second open must fail");
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("another eddy"), "{error}");
}

#[test]
fn an_unopenable_store_names_the_path_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    // A regular file where the directory should be cannot be opened.
    let file_path = dir.path().join("not-a-dir");
    std::fs::write(&file_path, b"x").unwrap();
    let error = Store::open(&file_path, 1 << 20, vec![], vec![]).expect_err("must fail");
    let message = error.to_string();
    assert!(message.contains(&file_path.display().to_string()), "{message}");
    assert!(message.contains("move the directory aside"), "{message}");
}

fn numbered_entries(n: usize) -> Vec<OutboxEntry> {
    (0..n)
        .map(|idx| OutboxEntry {
            kind: "window".into(),
            group: "g".into(),
            payload: idx.to_string().into_bytes(),
        })
        .collect()
}

#[tokio::test]
async fn outbox_pages_read_from_any_seq_and_trim_only_when_fully_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 600 results in one commit: pages of 256 starting at seqs 1, 257, 513.
    let first = numbered_entries(600);
    store
        .commit(&Commit { outbox: first, state: vec![], log_pos: 1, next_seq: 601, ..Commit::default() })
        .unwrap();
    let second = numbered_entries(10);
    store
        .commit(&Commit { outbox: second, state: vec![], log_pos: 2, next_seq: 611, ..Commit::default() })
        .unwrap();

    let all = store.read_outbox_after(0, 10_000).unwrap();
    assert_eq!(all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=610).collect::<Vec<_>>());
    let from_middle = store.read_outbox_after(300, 10_000).unwrap();
    assert_eq!(from_middle.first().map(|(seq, _)| *seq), Some(301));
    assert_eq!(from_middle[0].1.payload, b"300".to_vec());
    assert_eq!(from_middle.len(), 310);
    assert!(store.read_outbox_after(610, 10).unwrap().is_empty());
    // `max` is exact even when a page holds more.
    let few = store.read_outbox_after(0, 3).unwrap();
    assert_eq!(few.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![1, 2, 3]);

    // Delivered through 300: only the first page (1..=256) is gone.
    assert_eq!(store.trim_outbox_through(300).unwrap(), 1);
    assert_eq!(store.read_outbox_after(0, 10_000).unwrap().first().map(|(seq, _)| *seq), Some(257));
    assert_eq!(store.read_outbox_after(300, 10_000).unwrap().len(), 310);
    // Delivered through 600: the pages of the first commit are gone, the second stays.
    assert_eq!(store.trim_outbox_through(600).unwrap(), 2);
    assert_eq!(store.read_outbox_after(0, 10_000).unwrap().len(), 10);
    assert_eq!(store.trim_outbox_through(610).unwrap(), 1);
    assert!(store.read_outbox_after(0, 10_000).unwrap().is_empty());
}

#[tokio::test]
async fn many_state_entries_survive_in_pages_with_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let puts: Vec<_> = (0..1000u32)
            .map(|idx| (format!("w/{idx}").into_bytes(), Some(idx.to_be_bytes().to_vec())))
            .collect();
        store
            .commit(&Commit { outbox: vec![], state: puts, log_pos: 1, next_seq: 1, ..Commit::default() })
            .unwrap();
        let mut changes: Vec<_> = (0..1000u32)
            .filter(|idx| idx % 10 == 0)
            .map(|idx| {
                let value = (idx % 20 == 0).then(|| b"new".to_vec());
                (format!("w/{idx}").into_bytes(), value)
            })
            .collect();
        // Two changes of one key in a commit: the later one holds.
        changes.push((b"w/3".to_vec(), Some(b"first".to_vec())));
        changes.push((b"w/3".to_vec(), None));
        changes.push((b"w/5".to_vec(), None));
        changes.push((b"w/5".to_vec(), Some(b"second".to_vec())));
        changes.push((b"w/new".to_vec(), Some(b"added".to_vec())));
        store
            .commit(&Commit { outbox: vec![], state: changes, log_pos: 2, next_seq: 1, ..Commit::default() })
            .unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    let mut entries = store.load_engine().unwrap().entries;
    entries.sort();
    assert_eq!(entries.len(), 950);
    assert!(entries.windows(2).all(|pair| pair[0].0 != pair[1].0), "no key twice");
    let value_of =
        |name: &str| entries.iter().find(|(key, _)| key == name.as_bytes()).map(|(_, v)| v.clone());
    assert_eq!(value_of("w/20"), Some(b"new".to_vec()));
    assert_eq!(value_of("w/10"), None);
    assert_eq!(value_of("w/7"), Some(7u32.to_be_bytes().to_vec()));
    assert_eq!(value_of("w/3"), None);
    assert_eq!(value_of("w/5"), Some(b"second".to_vec()));
    assert_eq!(value_of("w/new"), Some(b"added".to_vec()));
}

#[test]
fn outbox_pages_are_compressed_and_older_pages_still_decode() {
    use crate::storage::stored::{self, OutboxEntryV1, OutboxEntryV1Ref, OutboxPage};
    let payload = |i: usize| {
        format!(
            r#"{{"type":"window","window":"temp_10s","device":"gw-01","sensor":"t-{i:03}","field":"temp_c","start":1700000000000,"end":1700000010000,"count":12,"sum":256.1,"id":"gw-01/temp_10s/t-{i:03}/temp_c/1700000000000"}}"#
        )
    };
    let payloads: Vec<String> = (0..256).map(payload).collect();
    let borrowed: Vec<OutboxEntryV1Ref<'_>> = payloads
        .iter()
        .map(|payload| OutboxEntryV1Ref { kind: "window", group: "g 1", payload: payload.as_bytes() })
        .collect();
    let owned: Vec<OutboxEntryV1> = payloads
        .iter()
        .map(|payload| OutboxEntryV1 {
            kind: "window".into(),
            group: "g 1".into(),
            payload: payload.clone().into(),
        })
        .collect();
    let plain = postcard::to_allocvec(&owned).unwrap();
    assert_eq!(plain, postcard::to_allocvec(&borrowed).unwrap(), "borrowed and owned encode alike");

    let compressed = stored::compress_outbox_entries(&borrowed).unwrap();
    let page = stored::encode_outbox_page(1234, borrowed.len(), &compressed).unwrap();
    assert!(page.len() * 4 < plain.len(), "compressed {} of {} bytes", page.len(), plain.len());
    let (committed_ms, decoded) = stored::decode_outbox_page(&page).unwrap();
    assert_eq!((committed_ms, decoded.len()), (Some(1234), 256));
    assert_eq!(decoded[17].payload, payloads[17].as_bytes());
    assert_eq!(stored::outbox_page_header(&page), Ok((Some(1234), 256)));

    let v2 = postcard::to_allocvec(&OutboxPage::V2 { committed_ms: 99, entries: owned.clone() }).unwrap();
    assert_eq!(stored::outbox_page_header(&v2), Ok((Some(99), 256)));
    let v1 = postcard::to_allocvec(&OutboxPage::V1 { entries: owned }).unwrap();
    let (committed_ms, decoded) = stored::decode_outbox_page(&v1).unwrap();
    assert_eq!((committed_ms, decoded.len(), decoded[255].group.as_str()), (None, 256, "g 1"));
}

#[test]
fn state_pages_round_trip_and_version_1_pages_still_decode() {
    use crate::storage::stored::{self, StatePage};
    // Values up to 500 bytes: lengths of one and two varint bytes.
    let entries: Vec<(Vec<u8>, Vec<u8>)> =
        (0..50u8).map(|i| (vec![b'w', i], vec![i; usize::from(i) * 10])).collect();
    let borrowed: Vec<_> = entries.iter().map(|(k, v)| (stored::Bytes(k), stored::Bytes(v))).collect();
    let page = stored::encode_state_page(&borrowed).unwrap();
    assert_eq!(stored::decode_state_page(&page).unwrap(), entries);
    // The borrowed encoding writes exactly the bytes the owned `Lz4V1` always had.
    let owned = StatePage::Lz4V1 { compressed: stored::compress(&postcard::to_allocvec(&entries).unwrap()) };
    assert_eq!(page, postcard::to_allocvec(&owned).unwrap());
    let v1 = postcard::to_allocvec(&StatePage::V1 { entries: entries.clone() }).unwrap();
    assert_eq!(stored::decode_state_page(&v1).unwrap(), entries);
    assert_eq!(
        stored::decode_state_page(&postcard::to_allocvec(&StatePage::Empty).unwrap()).unwrap(),
        vec![]
    );
}

#[test]
fn torn_or_oversized_compressed_pages_are_errors_not_allocations() {
    use crate::storage::stored;
    let page = stored::compress(&[7u8; 1000]);
    assert_eq!(stored::decompress(&page).unwrap(), vec![7u8; 1000]);
    assert!(stored::decompress(&page[..page.len() - 3]).is_err(), "torn");
    assert!(stored::decompress(&[1, 2]).is_err(), "no size");
    let mut huge = page.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(stored::decompress(&huge), Err(format!("compressed page announces {} bytes", u32::MAX)));
}

proptest::proptest! {
    // LZ4 is encoded with lz4_flex's unsafe encoder (decoding stays safe and checked): any
    // bytes, repetitive or not, short or past the encoder's 64 KiB table switch, come back.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn any_bytes_compress_and_come_back(
        runs in proptest::collection::vec((0u8..4, 1usize..2_000), 0..120),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        use crate::storage::stored;
        let mut bytes: Vec<u8> = runs.iter().flat_map(|&(byte, len)| std::iter::repeat_n(byte, len)).collect();
        for (idx, byte) in noise.iter().enumerate() {
            let at = idx.wrapping_mul(7919) % (bytes.len() + 1);
            bytes.insert(at, *byte);
        }
        proptest::prop_assert_eq!(stored::decompress(&stored::compress(&bytes)).unwrap(), bytes);
    }
}

#[tokio::test]
async fn version_1_log_chunks_still_decode_and_borrowed_chunks_encode_like_owned_ones() {
    use crate::storage::stored::{LogChunkV1, LogChunkV1Ref, LogEnvelope, ReadingV1, ReadingsRef};
    let readings = vec![reading("t-1", 10, 21.5)];
    let fields = names(&["temp_c", "humidity"]);
    let tags = names(&["mode"]);
    let borrowed = LogChunkV1Ref {
        ingest_ms: 5,
        batch: 2,
        field_names: &fields,
        tag_names: &tags,
        readings: ReadingsRef(&readings),
    };
    let owned = LogChunkV1 {
        ingest_ms: 5,
        batch: 2,
        field_names: fields.clone(),
        tag_names: tags.clone(),
        readings: vec![ReadingV1 {
            sensor: "t-1".into(),
            ts_ms: 10,
            values: readings[0].values.to_vec(),
            tags: vec![Some("heat".into())],
        }],
    };
    assert_eq!(postcard::to_allocvec(&borrowed).unwrap(), postcard::to_allocvec(&owned).unwrap());

    // A chunk written by an older eddy (uncompressed V1) is read back as it was.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.log.insert(7u64.to_be_bytes(), postcard::to_allocvec(&LogEnvelope::V1(owned)).unwrap()).unwrap();
    let (read, skipped) = store.read_log_after(0, 10).unwrap();
    assert_eq!((skipped, read.len()), (0, 1));
    assert_eq!((read[0].key, read[0].ingest_ms, read[0].batch), (7, 5, 2));
    assert_eq!(read[0].readings, readings);
}

#[test]
fn sealed_pages_take_the_seqs_before_the_unsealed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let entries = numbered_entries(600);
    let sealed = vec![
        Store::seal_outbox_page(&entries[..256]).unwrap(),
        Store::seal_outbox_page(&entries[256..512]).unwrap(),
    ];
    assert_eq!(sealed.iter().map(SealedPage::len).collect::<Vec<_>>(), [256, 256]);
    store
        .commit(&Commit {
            sealed,
            outbox: entries[512..].to_vec(),
            log_pos: 1,
            next_seq: 611,
            ..Commit::default()
        })
        .unwrap();
    let read = store.read_outbox_after(0, 10_000).unwrap();
    let seqs: Vec<u64> = read.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (11..611).collect::<Vec<u64>>());
    let in_order: Vec<OutboxEntry> = read.into_iter().map(|(_, entry)| entry).collect();
    assert_eq!(in_order, entries);
}

#[tokio::test]
async fn marks_are_stored_with_their_chunk_and_outlive_the_trim_through_the_commit() {
    use crate::storage::stored::{LogChunkV2, LogChunkV2Ref, ReadingV1, ReadingsRef};
    let dir = tempfile::tempdir().unwrap();
    let mark = |id: &[u8], value| (id.to_vec(), value);
    {
        let store = open(dir.path());
        let mut with_marks = chunk(1, vec![reading("t-1", 10, 21.0)]);
        with_marks.marks = vec![mark(b"in\0lsess", Some(40)), mark(b"in\0lgone", None)];
        store.append_log(&[with_marks.clone()]).unwrap();
        store.flush().await.unwrap();
        let (read, _) = store.read_log_after(0, 10).unwrap();
        assert_eq!(read, vec![with_marks.clone()], "the marks come back with the readings");

        // The commit that covers the chunk keeps its marks; then the chunk may go.
        store
            .commit(&Commit {
                log_pos: 1,
                next_seq: 1,
                marks: mark_changes_by_page(&with_marks.marks),
                ..Commit::default()
            })
            .unwrap();
        store.trim_log_through(1).unwrap();
        store
            .commit(&Commit {
                log_pos: 1,
                next_seq: 1,
                marks: mark_changes_by_page(&[mark(b"in\0lnew", Some(7))]),
                ..Commit::default()
            })
            .unwrap();
        store
            .commit(&Commit {
                log_pos: 1,
                next_seq: 1,
                marks: mark_changes_by_page(&[mark(b"in\0lnew", None)]),
                ..Commit::default()
            })
            .unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.load_marks().unwrap(), vec![(b"in\0lsess".to_vec(), 40)], "forgotten marks are gone");
    assert!(store.read_log_after(0, 10).unwrap().0.is_empty());

    // The borrowed encoding has the owned layout.
    let readings = vec![reading("t-1", 10, 21.5)];
    let (fields, tags) = (names(&["temp_c", "humidity"]), names(&["mode"]));
    let marks = vec![mark(b"in\0p\0\x07", Some(99))];
    let borrowed = LogChunkV2Ref {
        ingest_ms: 5,
        batch: 2,
        field_names: &fields,
        tag_names: &tags,
        readings: ReadingsRef(&readings),
        marks: &marks,
    };
    let owned = LogChunkV2 {
        ingest_ms: 5,
        batch: 2,
        field_names: fields.clone(),
        tag_names: tags.clone(),
        readings: vec![ReadingV1 {
            sensor: "t-1".into(),
            ts_ms: 10,
            values: readings[0].values.to_vec(),
            tags: vec![Some("heat".into())],
        }],
        marks: marks.clone(),
    };
    assert_eq!(postcard::to_allocvec(&borrowed).unwrap(), postcard::to_allocvec(&owned).unwrap());

    // A chunk as eddy wrote it before the column format (Lz4V2) still reads back, marks and all.
    let v2 = crate::storage::stored::encode_log_chunk_v2(&borrowed).unwrap();
    store.log.insert(9u64.to_be_bytes(), v2).unwrap();
    let (read, skipped) = store.read_log_after(8, 10).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(read[0].readings, readings);
    assert_eq!(read[0].marks, marks);
    assert_eq!((read[0].ingest_ms, read[0].batch), (5, 2));
}

#[test]
fn a_commit_covering_every_packet_id_writes_256_mark_pages_and_reads_back_every_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let key = |packet_id: u16| [&b"mqtt\0p"[..], &packet_id.to_be_bytes()].concat();
    let marks: Vec<MarkChange> = (0..=u16::MAX).map(|id| (key(id), Some(u64::from(id) + 1))).collect();
    store
        .commit(&Commit { log_pos: 1, next_seq: 1, marks: mark_changes_by_page(&marks), ..Commit::default() })
        .unwrap();
    assert_eq!(store.main.scan_prefix([MARKS]).count(), 256, "one page per 256 packet ids");
    // Forget one, change another: only their page is rewritten, the rest stays.
    let changes = vec![(key(7), None), (key(300), Some(9))];
    store
        .commit(&Commit {
            log_pos: 1,
            next_seq: 1,
            marks: mark_changes_by_page(&changes),
            ..Commit::default()
        })
        .unwrap();
    let loaded = store.load_marks().unwrap();
    assert_eq!(loaded.len(), 65_535);
    assert!(loaded.iter().all(|(mark, _)| *mark != key(7)));
    assert!(
        loaded.contains(&(key(300), 9))
            && loaded.contains(&(key(8), 9))
            && loaded.contains(&(key(u16::MAX), 65_536))
    );
}

#[test]
fn a_torn_mark_page_is_skipped_counted_and_rebuilt_by_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let page = prefixed(MARKS, b"in\0lsess");
    store.main.insert(&page, &[0xff, 0x01][..]).unwrap();
    assert!(store.load_marks().unwrap().is_empty(), "its marks are unknown: a resend is stored again");
    assert_eq!(store.stats().corrupt_meta.load(Ordering::Relaxed), 1);
    let marks = vec![(b"in\0lsession".to_vec(), Some(12))];
    store
        .commit(&Commit { log_pos: 1, next_seq: 1, marks: mark_changes_by_page(&marks), ..Commit::default() })
        .unwrap();
    assert_eq!(store.load_marks().unwrap(), vec![(b"in\0lsession".to_vec(), 12)]);
}

/// The vendored sled starts unbounded reverse scans from 4 KiB of 0xFF, not 1 MiB
/// (vendor/README.md): the log's `last`, the outbox's and the dead letters' ends rely on such
/// scans reaching the greatest key. Keys up to 4,095 0xFF bytes, enough of them to split leaves.
#[test]
fn reverse_scans_reach_the_last_key_of_the_patched_sled() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().expect("sled open");
    let tree = db.open_tree("t").expect("tree");
    let mut keys: Vec<Vec<u8>> = (0u64..2_000).map(|n| n.to_be_bytes().to_vec()).collect();
    keys.push(u64::MAX.to_be_bytes().to_vec());
    // Enough keys past 64 0xFF bytes to fill leaves of their own (a shorter start key lands
    // left of them and the scan panics: checked with 16 bytes).
    keys.extend((0u32..600).map(|n| [&[0xFF; 64][..], &n.to_be_bytes()].concat()));
    for len in [1, 8, 64, 1_000, 4_095] {
        keys.push(vec![0xFF; len]);
        let mut below = vec![0xFF; len];
        below.push(0x00);
        keys.push(below);
    }
    for key in &keys {
        tree.insert(key, vec![0xA5; 512]).expect("insert");
    }
    keys.sort();
    keys.dedup();
    let greatest = keys.last().unwrap().clone();
    assert_eq!(greatest.len(), 4_096, "the greatest key: 4,095 0xFF bytes then 0x00");
    assert_eq!(tree.last().unwrap().map(|(key, _)| key.to_vec()), Some(greatest.clone()));
    let reversed: Vec<Vec<u8>> = tree.iter().rev().map(|item| item.unwrap().0.to_vec()).collect();
    let mut expected = keys.clone();
    expected.reverse();
    assert_eq!(reversed, expected, "a reverse scan sees every key, greatest first");
    let tail: Vec<Vec<u8>> =
        tree.scan_prefix([0xFF]).rev().take(3).map(|item| item.unwrap().0.to_vec()).collect();
    assert_eq!(tail, expected[..3].to_vec());
}

#[test]
fn byte_strings_read_and_written_in_one_copy_keep_the_layout_of_a_plain_vec() {
    use crate::storage::stored::{
        decode_outbox_page, encode_outbox_page, LogEnvelope, OutboxEntryV1, OutboxEntryV1Ref,
    };
    // What eddy wrote before `byte_vec`: the plain derives, one byte at a time.
    #[derive(serde::Serialize)]
    struct PlainEntry {
        kind: String,
        group: String,
        payload: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    enum PlainPage {
        #[allow(dead_code)]
        V1 {
            entries: Vec<PlainEntry>,
        },
        #[allow(dead_code)]
        V2 {
            committed_ms: i64,
            entries: Vec<PlainEntry>,
        },
        Lz4V2 {
            committed_ms: i64,
            n_entries: u32,
            compressed: Vec<u8>,
        },
    }
    #[derive(serde::Serialize)]
    enum PlainLog {
        #[allow(dead_code)]
        V1(()),
        #[allow(dead_code)]
        Lz4V1(Vec<u8>),
        #[allow(dead_code)]
        Lz4V2(Vec<u8>),
        Lz4V3(Vec<u8>),
    }
    // Lengths across postcard's varint boundaries (127/128, 16383/16384).
    for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
        let payload: Vec<u8> = (0..len).map(|idx| u8::try_from(idx % 251).unwrap()).collect();
        let plain = PlainEntry { kind: "window".into(), group: "g".into(), payload: payload.clone() };
        let owned = OutboxEntryV1 { kind: "window".into(), group: "g".into(), payload: payload.clone() };
        let borrowed = OutboxEntryV1Ref { kind: "window", group: "g", payload: &payload };
        let plain_bytes = postcard::to_allocvec(&plain).unwrap();
        assert_eq!(postcard::to_allocvec(&owned).unwrap(), plain_bytes, "owned, {len} bytes");
        assert_eq!(postcard::to_allocvec(&borrowed).unwrap(), plain_bytes, "borrowed, {len} bytes");
        let decoded: OutboxEntryV1 = postcard::from_bytes(&plain_bytes).unwrap();
        assert_eq!(decoded.payload, payload);

        let page = PlainPage::Lz4V2 { committed_ms: 7, n_entries: 1, compressed: payload.clone() };
        let page_bytes = postcard::to_allocvec(&page).unwrap();
        assert_eq!(encode_outbox_page(7, 1, &payload).unwrap(), page_bytes);
        if len == 0 {
            assert!(decode_outbox_page(&page_bytes).is_err(), "an empty compressed page is torn");
        }

        let log_bytes = postcard::to_allocvec(&PlainLog::Lz4V3(payload.clone())).unwrap();
        assert_eq!(postcard::to_allocvec(&LogEnvelope::Lz4V3(payload.clone())).unwrap(), log_bytes);
        match postcard::from_bytes::<LogEnvelope>(&log_bytes).unwrap() {
            LogEnvelope::Lz4V3(bytes) => assert_eq!(bytes, payload),
            other => panic!("decoded as {other:?}"),
        }
    }
}

#[test]
fn a_store_of_a_newer_format_is_refused_at_open_and_an_older_one_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert_eq!(store.main.get(META_FORMAT).unwrap().as_deref(), Some(&STORE_FORMAT.to_be_bytes()[..]));
        // A store from before the marker: none.
        store.main.remove(META_FORMAT).unwrap();
        store.db.flush().unwrap();
    }
    {
        let store = open(dir.path());
        assert_eq!(store.main.get(META_FORMAT).unwrap().as_deref(), Some(&STORE_FORMAT.to_be_bytes()[..]));
        // As a newer eddy would leave it.
        store.main.insert(META_FORMAT, &(STORE_FORMAT + 1).to_be_bytes()).unwrap();
        store.db.flush().unwrap();
    }
    let error = Store::open(dir.path(), 1 << 20, names(&["temp_c"]), names(&[])).unwrap_err();
    assert!(
        matches!(error, StoreError::Newer { found, known, .. } if found == STORE_FORMAT + 1 && known == STORE_FORMAT),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("newer eddy") && message.contains(".newer"), "{message}");
}
