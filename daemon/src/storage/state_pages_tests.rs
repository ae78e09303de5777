//! Tests of the state pages and their deltas: what a commit writes, when deltas are folded,
//! and that any sequence of commits and reopens loads back exactly the entries committed.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use crate::storage::state_pages::{MAX_STATE_DELTAS, STATE_DELTA_MIN_BYTES};
use crate::storage::{state_page_of, Commit, StateChange, Store, STATE, STATE_DELTA, STATE_PAGES};

fn open(dir: &Path) -> Store {
    Store::open(dir, 1 << 20, vec!["temp_c".to_owned()], vec![]).expect("open")
}

/// Commits `state` with a state index (as the aggregator does).
fn commit(store: &Store, log_pos: u64, state: Vec<StateChange>) {
    let commit = Commit { state, log_pos, next_seq: 1, state_due_ms: Some(i64::MAX), ..Commit::default() };
    store.commit(&commit).expect("commit");
}

/// The stored values under `prefix` + `page`.
fn values_of(store: &Store, prefix: u8, page: u16) -> Vec<Vec<u8>> {
    let mut key = vec![prefix];
    key.extend_from_slice(&page.to_be_bytes());
    store.main.scan_prefix(key).values().map(|value| value.unwrap().to_vec()).collect()
}

/// `n` keys that hash to `page`, from `prefix` + a number.
fn keys_on_page(page: u16, prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0u32..)
        .map(|idx| format!("{prefix}{idx}").into_bytes())
        .filter(|key| state_page_of(key) == page)
        .take(n)
        .collect()
}

/// A value LZ4 cannot shrink much: `len` bytes from `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn a_commit_that_changes_one_entry_of_a_large_page_writes_that_entry_not_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_on_page(5, "w/", 200);
    let store = open(dir.path());
    // 200 × 300 bytes: a page of ~60 KB, over the delta threshold, so it is written as a page.
    commit(
        &store,
        1,
        keys.iter().enumerate().map(|(idx, key)| (key.clone(), Some(noise(idx as u64, 300)))).collect(),
    );
    let page_before = values_of(&store, STATE, 5);
    assert_eq!(page_before.len(), 1, "the first commit's changes exceed the threshold: a page");
    assert!(page_before[0].len() > STATE_DELTA_MIN_BYTES);
    assert!(values_of(&store, STATE_DELTA, 5).is_empty());

    commit(&store, 2, vec![(keys[17].clone(), Some(b"changed".to_vec()))]);
    assert_eq!(values_of(&store, STATE, 5), page_before, "the page is not rewritten");
    let deltas = values_of(&store, STATE_DELTA, 5);
    assert_eq!(deltas.len(), 1);
    assert!(deltas[0].len() < 100, "the delta holds one change: {} bytes", deltas[0].len());
    store.flush().await.unwrap();
    drop(store);

    let store = open(dir.path());
    let entries: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
    assert_eq!(entries.len(), 200);
    assert_eq!(entries[&keys[17]], b"changed");
    assert_eq!(entries[&keys[18]], noise(18, 300));
}

#[test]
fn deltas_are_folded_into_their_page_at_the_count_bound_and_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keys = keys_on_page(9, "w/", 50);
    // A page of ~150 KB, so that small changes are deltas.
    commit(
        &store,
        1,
        keys.iter().enumerate().map(|(idx, key)| (key.clone(), Some(noise(idx as u64, 3_000)))).collect(),
    );
    assert_eq!(values_of(&store, STATE, 9).len(), 1);
    // Small changes: the count bound folds them.
    for round in 0..MAX_STATE_DELTAS {
        commit(&store, 2 + round as u64, vec![(keys[round % 50].clone(), Some(vec![1; 8]))]);
        assert_eq!(values_of(&store, STATE_DELTA, 9).len(), round + 1);
    }
    commit(&store, 100, vec![(keys[0].clone(), Some(vec![2; 8]))]);
    assert!(values_of(&store, STATE_DELTA, 9).is_empty(), "the deltas were folded");
    assert_eq!(values_of(&store, STATE, 9).len(), 1);
    // Larger changes: the byte bound folds them before the count bound.
    let mut rounds = 0;
    while values_of(&store, STATE_DELTA, 9).len() == rounds {
        rounds += 1;
        assert!(rounds <= MAX_STATE_DELTAS, "never folded by bytes");
        commit(&store, 200 + rounds as u64, vec![(keys[rounds].clone(), Some(noise(rounds as u64, 5_000)))]);
    }
    assert!(values_of(&store, STATE_DELTA, 9).is_empty());
    // Beside the ~54 KB left of the page, deltas may gather half of it: about five of 5 KB.
    assert!((4..=7).contains(&rounds), "folded after {rounds} deltas of 5 KB");
    let entries: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
    assert_eq!(entries[&keys[0]], vec![2; 8]);
    assert_eq!(entries[&keys[1]], noise(1, 5_000));
    assert_eq!(entries[&keys[49]], noise(49, 3_000));
}

#[test]
fn a_change_of_half_a_page_or_more_rewrites_the_page_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keys = keys_on_page(11, "w/", 20);
    let all = |seed: u64| {
        keys.iter().enumerate().map(|(idx, key)| (key.clone(), Some(noise(seed + idx as u64, 500)))).collect()
    };
    commit(&store, 1, all(0));
    let page = values_of(&store, STATE, 11);
    // Every entry changed, as under steady traffic from every sensor: no delta.
    commit(&store, 2, all(100));
    assert!(values_of(&store, STATE_DELTA, 11).is_empty());
    assert_ne!(values_of(&store, STATE, 11), page);
    let entries: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
    assert_eq!(entries[&keys[3]], noise(103, 500));
}

#[test]
fn the_state_index_follows_micro_batch_keys_through_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch_key = keys_on_page(3, "b", 1).remove(0);
    let window_key = keys_on_page(3, "w", 1).remove(0);
    let batch_pages = |store: &Store| store.load_engine_meta().unwrap().1.expect("an index").batch_pages;
    // A window entry large enough that the small changes below are deltas.
    commit(&store, 1, vec![(window_key.clone(), Some(noise(1, 2_000)))]);
    assert!(batch_pages(&store).is_empty());
    commit(&store, 2, vec![(batch_key.clone(), Some(b"b".to_vec()))]);
    assert_eq!(batch_pages(&store), vec![3]);
    commit(&store, 3, vec![(batch_key.clone(), Some(b"b2".to_vec()))]);
    assert_eq!(batch_pages(&store), vec![3]);
    // The delete is a delta too: the page no longer holds micro-batch entries.
    commit(&store, 4, vec![(batch_key, None)]);
    assert!(batch_pages(&store).is_empty());
    assert!(!values_of(&store, STATE_DELTA, 3).is_empty(), "deltas, no fold yet");
    // A reopened store knows it from the stored page and deltas alone.
    drop(store);
    let store = open(dir.path());
    commit(&store, 5, vec![(keys_on_page(3, "w", 2).remove(1), Some(b"w".to_vec()))]);
    assert!(batch_pages(&store).is_empty());
}

/// One step of the property below.
#[derive(Debug, Clone)]
enum Step {
    /// A commit: (key index, value length and seed, or a delete).
    Commit(Vec<(u8, Option<(u16, u8)>)>),
    /// Close the store and open it again (the page book starts empty).
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec((any::<u8>(), prop::option::weighted(0.8, (0u16..2_000, any::<u8>()))), 1..12)
            .prop_map(Step::Commit),
        1 => Just(Step::Reopen),
    ]
}

/// Key `idx`: micro-batch and window keys on three pages, so that pages gather deltas.
fn key_of(idx: u8) -> Vec<u8> {
    let page = u16::from(idx % 3);
    let prefix = if idx % 4 == 0 { "b/" } else { "w/" };
    keys_on_page(page, prefix, usize::from(idx / 3 % 22) + 1).pop().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_commits_and_reopens_load_back_exactly_what_was_committed(steps in prop::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (log_pos, step) in (1u64..).zip(steps) {
            match step {
                Step::Commit(changes) => {
                    let changes: Vec<StateChange> = changes
                        .into_iter()
                        .map(|(idx, value)| (key_of(idx), value.map(|(len, seed)| noise(u64::from(seed), usize::from(len)))))
                        .collect();
                    for (key, value) in &changes {
                        match value {
                            Some(value) => model.insert(key.clone(), value.clone()),
                            None => model.remove(key),
                        };
                    }
                    commit(&store, log_pos, changes);
                }
                Step::Reopen => {
                    drop(store);
                    store = open(dir.path());
                    let loaded: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
                    prop_assert_eq!(&loaded, &model);
                }
            }
            // Read past the page book, which loading would refresh: what is stored is checked.
            let stored: BTreeMap<_, _> = (0..STATE_PAGES)
                .flat_map(|page| store.read_page(page, false).unwrap().0)
                .collect();
            prop_assert_eq!(&stored, &model);
            let mut expected_batch_pages: Vec<u16> =
                model.keys().filter(|key| key[0] == b'b').map(|key| state_page_of(key)).collect();
            expected_batch_pages.sort_unstable();
            expected_batch_pages.dedup();
            let index = store.load_engine_meta().unwrap().1;
            prop_assert_eq!(index.map(|index| index.batch_pages).unwrap_or_default(), expected_batch_pages);
            for page in 0..STATE_PAGES {
                prop_assert!(values_of(&store, STATE_DELTA, page).len() <= MAX_STATE_DELTAS);
            }
            prop_assert_eq!(store.stats().corrupt_state_pages.load(std::sync::atomic::Ordering::Relaxed), 0);
        }
    }
}

/// The store as a build of format 2 left it: `entries` in pages by the hash of the whole key,
/// one page's last entries in a delta, a current state index naming those pages, and marker 2.
fn write_format_2(store: &Store, entries: &BTreeMap<Vec<u8>, Vec<u8>>) {
    use crate::storage::commit::page_of_bytes;
    use crate::storage::stored::{self, Bytes, StateEntryRef};
    commit(store, 9, entries.iter().map(|(key, value)| (key.clone(), Some(value.clone()))).collect());
    let mut batch = sled::Batch::default();
    for key in store.main.scan_prefix([STATE]).keys().chain(store.main.scan_prefix([STATE_DELTA]).keys()) {
        batch.remove(key.unwrap());
    }
    let mut by_page: BTreeMap<u16, Vec<StateEntryRef<'_>>> = BTreeMap::new();
    for (key, value) in entries {
        by_page.entry(page_of_bytes(key)).or_default().push((Bytes(key), Bytes(value)));
    }
    let mut delta_written = false;
    for (page, refs) in &by_page {
        let (base, delta) = if !delta_written && refs.len() > 1 {
            refs.split_at(refs.len() - 1)
        } else {
            (&refs[..], &[][..])
        };
        let mut page_key = vec![STATE];
        page_key.extend_from_slice(&page.to_be_bytes());
        batch.insert(page_key, stored::encode_state_page(base).unwrap());
        if !delta.is_empty() {
            delta_written = true;
            let changes: Vec<_> = delta.iter().map(|(key, value)| (*key, Some(*value))).collect();
            let mut delta_key = vec![STATE_DELTA];
            delta_key.extend_from_slice(&page.to_be_bytes());
            delta_key.extend_from_slice(&0u32.to_be_bytes());
            batch.insert(delta_key, stored::encode_state_delta(&changes).unwrap());
        }
    }
    assert!(delta_written);
    let legacy_batch_pages: Vec<u16> =
        entries.keys().filter(|key| key[0] == b'b').map(|key| page_of_bytes(key)).collect();
    store.reindex_batch_pages(&legacy_batch_pages, &mut batch).unwrap();
    batch.insert(crate::storage::META_FORMAT, &2u64.to_be_bytes());
    store.main.apply_batch(batch).unwrap();
    store.db.flush().unwrap();
}

/// The entries of `n` sensors as the engine keys them (micro-batch, clock, two windows), each
/// value `value_len` bytes of noise.
fn sensor_entries(n: u32, value_len: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut entries = BTreeMap::new();
    for idx in 0..n {
        let sensor = format!("t-{idx:05}");
        for key in [
            format!("b{sensor}").into_bytes(),
            format!("c{sensor}").into_bytes(),
            [b"w\x07env_10m".as_slice(), sensor.as_bytes()].concat(),
            [b"w\x04five".as_slice(), sensor.as_bytes()].concat(),
        ] {
            entries.insert(key, noise(u64::from(idx), value_len));
        }
    }
    entries
}

#[test]
fn a_format_2_store_is_upgraded_at_open_each_sensor_in_one_page_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut entries = sensor_entries(300, 40);
    entries.insert(b"e".to_vec(), b"engine-wide".to_vec());
    {
        let store = open(dir.path());
        write_format_2(&store, &entries);
        // What the test wrote is the old layout: a sensor's keys on several pages.
        let pages = |sensor: &str| {
            (0..STATE_PAGES)
                .filter(|page| {
                    store
                        .read_page(*page, false)
                        .unwrap()
                        .0
                        .iter()
                        .any(|(key, _)| key.ends_with(sensor.as_bytes()))
                })
                .count()
        };
        assert!(pages("t-00007") > 1);
    }
    let store = open(dir.path());
    assert_eq!(
        store.main.get(crate::storage::META_FORMAT).unwrap().as_deref(),
        Some(&crate::storage::STORE_FORMAT.to_be_bytes()[..])
    );
    // Every entry back, each in its sensor's page, no delta left.
    let stored: BTreeMap<_, _> = (0..STATE_PAGES)
        .flat_map(|page| {
            let entries = store.read_page(page, false).unwrap().0;
            for (key, _) in &entries {
                assert_eq!(state_page_of(key), page, "{key:?}");
            }
            entries
        })
        .collect();
    assert_eq!(stored, entries);
    assert!(store.main.scan_prefix([STATE_DELTA]).next().is_none());
    // The index is still the last commit's, with the micro-batch pages where they are now.
    let index = store.load_engine_meta().unwrap().1.expect("a current index");
    let mut batch_pages: Vec<u16> =
        entries.keys().filter(|key| key[0] == b'b').map(|key| state_page_of(key)).collect();
    batch_pages.sort_unstable();
    batch_pages.dedup();
    assert_eq!(index.batch_pages, batch_pages);
    // A lazy restart's load of one sensor's page finds all of its entries.
    let sensor_page = store.load_state_pages(&[state_page_of(b"bt-00007")]).unwrap();
    assert_eq!(sensor_page.iter().filter(|(key, _)| key.ends_with(b"t-00007")).count(), 4);
    assert_eq!(store.stats().corrupt_state_pages.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Opened again: nothing to move, the same entries.
    drop(store);
    let store = open(dir.path());
    let loaded: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
    assert_eq!(loaded, entries);
}

/// Copies `from` to `to` file by file while a store may be writing it (a file deleted under
/// the copy is left out, as a power cut would find it gone).
fn copy_live_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(from) else { return };
    for entry in entries.flatten() {
        let target = to.join(entry.file_name());
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => copy_live_dir(&entry.path(), &target),
            Ok(_) => match std::fs::copy(entry.path(), &target) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => panic!("copy {}: {error}", entry.path().display()),
            },
            Err(_) => {}
        }
    }
}

#[test]
fn a_power_cut_during_the_format_upgrade_leaves_the_whole_state_in_one_format_or_the_other() {
    // The upgrade is one sled batch made durable before the store is used: a copy of the data
    // directory taken at any moment while it runs (some of its writes on disk, some not, maybe
    // cut in the middle) opens as the format-2 store, upgraded then, or as the upgraded one —
    // with every entry either way.
    let dir = tempfile::tempdir().unwrap();
    let entries = sensor_entries(2_500, 100);
    {
        let store = open(dir.path());
        write_format_2(&store, &entries);
    }
    let upgrading = {
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || drop(open(&path)))
    };
    let copies = tempfile::tempdir().unwrap();
    let mut n_copies = 0;
    while !upgrading.is_finished() {
        copy_live_dir(dir.path(), &copies.path().join(n_copies.to_string()));
        n_copies += 1;
    }
    upgrading.join().unwrap();
    copy_live_dir(dir.path(), &copies.path().join(n_copies.to_string()));
    n_copies += 1;
    assert!(n_copies >= 2, "no copy taken while the upgrade ran");
    for copy in 0..n_copies {
        let store = open(&copies.path().join(copy.to_string()));
        let loaded: BTreeMap<_, _> = store.load_engine().unwrap().entries.into_iter().collect();
        assert_eq!(loaded.len(), entries.len(), "copy {copy} of {n_copies}");
        assert!(loaded == entries, "copy {copy} of {n_copies}: entries differ");
        for page in 0..STATE_PAGES {
            for (key, _) in store.read_page(page, false).unwrap().0 {
                assert_eq!(state_page_of(&key), page, "copy {copy}");
            }
        }
        assert_eq!(store.stats().corrupt_state_pages.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
