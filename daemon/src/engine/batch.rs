//! Micro-batches (processing time, like Spark Streaming's DStreams): per sensor and field, the
//! count, sum, min, max and mean of the readings ingested in one batch interval.
//!
//! The batch number is assigned at ingest and stored with the readings, so a replay forms the
//! same batches. At most one batch is open: input arrives with non-decreasing batch numbers,
//! and batch `b` closes when a chunk of a higher batch arrives or the processing clock reaches
//! `(b + 1) · interval`. A chunk whose stored batch is already closed (a tick raced ahead of
//! it) goes into the open batch and is counted in `batch_readings_deferred_total`; to avoid
//! that, tick with a time no later than the ingest time of readings not yet applied.

use std::sync::Arc;

use eddy_sensors::Reading;

use crate::engine::acc::FieldAcc;
use crate::engine::record::{BatchRecord, ResultRecord};
use crate::engine::state::{self, AccParts, AccV2, BatchSensorV2};
use crate::engine::Output;

/// The open micro-batch and the per-sensor accumulators of all schema fields.
#[derive(Debug)]
pub(crate) struct MicroBatch {
    device: Arc<str>,
    field_names: Vec<Arc<str>>,
    interval_ms: i64,
    /// Batches below this number are closed.
    floor: u64,
    /// The open batch, if any.
    open: Option<u64>,
    /// Per sensor index, one accumulator per schema field.
    accs: Vec<Vec<FieldAcc>>,
    /// The accumulator parts batch records read: what an add keeps up to date.
    parts: AccParts,
    /// Whether the sensor has readings in the open batch, and the list of those sensors.
    touched: Vec<bool>,
    touched_list: Vec<usize>,
    /// Whether the sensor's stored entry is stale, and the list of those sensors.
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    pub(crate) deferred_total: u64,
}

impl MicroBatch {
    pub(crate) fn new(device: Arc<str>, field_names: Vec<Arc<str>>, interval_ms: i64) -> MicroBatch {
        MicroBatch {
            device,
            field_names,
            interval_ms: interval_ms.max(1),
            floor: 0,
            open: None,
            accs: Vec::new(),
            parts: batch_parts(),
            touched: Vec::new(),
            touched_list: Vec::new(),
            dirty: Vec::new(),
            dirty_list: Vec::new(),
            deferred_total: 0,
        }
    }

    /// Makes room for a newly seen sensor.
    pub(crate) fn push_sensor(&mut self) {
        self.accs.push(vec![FieldAcc::EMPTY; self.field_names.len()]);
        self.touched.push(false);
        self.dirty.push(false);
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    pub(crate) fn set_floor(&mut self, floor: u64) {
        self.floor = floor;
    }

    /// When the open batch is due to close, in processing time.
    pub(crate) fn deadline_ms(&self) -> Option<i64> {
        self.open.map(|batch| self.batch_start_ms(batch.saturating_add(1)))
    }

    /// Closes the open batch if the processing clock reached its end, and marks every batch
    /// before the clock's as closed.
    pub(crate) fn advance(&mut self, clock_ms: i64, sensor_names: &[Arc<str>], out: &mut Vec<Output>) {
        let clock_batch = u64::try_from(clock_ms.div_euclid(self.interval_ms)).unwrap_or(0);
        if self.open.is_some_and(|batch| batch < clock_batch) {
            self.close(sensor_names, out);
        }
        self.floor = self.floor.max(clock_batch);
    }

    /// Opens the batch a chunk with stored batch number `batch` goes into, closing the open one
    /// if the chunk's is later.
    pub(crate) fn begin_chunk(
        &mut self,
        batch: u64,
        n_readings: usize,
        sensor_names: &[Arc<str>],
        out: &mut Vec<Output>,
    ) {
        if self.open.is_some_and(|open| open < batch) {
            self.close(sensor_names, out);
        }
        let effective = batch.max(self.floor).max(self.open.unwrap_or(0));
        if effective != batch {
            self.deferred_total += u64::try_from(n_readings).unwrap_or(u64::MAX);
        }
        self.open = Some(effective);
        self.floor = effective;
    }

    /// Adds a reading of sensor `sensor` to the open batch (opened by [`Self::begin_chunk`]).
    #[inline]
    pub(crate) fn add(&mut self, sensor: usize, reading: &Reading) {
        let accs = &mut self.accs[sensor];
        let mut any = false;
        for (acc, value) in accs.iter_mut().zip(&reading.values) {
            if let Some(value) = *value {
                acc.add_for(reading.ts_ms, value, self.parts);
                any = true;
            }
        }
        if any {
            if !self.touched[sensor] {
                self.touched[sensor] = true;
                self.touched_list.push(sensor);
            }
            if !self.dirty[sensor] {
                self.dirty[sensor] = true;
                self.dirty_list.push(sensor);
            }
        }
    }

    /// Emits the open batch's non-empty (sensor, field) groups, sorted by sensor id then field.
    pub(crate) fn close(&mut self, sensor_names: &[Arc<str>], out: &mut Vec<Output>) {
        let Some(batch) = self.open.take() else { return };
        self.floor = self.floor.max(batch.saturating_add(1));
        let start_ms = self.batch_start_ms(batch);
        let end_ms = self.batch_start_ms(batch.saturating_add(1));
        let mut touched = std::mem::take(&mut self.touched_list);
        touched.sort_unstable_by(|a, b| sensor_names[*a].cmp(&sensor_names[*b]));
        for &sensor in &touched {
            for (acc, field) in self.accs[sensor].iter_mut().zip(&self.field_names) {
                if let Some(stats) = acc.stats() {
                    out.push(Output::Result(ResultRecord::Batch(BatchRecord {
                        batch,
                        device: self.device.clone(),
                        sensor: sensor_names[sensor].clone(),
                        field: field.clone(),
                        start_ms,
                        end_ms,
                        stats,
                    })));
                }
                *acc = FieldAcc::EMPTY;
            }
            self.touched[sensor] = false;
            if !self.dirty[sensor] {
                self.dirty[sensor] = true;
                self.dirty_list.push(sensor);
            }
        }
        touched.clear();
        self.touched_list = touched;
    }

    /// Whether sensor `sensor` has readings in the open batch.
    pub(crate) fn has_open(&self, sensor: usize) -> bool {
        self.touched[sensor]
    }

    /// Resets the state of the `forgotten` sensors (none has readings in the open batch);
    /// their stored entries are deleted by the engine.
    pub(crate) fn forget(&mut self, forgotten: &[usize], is_forgotten: &[bool]) {
        for &sensor in forgotten {
            self.accs[sensor].fill(FieldAcc::EMPTY);
            self.dirty[sensor] = false;
        }
        self.dirty_list.retain(|&sensor| !is_forgotten[sensor]);
    }

    /// Whether a sensor's batch state changed since the last `take_dirty`.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty_list.is_empty()
    }

    /// Appends the changed entries: a put for sensors with readings in the open batch, a delete
    /// for the others.
    pub(crate) fn take_dirty(
        &mut self,
        sensor_names: &[Arc<str>],
        entries: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        for sensor in self.dirty_list.drain(..) {
            self.dirty[sensor] = false;
            let key = state::batch_key(&sensor_names[sensor]);
            let value = match self.open {
                Some(batch) if self.touched[sensor] => {
                    let parts = batch_parts();
                    let fields = self.accs[sensor]
                        .iter()
                        .zip(&self.field_names)
                        .filter(|(acc, _)| acc.count > 0)
                        .map(|(acc, name)| (&**name, AccV2::store(acc, parts)));
                    Some(state::encode_batch_v2_from(batch, fields))
                }
                _ => None,
            };
            entries.push((key, value));
        }
    }

    /// Restores one sensor's accumulators of the open batch `batch`.
    pub(crate) fn restore_sensor(&mut self, sensor: usize, stored: BatchSensorV2) -> Result<(), String> {
        let mut accs = Vec::with_capacity(stored.fields.len());
        for (name, acc) in stored.fields {
            if let Some(field_idx) = self.field_names.iter().position(|field| **field == *name) {
                accs.push((field_idx, acc.load(batch_parts())?));
            }
        }
        self.open = Some(stored.batch);
        for (field_idx, acc) in accs {
            self.accs[sensor][field_idx] = acc;
        }
        if !self.touched[sensor] {
            self.touched[sensor] = true;
            self.touched_list.push(sensor);
        }
        Ok(())
    }

    fn batch_start_ms(&self, batch: u64) -> i64 {
        i64::try_from(batch).ok().and_then(|batch| batch.checked_mul(self.interval_ms)).unwrap_or(i64::MAX)
    }
}

/// The accumulator parts micro-batch records read.
fn batch_parts() -> AccParts {
    AccParts::for_aggregates(&crate::engine::record::BATCH_AGGREGATES)
}
