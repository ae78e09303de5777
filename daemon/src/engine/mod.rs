//! The stream engine: micro-batches and windows as a pure state machine over readings and time.
//!
//! Readings and the processing time go in as arguments ([`Engine::apply_chunk`],
//! [`Engine::tick`]), closed windows, batches and late notices come out in a `Vec<Output>`;
//! there are no clock reads and no I/O inside. The state changed since the last call comes out
//! of [`Engine::take_dirty`] as opaque key/value puts and deletes, and [`Engine::restore`]
//! rebuilds an engine from them. The output order is a pure function of the inputs (sensors are
//! visited in id order, never in hash order), so the same inputs on the same restored state give
//! byte-identical outputs: this is what makes exactly-once recovery possible.
//!
//! The processing clock is the largest ingest or tick time seen; it never goes back. Advancing
//! it first closes the micro-batch if due, then applies the held readings of idle sensors (below),
//! then, window spec by window spec in configuration order, closes processing-time windows that
//! ended and the windows of idle event-time sensors.
//!
//! # Future outliers (issue #13)
//!
//! One reading stamped minutes ahead would move its sensor's event-time watermark, close its
//! open windows early with partial data and make its next real readings late. So a reading
//! far ahead of its sensor's clock is *held* (`engine/sensor_clock.rs` has the code):
//!
//! - **Outlier.** A sensor's reference is its newest applied reading (largest event time, and
//!   the ingest time it came with). A reading ingested at `ingest` is an outlier when
//!   `ts > ref_ts + (ingest - ref_ingest) + outlier_after`: the sensor's clock is predicted to
//!   have moved as far as the processing clock, so a sensor silent for ten minutes that resumes
//!   is not an outlier. A sensor's first reading never is.
//! - **Held.** An outlier goes to micro-batches and processing-time windows at once (they place
//!   it by ingest time, which no sender controls) but not to event-time windows: it does not
//!   move the watermark and is not aggregated there yet. It is counted
//!   (`future_outliers_total`), and it still counts as the sensor's activity for idle closes.
//! - **Confirmed.** `outlier_confirm` (default 3) consecutive readings of the sensor, by
//!   arrival, that are all outliers with non-decreasing event times mean its clock really
//!   moved: the last of them becomes the reference and the held readings it covers are applied
//!   in arrival order, by the usual rules (the watermark moves, lateness is judged as usual).
//! - **Released.** Before and after each reading of the sensor, held readings that the
//!   sensor's predicted clock has reached (`ts <= ref_ts + (ingest - ref_ingest)`) are applied,
//!   in arrival order: a single wild reading lands in its own window once real readings get
//!   there. Reached rather than within `outlier_after`, which would still close windows early.
//! - **Bound.** A sensor holds at most `max(outlier_confirm, 4)` readings (`outlier_confirm` is
//!   at most 16); one more drops the oldest held reading, counted in
//!   `future_outliers_dropped_total` (the aggregator logs it): never confirmed, applied it
//!   would move the watermark as far as the wild timestamp went.
//! - **Idle and shutdown.** When a sensor goes idle (no reading, held or not, for
//!   `idle_timeout`), its held readings that its predicted clock has reached by then are
//!   applied and the others dropped (counted as above), then its windows close, in the same
//!   step. A reading 4 minutes ahead of a sensor idle for 5 is applied; one 20 years ahead is
//!   not.
//!   Held readings are engine state like open windows: a stop keeps them in the commit, and a
//!   restart resumes holding them. With the hold turned off, a restored held reading is applied
//!   with the sensor's next reading.
//!
//! Holds and releases are judged only at ingest times from the log (a reading's arrival, or
//! the idle deadline it sets), never at tick times, so a replay holds, confirms and releases
//! exactly what the live run did. The hold is off with `outlier_after = "off"` and when no
//! event-time window is configured. Each sensor's clock also estimates its offset against the
//! processing clock ([`Engine::sensor_clocks`]): the largest `ts - ingest` of its applied
//! readings over the current and the previous 10-minute period, since network delay only
//! lowers that difference.
//!
//! # Forgotten sensors (issue #14)
//!
//! A sensor with no reading (held or not) for `forget_after` of processing time is *forgotten*
//! at the first advance of the processing clock that reaches that time: after the micro-batch,
//! idle and processing-time closes of the same step, which have emitted everything it had
//! open (`forget_after` is at least `idle_timeout`, the batch interval and every
//! processing-time window's length, so its windows and batch are closed by then; a sensor
//! that still has something open — state restored under another configuration — waits).
//! Its window state, watermark floor, sensor clock and micro-batch entry are deleted from the
//! engine and, through [`Engine::take_dirty`], from the store, and its name is handed out by
//! [`Engine::take_forgotten`] so that the daemon releases it from the sensor caps once that
//! commit is durable. Like an idle close, forgetting depends only on the sensor's ingest times
//! and the clock reaching a deadline, and it emits nothing: a tick that forgets a sensor
//! leaves the state the next chunk's own advance would have left, so a replay agrees.
//!
//! A forgotten sensor leaves a *tombstone*: per window, its watermark and late sequence (the
//! `t` entry). If it comes back, its windows start from them, so a reading older than its
//! last emitted window is late as before and late ids do not repeat; its clock reference and
//! micro-batch start afresh. Tombstones are bounded, so that junk ids cannot grow them: at
//! most [`MAX_TOMBSTONES`] (the oldest forgotten goes first, ties by id), each kept for
//! another `forget_after`. A sensor back after that, or whose tombstone a flood of forgotten
//! ids pushed out, starts with no watermark: a reading older than its last emitted window
//! then opens that window again and it is emitted a second time with the same id.

/// Most tombstones of forgotten sensors kept (see the module documentation).
pub const MAX_TOMBSTONES: usize = 4096;

mod acc;
mod batch;
pub mod downsample;
mod forget;
pub mod record;
mod sensor_clock;
mod spec;
mod state;
mod window;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use eddy_sensors::Reading;

pub use crate::engine::spec::{Aggregate, EngineSpec, SpecError, TimeDomain, WindowSpec, MAX_OVERLAP};

use crate::engine::batch::MicroBatch;
use crate::engine::record::{LateRecord, ResultRecord};
use crate::engine::sensor_clock::{HeldReading, HoldRules, SensorClock, Verdict};
use crate::engine::state::{MetaEnvelope, MetaV2, MetaV3, StateKey, TombstoneEnvelope, TombstoneV1};
use crate::engine::window::WindowSet;

/// What the engine emits.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A closed window or micro-batch.
    Result(ResultRecord),
    /// A reading that came after a window it belongs to was emitted.
    Late(LateRecord),
}

/// What [`Engine::restore`] did with the stored entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Entries restored.
    pub loaded: usize,
    /// Entries not restored, with the reason: undecodable, unknown key, or state of a window no
    /// longer configured or reshaped. The next [`Engine::take_dirty`] deletes them.
    pub skipped: Vec<(Vec<u8>, String)>,
}

/// Counters and gauges of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Readings late for at least one window, counted once per window spec.
    pub late_readings_total: u64,
    /// `late_readings_total` per configured window, in configuration order.
    pub late_readings_by_window: Vec<(String, u64)>,
    /// Open (window, sensor, start) windows.
    pub open_windows: usize,
    /// Open windows times the fields and tags they aggregate (sensor × field × window).
    pub open_keys: usize,
    /// Distinct sensors seen.
    pub sensors: usize,
    /// Result records emitted (late notices not included).
    pub results_emitted_total: u64,
    /// Readings whose stored micro-batch was already closed when they were applied and that
    /// went into the open batch instead.
    pub batch_readings_deferred_total: u64,
    /// Readings held because their event time was far ahead of their sensor's clock.
    pub future_outliers_total: u64,
    /// Held readings applied because their sensor's hold was full.
    pub future_outliers_dropped_total: u64,
    /// Readings held now.
    pub future_outliers_held: usize,
    /// Sensors forgotten (idle past `forget_after`) since this engine started.
    pub sensors_forgotten_total: u64,
    /// Tombstones of forgotten sensors kept now (at most [`MAX_TOMBSTONES`]).
    pub tombstones: usize,
    /// Readings counted in a window's `other` bucket: their `count_by` tag value came after
    /// the window had counted `count_by_max_values` distinct ones (once per window they fell in).
    pub count_by_overflow_total: u64,
}

/// The future-outlier counters ([`Engine::future_outliers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FutureOutliers {
    /// Readings held so far.
    pub total: u64,
    /// Held readings applied because their sensor's hold was full.
    pub dropped_total: u64,
    /// Readings held now.
    pub held: usize,
}

/// One sensor's clock offset estimate ([`Engine::sensor_clocks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorClockOffset {
    /// The sensor id.
    pub sensor: Arc<str>,
    /// Event time minus processing time (positive: the sensor's clock is ahead of the
    /// gateway's), the largest over its recent readings.
    pub offset_ms: i64,
    /// `offset_ms` minus the median offset of all recently seen sensors: meaningful when the
    /// gateway's own clock is the one that is wrong.
    pub offset_from_median_ms: i64,
}

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    sensors: SensorTable,
    batch: MicroBatch,
    windows: Vec<WindowSet>,
    /// Per sensor index: its clock, and its held readings.
    sensor_clocks: Vec<SensorClock>,
    /// Whether a sensor's clock changed since the last `take_dirty`, and the list of those.
    sensor_clock_dirty: Vec<bool>,
    sensor_clock_dirty_list: Vec<usize>,
    /// The hold's rules (None: off).
    hold: Option<HoldRules>,
    idle_ms: i64,
    field_names: Vec<Arc<str>>,
    tag_names: Vec<Arc<str>>,
    /// Readings held over all sensors.
    n_held: usize,
    /// A lower bound of the processing time at which a sensor with held readings goes idle.
    held_due_ms: i64,
    future_outliers_total: u64,
    future_outliers_dropped_total: u64,
    /// The processing clock: the largest ingest or tick time seen.
    clock_ms: Option<i64>,
    late_readings_total: u64,
    results_emitted_total: u64,
    meta_dirty: bool,
    /// The clock moved since the last `take_dirty`. Stored with the next real change only
    /// (see [`Engine::has_changes`]), so that an idle gateway writes nothing.
    clock_dirty: bool,
    /// Keys of skipped stored entries and forgotten sensors, deleted by the next `take_dirty`.
    pending_deletes: Vec<Vec<u8>>,
    /// `forget_after` in ms (None: sensors are never forgotten).
    forget_ms: Option<i64>,
    /// A lower bound of the processing time at which a sensor is due to be forgotten.
    forget_due_ms: i64,
    /// Sensors forgotten since the last `take_forgotten`.
    forgotten: Vec<Arc<str>>,
    /// Sensors forgotten since this engine was built or restored.
    sensors_forgotten_total: u64,
    /// Tombstones of forgotten sensors, and the same names by (forgotten at, name): the
    /// order in which they expire or are pushed out.
    tombstones: HashMap<Arc<str>, TombstoneV1>,
    tombstone_order: BTreeSet<(i64, Arc<str>)>,
    /// Tombstones written since the last `take_dirty` (a removed one has its delete pending).
    tombstones_dirty: Vec<Arc<str>>,
    /// Some while stored entries are still to be restored ([`Engine::restore_more`]): a lower
    /// bound of the processing time at which any of them may be closed, released or forgotten.
    unloaded_due_ms: Option<i64>,
}

/// How [`SensorTable::intern`] found a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interned {
    /// Known already.
    Known,
    /// New, in the index of a forgotten sensor (its state was reset).
    Reused,
    /// New, in a new index: the engine must make room for it.
    New,
}

/// Sensor ids seen, interned to dense indexes. Indexes depend on arrival order, so they never
/// leave the engine and never decide an output order: `sorted` does. The index of a forgotten
/// sensor is free for the next new one (its state was reset when it was forgotten).
#[derive(Debug, Default)]
struct SensorTable {
    /// Looked up for every reading: foldhash, seeded per process, not SipHash (~1 % of the
    /// daemon's CPU); its keys are bounded by the sensor caps.
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    names: Vec<Arc<str>>,
    /// Indexes in sensor id order (forgotten ones left out).
    sorted: Vec<usize>,
    /// Indexes of forgotten sensors, for reuse.
    free: Vec<usize>,
}

impl SensorTable {
    /// The index of `name` and how it was found.
    #[inline]
    fn intern(&mut self, name: &Arc<str>) -> (usize, Interned) {
        if let Some(&sensor) = self.index.get(&**name) {
            return (sensor, Interned::Known);
        }
        let (sensor, is_new) = self.add(name.clone());
        let names = &self.names;
        let pos = self.sorted.partition_point(|&other| names[other] < *name);
        self.sorted.insert(pos, sensor);
        (sensor, is_new)
    }

    /// Like [`SensorTable::intern`], but appends to `sorted` without keeping it in order: a
    /// restore interns every stored sensor in page (hash) order, where an ordered insert
    /// each time moved half the table (quadratic: ~1 s for 100,000 sensors). The restore
    /// calls [`SensorTable::sort`] once at the end of each part.
    fn intern_unsorted(&mut self, name: &str) -> (usize, Interned) {
        if let Some(&sensor) = self.index.get(name) {
            return (sensor, Interned::Known);
        }
        let (sensor, is_new) = self.add(Arc::from(name));
        self.sorted.push(sensor);
        (sensor, is_new)
    }

    /// Gives `name` (not known yet) a free index, or a new one, and indexes it; the caller
    /// places it in `sorted`.
    #[inline]
    fn add(&mut self, name: Arc<str>) -> (usize, Interned) {
        let (sensor, is_new) = match self.free.pop() {
            Some(sensor) => {
                self.names[sensor] = name.clone();
                (sensor, Interned::Reused)
            }
            None => {
                self.names.push(name.clone());
                (self.names.len() - 1, Interned::New)
            }
        };
        self.index.insert(name, sensor);
        (sensor, is_new)
    }

    /// Puts `sorted` back in sensor id order after [`SensorTable::intern_unsorted`], whose
    /// appends start at `sorted_len`: sorts those and merges them in, so that a restore in
    /// many parts costs a merge per part, not a sort of every sensor.
    fn sort(&mut self, sorted_len: usize) {
        let names = &self.names;
        let mut appended = self.sorted.split_off(sorted_len.min(self.sorted.len()));
        if appended.is_empty() {
            return;
        }
        appended.sort_unstable_by(|a, b| names[*a].cmp(&names[*b]));
        let before = std::mem::take(&mut self.sorted);
        let mut merged = Vec::with_capacity(before.len() + appended.len());
        let (mut before, mut appended) = (before.into_iter().peekable(), appended.into_iter().peekable());
        while let (Some(old), Some(new)) = (before.peek(), appended.peek()) {
            if names[*old] <= names[*new] {
                merged.extend(before.next());
            } else {
                merged.extend(appended.next());
            }
        }
        merged.extend(before);
        merged.extend(appended);
        self.sorted = merged;
    }

    /// Frees the indexes of `forgotten` (their names stay until the index is reused).
    fn forget(&mut self, forgotten: &[usize], is_forgotten: &[bool]) {
        for &sensor in forgotten {
            self.index.remove(&self.names[sensor]);
            self.free.push(sensor);
        }
        self.sorted.retain(|&sensor| !is_forgotten[sensor]);
    }

    /// Sensors known now.
    fn len(&self) -> usize {
        self.index.len()
    }
}

impl Engine {
    /// An engine with no state.
    pub fn new(spec: Arc<EngineSpec>) -> Engine {
        let device: Arc<str> = Arc::from(spec.device_id.as_str());
        let field_names: Vec<Arc<str>> =
            spec.field_names.iter().map(|name| Arc::from(name.as_str())).collect();
        let tag_names = spec.tag_names.iter().map(|name| Arc::from(name.as_str())).collect();
        let has_event_windows = spec.windows.iter().any(|window| window.time() == TimeDomain::Event);
        let hold = HoldRules::new(spec.outlier_after, spec.outlier_confirm, has_event_windows);
        let interval_ms = duration_ms(spec.batch_interval).max(1);
        let idle_ms = duration_ms(spec.idle_timeout);
        let windows = spec
            .windows
            .iter()
            .map(|window| WindowSet::new(&spec, window, device.clone(), idle_ms))
            .collect();
        Engine {
            sensors: SensorTable::default(),
            batch: MicroBatch::new(device, field_names.clone(), interval_ms),
            windows,
            sensor_clocks: Vec::new(),
            sensor_clock_dirty: Vec::new(),
            sensor_clock_dirty_list: Vec::new(),
            hold,
            idle_ms,
            field_names,
            tag_names,
            n_held: 0,
            held_due_ms: i64::MAX,
            future_outliers_total: 0,
            future_outliers_dropped_total: 0,
            clock_ms: None,
            late_readings_total: 0,
            results_emitted_total: 0,
            meta_dirty: false,
            clock_dirty: false,
            pending_deletes: Vec::new(),
            forget_ms: spec.forget_after.map(duration_ms),
            forget_due_ms: i64::MAX,
            forgotten: Vec::new(),
            sensors_forgotten_total: 0,
            tombstones: HashMap::new(),
            tombstone_order: BTreeSet::new(),
            tombstones_dirty: Vec::new(),
            unloaded_due_ms: None,
        }
    }

    /// Advances processing time to `ingest_ms` (closing due micro-batches, processing-time
    /// windows, idle sensors), then applies the readings in order. `batch` is the stored batch
    /// number. A reading far ahead of its sensor's clock is held for event-time windows (see
    /// the module documentation).
    pub fn apply_chunk(&mut self, ingest_ms: i64, batch: u64, readings: &[Reading], out: &mut Vec<Output>) {
        let first_output = out.len();
        self.advance(ingest_ms, out);
        let clock_ms = self.clock_ms.unwrap_or(ingest_ms);
        self.batch.begin_chunk(batch, readings.len(), &self.sensors.names, out);
        if let Some(forget_ms) = self.forget_ms {
            if !readings.is_empty() {
                self.forget_due_ms = self.forget_due_ms.min(ingest_ms.saturating_add(forget_ms));
                // Forgetting waits for the full load (see `advance`): a sensor seen now must
                // not be due before the rest is loaded.
                if let Some(due_ms) = &mut self.unloaded_due_ms {
                    *due_ms = (*due_ms).min(ingest_ms.saturating_add(forget_ms));
                }
            }
        }
        for reading in readings {
            let (sensor, interned) = self.sensors.intern(&reading.sensor);
            if interned == Interned::New {
                self.push_sensor();
            }
            if interned != Interned::Known && !self.tombstones.is_empty() {
                self.revive(sensor);
            }
            self.batch.add(sensor, reading);
            self.apply_due_held(sensor, ingest_ms, clock_ms, out);
            match self.sensor_clocks[sensor].judge(self.hold.as_ref(), ingest_ms, reading) {
                Verdict::Apply => {
                    self.apply_to_windows(sensor, ingest_ms, clock_ms, reading, Domains::All, out);
                    self.sensor_clocks[sensor].applied(ingest_ms, reading.ts_ms);
                }
                Verdict::Held => {
                    self.future_outliers_total += 1;
                    self.n_held += 1;
                    self.held_due_ms = self.held_due_ms.min(ingest_ms.saturating_add(self.idle_ms));
                    self.apply_to_windows(sensor, ingest_ms, clock_ms, reading, Domains::ProcessingOnly, out);
                }
            }
            self.apply_due_held(sensor, ingest_ms, clock_ms, out);
            self.sensor_clock_changed(sensor);
        }
        self.meta_dirty = true;
        self.count_results(&out[first_output..]);
    }

    /// Advances processing time only (the daemon calls this every ~100 ms–1 s).
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let first_output = out.len();
        self.advance(now_ms, out);
        self.count_results(&out[first_output..]);
    }

    /// The earliest processing time at which [`Engine::tick`] may emit something (it may emit
    /// nothing then: idle deadlines are lower bounds), or `None` when nothing is pending.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let windows = self.windows.iter().filter_map(WindowSet::deadline_ms);
        let held = (self.n_held > 0).then_some(self.held_due_ms);
        let forget = (self.forget_due_ms != i64::MAX).then_some(self.forget_due_ms);
        self.batch.deadline_ms().into_iter().chain(windows).chain(held).chain(forget).min()
    }

    /// The sensors forgotten since the last call, in the order they were forgotten. Their
    /// deletion is in the next [`Engine::take_dirty`]: release them once that is durable.
    pub fn take_forgotten(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.forgotten)
    }

    /// Whether state changed since the last [`Engine::take_dirty`] beyond the processing
    /// clock: a reading applied, something emitted, a sensor's state changed. The clock moving
    /// alone is not a change worth storing (an idle gateway would write every tick); it is
    /// stored with the next real one. Resuming from an older clock after a restart closes
    /// nothing twice, since nothing was emitted while only the clock moved.
    pub fn has_changes(&self) -> bool {
        self.meta_dirty
            || !self.pending_deletes.is_empty()
            || self.batch.has_dirty()
            || !self.sensor_clock_dirty_list.is_empty()
            || self.windows.iter().any(WindowSet::has_dirty)
    }

    /// State changed since the last call, as opaque `(key, Some(value))` puts and `(key, None)`
    /// deletes, sorted by key. Keys are short byte strings (at most 130 bytes) unique within
    /// the engine; values are postcard bytes of the versioned envelopes of `engine/state.rs`.
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            self.pending_deletes.drain(..).map(|key| (key, None)).collect();
        if std::mem::take(&mut self.meta_dirty) | std::mem::take(&mut self.clock_dirty) {
            let v2 = MetaV2 {
                clock_ms: self.clock_ms,
                batch_floor: self.batch.floor(),
                late_readings_total: self.late_readings_total,
                late_by_window: self
                    .windows
                    .iter()
                    .map(|window_set| (window_set.name().to_string(), window_set.late_total))
                    .collect(),
                results_emitted_total: self.results_emitted_total,
                batch_readings_deferred_total: self.batch.deferred_total,
                future_outliers_total: self.future_outliers_total,
                future_outliers_dropped_total: self.future_outliers_dropped_total,
            };
            let meta =
                MetaEnvelope::V3(MetaV3 { v2, count_by_overflow_total: self.count_by_overflow_total() });
            entries.push((state::META_KEY.to_vec(), Some(state::encode(&meta))));
        }
        self.batch.take_dirty(&self.sensors.names, &mut entries);
        for sensor in self.sensor_clock_dirty_list.drain(..) {
            self.sensor_clock_dirty[sensor] = false;
            let stored = self.sensor_clocks[sensor].store(&self.field_names, &self.tag_names);
            entries.push((
                state::sensor_clock_key(&self.sensors.names[sensor]),
                Some(state::encode_sensor_clock_v1(&stored)),
            ));
        }
        for window_set in &mut self.windows {
            window_set.take_dirty(&self.sensors.names, &mut entries);
        }
        for name in self.tombstones_dirty.drain(..) {
            if let Some(tombstone) = self.tombstones.get(&name) {
                let value = state::encode(&TombstoneEnvelope::V1(tombstone.clone()));
                entries.push((state::tombstone_key(&name), Some(value)));
            }
        }
        // Stable: a forgotten sensor's delete (pushed first) comes before the put of the same
        // key when the sensor came back before this call, and the put wins.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept
    }

    /// Rebuilds an engine from stored entries (all keys the engine wrote and did not delete).
    /// Undecodable entries and state of windows no longer configured (name gone, or length,
    /// slide or time domain changed) are skipped and reported, never a panic.
    pub fn restore<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(
        spec: Arc<EngineSpec>,
        entries: I,
    ) -> (Engine, RestoreReport) {
        let mut engine = Engine::new(spec);
        let report = engine.restore_more(entries);
        (engine, report)
    }

    /// Restores more stored entries into an engine restored in parts (a lazy restart; see
    /// ARCHITECTURE.md, "Recovery"). Each stored entry must come exactly once, the meta entry
    /// ([`Engine::meta_state_key`]) and every micro-batch entry with the first part, and a
    /// sensor's entries ([`Engine::state_keys_of`]) before any reading of that sensor is
    /// applied; then the engine emits exactly what one restored from every entry at once
    /// would, as long as no advance reaches [`Engine::needs_all_state`] before the rest is in.
    pub fn restore_more<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(&mut self, entries: I) -> RestoreReport {
        let mut report = RestoreReport::default();
        let sorted_len = self.sensors.sorted.len();
        // Batch entries wait until all are read: only the latest batch can be open.
        let mut batches = Vec::new();
        for (key, value) in entries {
            match self.restore_entry(&key, &value, &mut batches) {
                Ok(true) => report.loaded += 1,
                Ok(false) => {}
                Err(reason) => report.skipped.push((key, reason)),
            }
        }
        let open_batch =
            batches.iter().map(|(_, _, stored): &(_, _, state::BatchSensorV2)| stored.batch).max();
        for (key, sensor, stored) in batches {
            if Some(stored.batch) == open_batch {
                match self.batch.restore_sensor(sensor, stored) {
                    Ok(()) => report.loaded += 1,
                    Err(reason) => report.skipped.push((key, reason)),
                }
            } else {
                report
                    .skipped
                    .push((key, format!("micro-batch {} is older than the open one", stored.batch)));
            }
        }
        self.sensors.sort(sorted_len);
        self.pending_deletes.extend(report.skipped.iter().map(|(key, _)| key.clone()));
        // The next advance scans once and finds the true forget deadline.
        if self.forget_ms.is_some() && (self.sensors.len() > 0 || !self.tombstones.is_empty()) {
            self.forget_due_ms = i64::MIN;
        }
        report
    }

    /// Declares that stored entries are still to be restored, none of which may be closed,
    /// released or forgotten before `due_ms` (what [`Engine::state_due_ms`] gave at the commit
    /// that stored them); `None`: every entry is restored.
    pub fn set_unloaded(&mut self, due_ms: Option<i64>) {
        self.unloaded_due_ms = due_ms;
    }

    /// Whether stored entries are still to be restored.
    pub fn is_partial(&self) -> bool {
        self.unloaded_due_ms.is_some()
    }

    /// Whether advancing the processing clock to `now_ms` may need entries not restored yet:
    /// then restore them all first.
    pub fn needs_all_state(&self, now_ms: i64) -> bool {
        self.unloaded_due_ms.is_some_and(|due_ms| now_ms >= due_ms)
            && self.clock_ms.is_none_or(|clock_ms| now_ms > clock_ms)
    }

    /// The key of the engine-wide entry, to be restored first.
    pub fn meta_state_key() -> &'static [u8] {
        state::META_KEY
    }

    /// Every key under which sensor `sensor`'s state may be stored, for the configured windows.
    pub fn state_keys_of(&self, sensor: &str) -> Vec<Vec<u8>> {
        let mut keys =
            vec![state::batch_key(sensor), state::sensor_clock_key(sensor), state::tombstone_key(sensor)];
        keys.extend(self.windows.iter().map(|window_set| state::window_key(window_set.name(), sensor)));
        keys
    }

    /// A lower bound of the processing time at which an advance may close, release or forget
    /// anything beyond the micro-batch (`i64::MAX`: nothing pending), over every sensor (a
    /// pass over all of them: per commit) and the entries not restored yet. Stored with each
    /// commit, it tells a restart how long the state it has not loaded may wait.
    pub fn state_due_ms(&self) -> i64 {
        let mut due_ms = self.unloaded_due_ms.unwrap_or(i64::MAX);
        for &sensor in &self.sensors.sorted {
            for window_set in &self.windows {
                if let Some(window_due_ms) = window_set.sensor_due_ms(sensor) {
                    due_ms = due_ms.min(window_due_ms);
                }
            }
            let clock = &self.sensor_clocks[sensor];
            if clock.n_held() > 0 {
                let idle_at =
                    clock.last_seen_ms().map_or(i64::MIN, |seen_ms| seen_ms.saturating_add(self.idle_ms));
                due_ms = due_ms.min(idle_at);
            }
            // While entries are still to be restored, a sensor's entries may be in part only,
            // and no forget deadline comes before the unloaded ones' (see `advance`).
            if let Some(forget_ms) = self.forget_ms.filter(|_| self.unloaded_due_ms.is_none()) {
                due_ms = due_ms.min(self.last_seen_ms(sensor).saturating_add(forget_ms));
            }
        }
        if let (Some(forget_ms), Some((forgotten_ms, _))) = (self.forget_ms, self.tombstone_order.first()) {
            due_ms = due_ms.min(forgotten_ms.saturating_add(forget_ms));
        }
        due_ms
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            late_readings_total: self.late_readings_total,
            late_readings_by_window: self
                .windows
                .iter()
                .map(|window_set| (window_set.name().to_string(), window_set.late_total))
                .collect(),
            open_windows: self.windows.iter().map(WindowSet::n_open).sum(),
            open_keys: self.windows.iter().map(WindowSet::n_open_keys).sum(),
            sensors: self.sensors.len(),
            results_emitted_total: self.results_emitted_total,
            batch_readings_deferred_total: self.batch.deferred_total,
            future_outliers_total: self.future_outliers_total,
            future_outliers_dropped_total: self.future_outliers_dropped_total,
            future_outliers_held: self.n_held,
            sensors_forgotten_total: self.sensors_forgotten_total,
            tombstones: self.tombstones.len(),
            count_by_overflow_total: self.count_by_overflow_total(),
        }
    }

    /// Sensors with state in memory (cheap: per chunk).
    pub fn n_sensors(&self) -> usize {
        self.sensors.len()
    }

    /// Readings counted in `other` buckets, over all window sets (cheap: per chunk and tick).
    pub fn count_by_overflow_total(&self) -> u64 {
        self.windows.iter().map(|window_set| window_set.count_by_overflow_total).sum()
    }

    /// The future-outlier counters alone: cheap enough to read after every chunk.
    pub fn future_outliers(&self) -> FutureOutliers {
        FutureOutliers {
            total: self.future_outliers_total,
            dropped_total: self.future_outliers_dropped_total,
            held: self.n_held,
        }
    }

    /// The sensors whose clocks are furthest off, at most `limit` of them: those whose offset
    /// estimate, against the processing clock or against the median of all sensors, is
    /// larger than `threshold` in magnitude, largest first (ties by sensor id). Only sensors
    /// seen within the last 20 minutes of processing time count, in the median too. Costs a
    /// pass over all sensors: call it when publishing stats, not per reading.
    pub fn sensor_clocks(&self, limit: usize, threshold: std::time::Duration) -> Vec<SensorClockOffset> {
        let threshold_ms = duration_ms(threshold);
        let recent_ms =
            self.clock_ms.map_or(i64::MIN, |clock_ms| clock_ms.saturating_sub(sensor_clock::RECENT_MS));
        let offsets: Vec<(usize, i64)> = self
            .sensor_clocks
            .iter()
            .enumerate()
            .filter(|(_, clock)| clock.last_seen_ms().is_some_and(|seen_ms| seen_ms >= recent_ms))
            .filter_map(|(sensor, clock)| clock.offset_ms().map(|offset_ms| (sensor, offset_ms)))
            .collect();
        let Some(median_ms) = median(offsets.iter().map(|(_, offset_ms)| *offset_ms).collect()) else {
            return Vec::new();
        };
        let names = &self.sensors.names;
        // (rank, sensor, offset, offset from the median).
        let mut listed: Vec<(i64, usize, i64, i64)> = offsets
            .into_iter()
            .map(|(sensor, offset_ms)| {
                let offset_from_median_ms = offset_ms.saturating_sub(median_ms);
                let rank = offset_ms.saturating_abs().max(offset_from_median_ms.saturating_abs());
                (rank, sensor, offset_ms, offset_from_median_ms)
            })
            .filter(|(rank, ..)| *rank > threshold_ms)
            .collect();
        // Largest rank first, ties by sensor id: a total order (ids are unique), so selecting
        // the first `limit` and sorting only those lists what a sort of all would. With 100,000
        // sensors a full sort on every commit was ~5 % of eddy's CPU after a restart.
        let order = |a: &(i64, usize, i64, i64), b: &(i64, usize, i64, i64)| {
            b.0.cmp(&a.0).then_with(|| names[a.1].cmp(&names[b.1]))
        };
        if limit == 0 {
            return Vec::new();
        }
        if listed.len() > limit {
            listed.select_nth_unstable_by(limit - 1, order);
            listed.truncate(limit);
        }
        listed.sort_unstable_by(order);
        listed
            .into_iter()
            .map(|(_, sensor, offset_ms, offset_from_median_ms)| SensorClockOffset {
                sensor: names[sensor].clone(),
                offset_ms,
                offset_from_median_ms,
            })
            .collect()
    }

    /// Makes room for a newly interned sensor.
    fn push_sensor(&mut self) {
        self.batch.push_sensor();
        for window_set in &mut self.windows {
            window_set.push_sensor();
        }
        self.sensor_clocks.push(SensorClock::default());
        self.sensor_clock_dirty.push(false);
    }

    fn sensor_clock_changed(&mut self, sensor: usize) {
        if !self.sensor_clock_dirty[sensor] {
            self.sensor_clock_dirty[sensor] = true;
            self.sensor_clock_dirty_list.push(sensor);
        }
    }

    /// Applies one reading of `sensor` to the window sets `domains` names, in configuration
    /// order; an event-time window set left out (the reading is held) still sees the sensor
    /// active.
    fn apply_to_windows(
        &mut self,
        sensor: usize,
        ingest_ms: i64,
        clock_ms: i64,
        reading: &Reading,
        domains: Domains,
        out: &mut Vec<Output>,
    ) {
        for window_set in &mut self.windows {
            let applies = match domains {
                Domains::All => true,
                Domains::EventOnly => !window_set.processing_time(),
                Domains::ProcessingOnly => window_set.processing_time(),
            };
            if applies {
                if window_set.apply(sensor, ingest_ms, clock_ms, reading, out) {
                    self.late_readings_total += 1;
                }
            } else {
                window_set.touch(sensor, ingest_ms);
            }
        }
    }

    /// Applies the held readings of `sensor` that are due at `ingest_ms` (released) to the
    /// event-time windows, in order; drops (and counts) the one the bound forces out.
    fn apply_due_held(&mut self, sensor: usize, ingest_ms: i64, clock_ms: i64, out: &mut Vec<Output>) {
        while let Some((held, dropped)) = self.sensor_clocks[sensor].next_due(self.hold.as_ref(), ingest_ms) {
            self.n_held -= 1;
            if dropped {
                self.future_outliers_dropped_total += 1;
                self.sensor_clock_changed(sensor);
            } else {
                self.apply_held(sensor, clock_ms, &held, out);
            }
        }
    }

    fn apply_held(&mut self, sensor: usize, clock_ms: i64, held: &HeldReading, out: &mut Vec<Output>) {
        self.apply_to_windows(sensor, held.ingest_ms, clock_ms, &held.reading, Domains::EventOnly, out);
        self.sensor_clocks[sensor].applied(held.ingest_ms, held.reading.ts_ms);
        self.sensor_clock_changed(sensor);
    }

    /// Applies every held reading of the sensors idle at `now_ms`, sensor by sensor in id
    /// order, before the window sets' idle closes of the same step.
    fn apply_idle_held(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        let mut next_due_ms = i64::MAX;
        for sorted_idx in 0..self.sensors.sorted.len() {
            let sensor = self.sensors.sorted[sorted_idx];
            let clock = &mut self.sensor_clocks[sensor];
            if clock.n_held() == 0 {
                continue;
            }
            let idle_at =
                clock.last_seen_ms().map_or(i64::MIN, |seen_ms| seen_ms.saturating_add(self.idle_ms));
            if idle_at > now_ms {
                next_due_ms = next_due_ms.min(idle_at);
                continue;
            }
            let held = clock.take_held(self.hold.as_ref(), now_ms);
            self.n_held -= held.len();
            for (held, reached) in &held {
                if *reached {
                    self.apply_held(sensor, now_ms, held, out);
                } else {
                    self.future_outliers_dropped_total += 1;
                }
            }
            self.sensor_clock_changed(sensor);
        }
        self.held_due_ms = next_due_ms;
    }

    /// Moves the processing clock forward to `now_ms` and closes what became due.
    fn advance(&mut self, now_ms: i64, out: &mut Vec<Output>) {
        if self.clock_ms.is_some_and(|clock_ms| now_ms <= clock_ms) {
            return;
        }
        self.clock_ms = Some(now_ms);
        self.clock_dirty = true;
        let first_output = out.len();
        self.batch.advance(now_ms, &self.sensors.names, out);
        if self.n_held > 0 && now_ms >= self.held_due_ms {
            self.apply_idle_held(now_ms, out);
        }
        for window_set in &mut self.windows {
            window_set.advance(now_ms, &self.sensors.sorted, &self.sensors.names, out);
        }
        if out.len() > first_output {
            self.meta_dirty = true;
        }
        // Not while entries are still to be restored: forgetting judges all of a sensor's
        // entries at once, and a sensor may have some restored and not others. Nothing is due
        // then anyway: `unloaded_due_ms`, which `needs_all_state` keeps ahead of the clock, is
        // at most every stored sensor's forget deadline (`state_due_ms`) and every sensor's
        // seen since the restart (`apply_chunk` lowers it).
        if let Some(forget_ms) = self.forget_ms {
            if now_ms >= self.forget_due_ms && self.unloaded_due_ms.is_none() {
                self.forget_idle(now_ms, forget_ms);
            }
        }
    }

    fn count_results(&mut self, outputs: &[Output]) {
        let n_results = outputs.iter().filter(|output| matches!(output, Output::Result(_))).count();
        self.results_emitted_total += u64::try_from(n_results).unwrap_or(u64::MAX);
    }

    /// The sensor index of `name`, creating it.
    /// Only for a restore, which sorts the table once at the end (see
    /// [`SensorTable::intern_unsorted`]).
    fn intern_sensor(&mut self, name: &str) -> usize {
        let (sensor, interned) = self.sensors.intern_unsorted(name);
        if interned == Interned::New {
            self.push_sensor();
        }
        sensor
    }

    /// Restores one entry; `Ok(false)` when it was set aside in `batches`.
    fn restore_entry(
        &mut self,
        key: &[u8],
        value: &[u8],
        batches: &mut Vec<(Vec<u8>, usize, state::BatchSensorV2)>,
    ) -> Result<bool, String> {
        match state::parse_key(key)? {
            StateKey::Meta => {
                let MetaV3 { v2: meta, count_by_overflow_total } = state::decode_meta(value)?;
                // Kept by the first window set: the total is what the engine reports.
                if let Some(window_set) = self.windows.first_mut() {
                    window_set.count_by_overflow_total = count_by_overflow_total;
                }
                self.future_outliers_total = meta.future_outliers_total;
                self.future_outliers_dropped_total = meta.future_outliers_dropped_total;
                self.clock_ms = meta.clock_ms;
                self.batch.set_floor(meta.batch_floor);
                self.batch.deferred_total = meta.batch_readings_deferred_total;
                self.late_readings_total = meta.late_readings_total;
                self.results_emitted_total = meta.results_emitted_total;
                for (name, late_total) in meta.late_by_window {
                    if let Some(window_set) =
                        self.windows.iter_mut().find(|window_set| **window_set.name() == *name)
                    {
                        window_set.late_total = late_total;
                    }
                }
                Ok(true)
            }
            StateKey::Batch { sensor } => {
                let stored = state::decode_batch(value)?;
                let sensor = self.intern_sensor(sensor);
                batches.push((key.to_vec(), sensor, stored));
                Ok(false)
            }
            StateKey::SensorClock { sensor } => {
                let stored = state::decode_sensor_clock(value)?;
                let sensor = self.intern_sensor(sensor);
                let clock = SensorClock::load(
                    stored,
                    &self.sensors.names[sensor],
                    &self.field_names,
                    &self.tag_names,
                );
                self.n_held = self.n_held - self.sensor_clocks[sensor].n_held() + clock.n_held();
                self.sensor_clocks[sensor] = clock;
                // The next advance scans once and finds the true idle deadline.
                self.held_due_ms = i64::MIN;
                Ok(true)
            }
            StateKey::Tombstone { sensor } => {
                let tombstone = state::decode_tombstone(value)?;
                let name: Arc<str> = Arc::from(sensor);
                self.tombstone_order.insert((tombstone.forgotten_ms, name.clone()));
                self.tombstones.insert(name, tombstone);
                Ok(true)
            }
            StateKey::Window { window, sensor } => {
                let stored = state::decode_window(value)?;
                let window_idx = self
                    .windows
                    .iter()
                    .position(|window_set| **window_set.name() == *window)
                    .ok_or_else(|| format!("window {window} is no longer configured"))?;
                let sensor = self.intern_sensor(sensor);
                self.windows[window_idx].restore_sensor(sensor, stored)?;
                Ok(true)
            }
        }
    }
}

/// Which window sets a reading goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domains {
    All,
    /// A held reading applied: event-time windows (processing-time ones had it on arrival).
    EventOnly,
    /// A reading being held: processing-time windows only.
    ProcessingOnly,
}

/// The median of `values` (the mean of the two middle ones for an even count, rounded down),
/// or None for none.
fn median(mut values: Vec<i64>) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let n_values = values.len();
    let (below, upper, _) = values.select_nth_unstable(n_values / 2);
    let upper = *upper;
    if n_values % 2 == 1 {
        return Some(upper);
    }
    let lower = below.iter().copied().max().expect("an even, non-empty count has a lower half");
    let mean = (i128::from(lower) + i128::from(upper)).div_euclid(2);
    Some(i64::try_from(mean).expect("the mean of two i64 values is an i64"))
}

/// Whole milliseconds of `duration`, saturating at `i64::MAX`.
fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
