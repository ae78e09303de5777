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
//! it first closes the micro-batch if due, then, window spec by window spec in configuration
//! order, processing-time windows that ended and the windows of idle event-time sensors.

mod acc;
mod batch;
pub mod record;
mod spec;
mod state;
mod window;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use eddy_sensors::Reading;

pub use crate::engine::spec::{Aggregate, EngineSpec, SpecError, TimeDomain, WindowSpec, MAX_OVERLAP};

use crate::engine::batch::MicroBatch;
use crate::engine::record::{LateRecord, ResultRecord};
use crate::engine::state::{MetaEnvelope, MetaV1, StateKey};
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
}

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    sensors: SensorTable,
    batch: MicroBatch,
    windows: Vec<WindowSet>,
    /// The processing clock: the largest ingest or tick time seen.
    clock_ms: Option<i64>,
    late_readings_total: u64,
    results_emitted_total: u64,
    meta_dirty: bool,
    /// The clock moved since the last `take_dirty`. Stored with the next real change only
    /// (see [`Engine::has_changes`]), so that an idle gateway writes nothing.
    clock_dirty: bool,
    /// Keys of skipped stored entries, deleted by the next `take_dirty`.
    pending_deletes: Vec<Vec<u8>>,
}

/// Sensor ids seen, interned to dense indexes. Indexes depend on arrival order, so they never
/// leave the engine and never decide an output order: `sorted` does.
#[derive(Debug, Default)]
struct SensorTable {
    index: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
    /// Indexes in sensor id order.
    sorted: Vec<usize>,
}

impl SensorTable {
    /// The index of `name` and whether it is new.
    #[inline]
    fn intern(&mut self, name: &Arc<str>) -> (usize, bool) {
        if let Some(&sensor) = self.index.get(&**name) {
            return (sensor, false);
        }
        let sensor = self.names.len();
        self.index.insert(name.clone(), sensor);
        self.names.push(name.clone());
        let names = &self.names;
        let pos = self.sorted.partition_point(|&other| names[other] < *name);
        self.sorted.insert(pos, sensor);
        (sensor, true)
    }
}

impl Engine {
    /// An engine with no state.
    pub fn new(spec: Arc<EngineSpec>) -> Engine {
        let device: Arc<str> = Arc::from(spec.device_id.as_str());
        let field_names = spec.field_names.iter().map(|name| Arc::from(name.as_str())).collect();
        let interval_ms = duration_ms(spec.batch_interval).max(1);
        let idle_ms = duration_ms(spec.idle_timeout);
        let windows = spec
            .windows
            .iter()
            .map(|window| WindowSet::new(&spec, window, device.clone(), idle_ms))
            .collect();
        Engine {
            sensors: SensorTable::default(),
            batch: MicroBatch::new(device, field_names, interval_ms),
            windows,
            clock_ms: None,
            late_readings_total: 0,
            results_emitted_total: 0,
            meta_dirty: false,
            clock_dirty: false,
            pending_deletes: Vec::new(),
        }
    }

    /// Advances processing time to `ingest_ms` (closing due micro-batches, processing-time
    /// windows, idle sensors), then applies the readings in order. `batch` is the stored batch
    /// number.
    pub fn apply_chunk(&mut self, ingest_ms: i64, batch: u64, readings: &[Reading], out: &mut Vec<Output>) {
        let first_output = out.len();
        self.advance(ingest_ms, out);
        let clock_ms = self.clock_ms.unwrap_or(ingest_ms);
        self.batch.begin_chunk(batch, readings.len(), &self.sensors.names, out);
        for reading in readings {
            let (sensor, is_new) = self.sensors.intern(&reading.sensor);
            if is_new {
                self.batch.push_sensor();
                for window_set in &mut self.windows {
                    window_set.push_sensor();
                }
            }
            self.batch.add(sensor, reading);
            for window_set in &mut self.windows {
                if window_set.apply(sensor, ingest_ms, clock_ms, reading, out) {
                    self.late_readings_total += 1;
                }
            }
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
        self.batch.deadline_ms().into_iter().chain(windows).min()
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
            || self.windows.iter().any(WindowSet::has_dirty)
    }

    /// State changed since the last call, as opaque `(key, Some(value))` puts and `(key, None)`
    /// deletes, sorted by key. Keys are short byte strings (at most 130 bytes) unique within
    /// the engine; values are postcard bytes of the versioned envelopes of `engine/state.rs`.
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            self.pending_deletes.drain(..).map(|key| (key, None)).collect();
        if std::mem::take(&mut self.meta_dirty) | std::mem::take(&mut self.clock_dirty) {
            let meta = MetaEnvelope::V1(MetaV1 {
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
            });
            entries.push((state::META_KEY.to_vec(), Some(state::encode(&meta))));
        }
        self.batch.take_dirty(&self.sensors.names, &mut entries);
        for window_set in &mut self.windows {
            window_set.take_dirty(&self.sensors.names, &mut entries);
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Rebuilds an engine from stored entries (all keys the engine wrote and did not delete).
    /// Undecodable entries and state of windows no longer configured (name gone, or length,
    /// slide or time domain changed) are skipped and reported, never a panic.
    pub fn restore<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(
        spec: Arc<EngineSpec>,
        entries: I,
    ) -> (Engine, RestoreReport) {
        let mut engine = Engine::new(spec);
        let mut report = RestoreReport::default();
        // Batch entries wait until all are read: only the latest batch can be open.
        let mut batches = Vec::new();
        for (key, value) in entries {
            match engine.restore_entry(&key, &value, &mut batches) {
                Ok(true) => report.loaded += 1,
                Ok(false) => {}
                Err(reason) => report.skipped.push((key, reason)),
            }
        }
        let open_batch =
            batches.iter().map(|(_, _, stored): &(_, _, state::BatchSensorV2)| stored.batch).max();
        for (key, sensor, stored) in batches {
            if Some(stored.batch) == open_batch {
                match engine.batch.restore_sensor(sensor, stored) {
                    Ok(()) => report.loaded += 1,
                    Err(reason) => report.skipped.push((key, reason)),
                }
            } else {
                report
                    .skipped
                    .push((key, format!("micro-batch {} is older than the open one", stored.batch)));
            }
        }
        engine.pending_deletes = report.skipped.iter().map(|(key, _)| key.clone()).collect();
        (engine, report)
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
            sensors: self.sensors.names.len(),
            results_emitted_total: self.results_emitted_total,
            batch_readings_deferred_total: self.batch.deferred_total,
        }
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
        for window_set in &mut self.windows {
            window_set.advance(now_ms, &self.sensors.sorted, &self.sensors.names, out);
        }
        if out.len() > first_output {
            self.meta_dirty = true;
        }
    }

    fn count_results(&mut self, outputs: &[Output]) {
        let n_results = outputs.iter().filter(|output| matches!(output, Output::Result(_))).count();
        self.results_emitted_total += u64::try_from(n_results).unwrap_or(u64::MAX);
    }

    /// The sensor index of `name`, creating it.
    fn intern_sensor(&mut self, name: &str) -> usize {
        let (sensor, is_new) = self.sensors.intern(&Arc::from(name));
        if is_new {
            self.batch.push_sensor();
            for window_set in &mut self.windows {
                window_set.push_sensor();
            }
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
                let MetaEnvelope::V1(meta) = state::decode(value)?;
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

/// Whole milliseconds of `duration`, saturating at `i64::MAX`.
fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
