//! A full store, every policy, end to end: with the hub down, `drop_oldest` drops the oldest
//! results and counts each one; `downsample` merges them per hour, drops nothing, and the hub
//! ends with every hour's counts and sums; `reject_new` refuses (nacks) new readings, drops
//! nothing, and takes readings again once the hub has drained the outbox.

use std::time::Duration;

use eddy_tests::http_hub::HttpHub;
use eddy_tests::{send_with_acks, Eddy};

use crate::uplink::{
    base_ms, check_every_result_in_order, config_with_oracle, counters, oracle, readings, send, wait_for,
};

/// The budget: room for a few rounds of readings in the log and about a thousand results
/// (outbox pages are LZ4-compressed: a result takes ~40 bytes of the budget).
const MAX_BYTES: u64 = 64 * 1024;

fn budget_config(hub: &HttpHub, policy: &str) -> String {
    config_with_oracle(&["window", "batch"])
        .table("storage")
        .key("max_bytes", MAX_BYTES)
        .key("policy", policy)
        .http_sink("hub", &hub.url())
        .key("records", ["window", "batch"])
        .key("max_backoff", "200ms")
        .key("timeout", "1s")
        // The drain in the outbox's order (no live first): these tests check it whole.
        .key("backlog_share", 1.0)
        .to_toml()
}

fn unique_ids(records: &[serde_json::Value]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter_map(|record| record["id"].as_str())
        .filter(|id| seen.insert((*id).to_owned()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn drop_oldest_drops_the_oldest_undelivered_results_and_counts_each() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let mut eddy = Eddy::start(&budget_config(&hub, "drop_oldest")).expect("eddy starts");
    let base = base_ms();
    // ~6000 window results (plus micro-batch results), ~40 bytes each compressed: several
    // times the budget. Sent a second of event time at a time, so that each group of readings
    // fits the budget.
    const SECONDS: i64 = 150;
    for second in 0..SECONDS {
        send(&eddy, &readings(base, 40, second, second + 1));
    }
    wait_for(&eddy, Duration::from_secs(30), "the last results in the outbox", || {
        oracle(&eddy).len() >= usize::try_from(40 * (SECONDS - 1)).unwrap()
    });
    hub.restart().expect("the hub comes back");
    wait_for(&eddy, Duration::from_secs(30), "the drained outbox", || {
        let received = unique_ids(&hub.records());
        let oracle = oracle(&eddy);
        !received.is_empty()
            && received.last().map(String::as_str) == oracle.last().and_then(|r| r["id"].as_str())
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    let oracle = oracle(&eddy);
    let uplink = counters(&log, "Uplink counters.", "hub");
    let store = counters(&log, "Store budget counters.", "");
    let dropped = usize::try_from(uplink["dropped_budget"]).unwrap();
    assert!(dropped > 0, "the budget was exceeded: {uplink:?}");
    // The hub was down from the start, so what it lost is exactly what the store dropped, the
    // oldest records, and it got exactly the rest, in order.
    assert_eq!(store["dropped_budget"], uplink["dropped_budget"]);
    assert_eq!(store["refused_budget"], 0, "drop_oldest never refuses while results can go");
    check_every_result_in_order(&oracle[dropped..], &hub.records(), 0);
    assert!(log.contains("Disk budget full: dropped the oldest undelivered results."));
}

/// Per (type, window, sensor, field, hour): the readings counted and their sum (count × mean
/// where a record shows no sum), over records with distinct ids (merged or not).
fn per_hour(records: &[serde_json::Value]) -> std::collections::BTreeMap<String, (u64, f64)> {
    let mut seen = std::collections::HashSet::new();
    let mut hours = std::collections::BTreeMap::new();
    for record in records.iter().filter(|record| seen.insert(record["id"].to_string())) {
        let hour = record["start"].as_i64().unwrap().div_euclid(3_600_000);
        let key = format!(
            "{}/{}/{}/{}/{hour}",
            record["type"], record["window"], record["sensor"], record["field"]
        );
        let count = record["count"].as_u64().unwrap_or_else(|| panic!("no count: {record}"));
        // Windows show count and mean, micro-batches also their sum.
        let sum = record["sum"].as_f64().unwrap_or_else(|| record["mean"].as_f64().unwrap() * count as f64);
        let slot = hours.entry(key).or_insert((0, 0.0));
        slot.0 += count;
        slot.1 += sum;
    }
    hours
}

#[test]
fn downsample_merges_the_oldest_results_and_the_hub_gets_every_hours_counts_and_sums() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let mut eddy = Eddy::start(&budget_config(&hub, "downsample")).expect("eddy starts");
    let base = base_ms();
    // As for drop_oldest: several times the budget of results.
    const SECONDS: i64 = 150;
    for second in 0..SECONDS {
        send(&eddy, &readings(base, 40, second, second + 1));
    }
    wait_for(&eddy, Duration::from_secs(30), "the last results in the outbox", || {
        oracle(&eddy).len() >= usize::try_from(40 * (SECONDS - 1)).unwrap()
    });
    hub.restart().expect("the hub comes back");
    // The oracle (a file sink, always up) has every original record; the hub gets the merged
    // ones instead of those merged before it could deliver them: the same counts per hour.
    wait_for(&eddy, Duration::from_secs(60), "every hour's counts at the hub", || {
        let (expected, received) = (per_hour(&oracle(&eddy)), per_hour(&hub.records()));
        expected.keys().eq(received.keys())
            && expected.iter().all(|(key, (count, _))| received[key].0 == *count)
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    let store = counters(&log, "Store budget counters.", "");
    let uplink = counters(&log, "Uplink counters.", "hub");
    assert!(store["downsample_merged"] > 0, "the budget was exceeded: {store:?}");
    assert!(store["downsample_written"] > 0, "{store:?}");
    assert_eq!(store["dropped_budget"], 0, "merging was enough: {store:?}");
    assert_eq!(uplink["dropped_budget"], 0);
    let (expected, received) = (per_hour(&oracle(&eddy)), per_hour(&hub.records()));
    for (key, (count, sum)) in &expected {
        let (got_count, got_sum) = received[key];
        assert_eq!(got_count, *count, "{key}");
        assert!((got_sum - sum).abs() <= 1e-9 * sum.abs().max(1.0), "{key}: {got_sum} vs {sum}");
    }
    let merged = hub.records().iter().filter(|record| record["downsampled"] == true).count();
    assert!(merged > 0, "the hub got downsampled records");
}

#[test]
fn reject_new_refuses_readings_while_full_and_takes_them_again_after_the_drain() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let mut eddy = Eddy::start(&budget_config(&hub, "reject_new")).expect("eddy starts");
    let base = base_ms();
    let address = eddy.tcp_address("in").unwrap();
    let mut nacked = 0;
    let mut second = 0;
    while nacked == 0 {
        assert!(second < 600, "the budget never filled");
        let lines = readings(base, 40, second, second + 1);
        let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
        let replies = send_with_acks(address, &refs, Duration::from_secs(60)).expect("answered");
        assert_eq!(replies.acked + replies.nacked, u64::try_from(lines.len()).unwrap(), "{replies:?}");
        nacked += replies.nacked;
        second += 1;
        // Let the engine commit these results before the next round, so the outbox grows.
        std::thread::sleep(Duration::from_millis(150));
    }
    hub.restart().expect("the hub comes back");
    wait_for(&eddy, Duration::from_secs(30), "the outbox drained", || {
        let received = unique_ids(&hub.records());
        !oracle(&eddy).is_empty() && received.len() == oracle(&eddy).len()
    });
    // Room again once the aggregator has trimmed the delivered outbox: new readings are taken.
    let lines = readings(base, 40, second + 1, second + 2);
    let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
    let mut refused_after = 0;
    wait_for(&eddy, Duration::from_secs(10), "readings taken again", || {
        let replies = send_with_acks(address, &refs, Duration::from_secs(60)).expect("answered");
        refused_after += replies.nacked;
        replies.nacked == 0
    });
    nacked += refused_after;
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    let store = counters(&log, "Store budget counters.", "");
    assert_eq!(store["refused_budget"], nacked, "every refused reading is counted");
    let refused_by_source = eddy_tests::source_counter(&log, "in", "refused");
    assert_eq!(refused_by_source, Some(nacked), "counted for the source that sent them too");
    assert_eq!(store["dropped_budget"], 0, "reject_new drops nothing");
    assert_eq!(counters(&log, "Uplink counters.", "hub")["dropped_budget"], 0);
    check_every_result_in_order(&oracle(&eddy), &hub.records(), usize::MAX);
}
