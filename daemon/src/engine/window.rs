//! One configured window over all sensors: assigning readings to epoch-aligned windows, the
//! per-sensor watermark and late rule, idle and processing-time closes, and emitting each
//! closed window exactly once.
//!
//! A reading at `t` belongs to every `[k·slide, k·slide + length)` containing `t` (Spark's
//! `window(ts, length, slide)`), where `t` is the event time, or the chunk's ingest time for
//! processing-time windows. A window whose end is at or below the sensor's watermark (before
//! the reading moves it) was already emitted, so the reading is late for it: counted once per
//! window spec and reported as one [`LateRecord`]. The watermark of an event-time sensor is its
//! largest event time minus the lateness, raised to the largest end an idle close emitted; that
//! of a processing-time window is the processing clock.

use std::sync::Arc;

use eddy_sensors::Reading;

use crate::engine::acc::FieldAcc;
use crate::engine::record::{LateRecord, ResultRecord, WindowCountsRecord, WindowRecord};
use crate::engine::state::{self, AccParts, AccV2, OpenWindowV3, WindowHeadV3, WindowSensorV3};
use crate::engine::{Aggregate, EngineSpec, Output, TimeDomain, WindowSpec};

/// Tag values an emptied window keeps room for, per count_by tag, while it waits for reuse.
const SPARE_COUNTS_KEPT: usize = 8;

/// The state of one window spec: every sensor's open windows and watermark.
#[derive(Debug)]
pub(crate) struct WindowSet {
    shape: Shape,
    /// Per sensor index.
    sensors: Vec<SensorWindows>,
    /// Emptied windows kept for reuse, so that opening a window rarely allocates.
    spare: Vec<OpenWindow>,
    pub(crate) late_total: u64,
    /// Readings counted in `other` buckets (a window holding its tag's cap of values).
    pub(crate) count_by_overflow_total: u64,
    n_open: usize,
    /// A lower bound of the processing time at which a scan can close something: the earliest
    /// end of an open processing-time window, or the earliest idle deadline of a sensor.
    next_due_ms: i64,
    dirty_list: Vec<usize>,
}

/// What a window set never changes after construction.
#[derive(Debug)]
struct Shape {
    name: Arc<str>,
    device: Arc<str>,
    aggregates: Arc<[Aggregate]>,
    /// The accumulator parts `aggregates` read: what is stored of each.
    parts: AccParts,
    length_ms: i64,
    slide_ms: i64,
    lateness_ms: i64,
    processing_time: bool,
    idle_ms: i64,
    /// Schema field indexes and their names.
    fields: Vec<usize>,
    field_names: Vec<Arc<str>>,
    /// Schema tag indexes (count_by) and their names.
    tags: Vec<usize>,
    tag_names: Vec<Arc<str>>,
    /// Per count_by tag: most distinct values a window counts (`usize::MAX` for a tag whose
    /// schema lists its values).
    tag_caps: Vec<usize>,
}

#[derive(Debug, Default)]
struct SensorWindows {
    max_ts_ms: Option<i64>,
    floor_ms: Option<i64>,
    last_activity_ms: Option<i64>,
    late_seq: u64,
    /// Open windows in start order (and so in end order).
    open: Vec<OpenWindow>,
    dirty: bool,
}

#[derive(Debug)]
struct OpenWindow {
    start_ms: i64,
    /// Per window field.
    fields: Vec<FieldAcc>,
    /// Per count_by tag: readings by tag value, sorted by value. A sorted vector, not a
    /// `BTreeMap`: a thermostat's window counts a handful of values, which a map held in a
    /// ~280-byte node each, allocated again for every window; the vector keeps its capacity
    /// when the window is reused.
    counts: Vec<Vec<(Arc<str>, u64)>>,
    /// Per count_by tag: readings whose value came past the tag's cap.
    other: Vec<u64>,
}

impl SensorWindows {
    fn watermark(&self, lateness_ms: i64) -> Option<i64> {
        let from_events = self.max_ts_ms.map(|ts_ms| ts_ms.saturating_sub(lateness_ms));
        match (from_events, self.floor_ms) {
            (Some(events), Some(floor)) => Some(events.max(floor)),
            (events, floor) => events.or(floor),
        }
    }
}

impl WindowSet {
    pub(crate) fn new(engine: &EngineSpec, spec: &WindowSpec, device: Arc<str>, idle_ms: i64) -> WindowSet {
        let name_of = |names: &[String], idx: usize, what: &str| -> Arc<str> {
            names.get(idx).map_or_else(|| Arc::from(format!("{what}{idx}")), |name| Arc::from(name.as_str()))
        };
        let shape = Shape {
            name: Arc::from(spec.name()),
            device,
            aggregates: spec.aggregates().into(),
            parts: AccParts::for_aggregates(spec.aggregates()),
            length_ms: spec.length_ms(),
            slide_ms: spec.slide_ms(),
            lateness_ms: spec.lateness_ms(),
            processing_time: spec.time() == TimeDomain::Processing,
            idle_ms,
            fields: spec.fields().to_vec(),
            field_names: spec
                .fields()
                .iter()
                .map(|&idx| name_of(&engine.field_names, idx, "field"))
                .collect(),
            tags: spec.count_by().to_vec(),
            tag_names: spec.count_by().iter().map(|&idx| name_of(&engine.tag_names, idx, "tag")).collect(),
            tag_caps: spec
                .count_by()
                .iter()
                .map(|&idx| {
                    if engine.tag_values_listed.get(idx).copied().unwrap_or(false) {
                        usize::MAX
                    } else {
                        engine.count_by_max_values
                    }
                })
                .collect(),
        };
        WindowSet {
            shape,
            sensors: Vec::new(),
            spare: Vec::new(),
            late_total: 0,
            count_by_overflow_total: 0,
            n_open: 0,
            next_due_ms: i64::MAX,
            dirty_list: Vec::new(),
        }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.shape.name
    }

    /// Makes room for a newly seen sensor.
    pub(crate) fn push_sensor(&mut self) {
        self.sensors.push(SensorWindows::default());
    }

    /// Open windows over all sensors.
    pub(crate) fn n_open(&self) -> usize {
        self.n_open
    }

    /// Open (sensor, field or tag, window) groups, counting every configured field and tag.
    pub(crate) fn n_open_keys(&self) -> usize {
        self.n_open.saturating_mul(self.shape.fields.len() + self.shape.tags.len())
    }

    /// The processing time at which [`Self::advance`] may next close something.
    pub(crate) fn deadline_ms(&self) -> Option<i64> {
        (self.n_open > 0 && self.next_due_ms != i64::MAX).then_some(self.next_due_ms)
    }

    /// Applies one reading of sensor `sensor`, ingested at `ingest_ms`, with the processing
    /// clock at `clock_ms`. Returns whether the reading was late for some window.
    #[inline]
    pub(crate) fn apply(
        &mut self,
        sensor: usize,
        ingest_ms: i64,
        clock_ms: i64,
        reading: &Reading,
        out: &mut Vec<Output>,
    ) -> bool {
        let WindowSet {
            shape,
            sensors,
            spare,
            late_total,
            count_by_overflow_total,
            n_open,
            next_due_ms,
            dirty_list,
        } = self;
        let state = &mut sensors[sensor];
        let (window_ts, watermark) = if shape.processing_time {
            (ingest_ms, Some(clock_ms))
        } else {
            (reading.ts_ms, state.watermark(shape.lateness_ms))
        };
        let mut late = false;
        let lowest_start_exclusive = window_ts.saturating_sub(shape.length_ms);
        // Windows from the newest start down; a start whose end overflows is skipped, so a
        // reading within `length` of i64::MAX lands in fewer windows (validated input never
        // comes near).
        let mut next_start = window_ts.checked_sub(window_ts.rem_euclid(shape.slide_ms));
        while let Some(start_ms) = next_start.filter(|start_ms| *start_ms > lowest_start_exclusive) {
            match start_ms.checked_add(shape.length_ms) {
                Some(end_ms) if watermark.is_some_and(|watermark| end_ms <= watermark) => late = true,
                Some(end_ms) => {
                    let window_idx =
                        match state.open.binary_search_by_key(&start_ms, |window| window.start_ms) {
                            Ok(window_idx) => window_idx,
                            Err(window_idx) => {
                                let window = shape.open_window(spare, start_ms);
                                state.open.insert(window_idx, window);
                                *n_open += 1;
                                if shape.processing_time {
                                    *next_due_ms = (*next_due_ms).min(end_ms);
                                }
                                window_idx
                            }
                        };
                    *count_by_overflow_total += shape.add(&mut state.open[window_idx], reading);
                }
                None => {}
            }
            next_start = start_ms.checked_sub(shape.slide_ms);
        }
        if late {
            let watermark_ms = watermark.unwrap_or(i64::MIN);
            out.push(Output::Late(shape.late_record(&reading.sensor, reading, watermark_ms, state.late_seq)));
            state.late_seq += 1;
            *late_total += 1;
        }
        if !shape.processing_time {
            state.max_ts_ms = Some(state.max_ts_ms.map_or(reading.ts_ms, |max_ts| max_ts.max(reading.ts_ms)));
            // A held reading applied later comes with its own, older ingest time.
            state.last_activity_ms =
                Some(state.last_activity_ms.map_or(ingest_ms, |last| last.max(ingest_ms)));
            *next_due_ms = (*next_due_ms).min(ingest_ms.saturating_add(shape.idle_ms));
            if let Some(watermark) = state.watermark(shape.lateness_ms) {
                let n_due = state
                    .open
                    .iter()
                    .take_while(|window| window.start_ms.saturating_add(shape.length_ms) <= watermark)
                    .count();
                for window in state.open.drain(..n_due) {
                    shape.emit(&reading.sensor, window, spare, out);
                }
                *n_open -= n_due;
            }
        }
        if !state.dirty {
            state.dirty = true;
            dirty_list.push(sensor);
        }
        late
    }

    /// Whether this is a processing-time window.
    pub(crate) fn processing_time(&self) -> bool {
        self.shape.processing_time
    }

    /// Sensor `sensor` sent a reading ingested at `ingest_ms` that this window set does not
    /// take now (it is held): the sensor is active, so its idle close moves as if it had. This
    /// keeps a sensor's idle time the same for its windows and its held readings, so that both
    /// are closed and applied in the same step, live and in a replay.
    pub(crate) fn touch(&mut self, sensor: usize, ingest_ms: i64) {
        let state = &mut self.sensors[sensor];
        if self.shape.processing_time || state.last_activity_ms.is_some_and(|last| last >= ingest_ms) {
            return;
        }
        state.last_activity_ms = Some(ingest_ms);
        if !state.dirty {
            state.dirty = true;
            self.dirty_list.push(sensor);
        }
    }

    /// Processing time reached `clock_ms`: closes processing-time windows that ended and the
    /// windows of idle event-time sensors, sensor by sensor in id order.
    pub(crate) fn advance(
        &mut self,
        clock_ms: i64,
        sorted_sensors: &[usize],
        sensor_names: &[Arc<str>],
        out: &mut Vec<Output>,
    ) {
        if clock_ms < self.next_due_ms {
            return;
        }
        let WindowSet { shape, sensors, spare, n_open, next_due_ms, dirty_list, .. } = self;
        let mut next_due = i64::MAX;
        for &sensor in sorted_sensors {
            let state = &mut sensors[sensor];
            let Some(newest) = state.open.last() else { continue };
            let n_due = if shape.processing_time {
                state
                    .open
                    .iter()
                    .take_while(|window| window.start_ms.saturating_add(shape.length_ms) <= clock_ms)
                    .count()
            } else {
                let idle_at =
                    state.last_activity_ms.map_or(i64::MIN, |last| last.saturating_add(shape.idle_ms));
                if idle_at <= clock_ms {
                    let newest_end = newest.start_ms.saturating_add(shape.length_ms);
                    state.floor_ms = Some(state.floor_ms.map_or(newest_end, |floor| floor.max(newest_end)));
                    state.open.len()
                } else {
                    next_due = next_due.min(idle_at);
                    0
                }
            };
            if shape.processing_time {
                if let Some(oldest_left) = state.open.get(n_due) {
                    next_due = next_due.min(oldest_left.start_ms.saturating_add(shape.length_ms));
                }
            }
            if n_due == 0 {
                continue;
            }
            for window in state.open.drain(..n_due) {
                shape.emit(&sensor_names[sensor], window, spare, out);
            }
            *n_open -= n_due;
            if !state.dirty {
                state.dirty = true;
                dirty_list.push(sensor);
            }
        }
        *next_due_ms = next_due;
    }

    /// The ingest time of sensor `sensor`'s last reading, for an event-time window set.
    pub(crate) fn last_activity_ms(&self, sensor: usize) -> Option<i64> {
        self.sensors[sensor].last_activity_ms
    }

    /// A lower bound of the processing time at which [`Self::advance`] may close a window of
    /// sensor `sensor` (None: it has none open). The same rules as `advance`, for one sensor.
    pub(crate) fn sensor_due_ms(&self, sensor: usize) -> Option<i64> {
        let state = &self.sensors[sensor];
        let oldest = state.open.first()?;
        Some(if self.shape.processing_time {
            oldest.start_ms.saturating_add(self.shape.length_ms)
        } else {
            state.last_activity_ms.map_or(i64::MIN, |last| last.saturating_add(self.shape.idle_ms))
        })
    }

    /// Whether sensor `sensor` has an open window.
    pub(crate) fn has_open(&self, sensor: usize) -> bool {
        !self.sensors[sensor].open.is_empty()
    }

    /// What sensor `sensor` leaves in its tombstone: its watermark (event time only) and its
    /// late sequence.
    pub(crate) fn tombstone(&self, sensor: usize) -> (Option<i64>, u64) {
        let state = &self.sensors[sensor];
        let watermark =
            if self.shape.processing_time { None } else { state.watermark(self.shape.lateness_ms) };
        (watermark, state.late_seq)
    }

    /// A forgotten sensor came back: it starts from its tombstone's watermark (as a floor)
    /// and late sequence, so lateness stays exact and late ids unique.
    pub(crate) fn revive(&mut self, sensor: usize, floor_ms: Option<i64>, late_seq: u64) {
        let state = &mut self.sensors[sensor];
        state.floor_ms = floor_ms;
        state.late_seq = late_seq;
        if !state.dirty {
            state.dirty = true;
            self.dirty_list.push(sensor);
        }
    }

    /// Resets the state of the `forgotten` sensors (none has an open window); their stored
    /// entries are deleted by the engine.
    pub(crate) fn forget(&mut self, forgotten: &[usize], is_forgotten: &[bool]) {
        for &sensor in forgotten {
            debug_assert!(self.sensors[sensor].open.is_empty(), "a forgotten sensor has nothing open");
            self.sensors[sensor] = SensorWindows::default();
        }
        self.dirty_list.retain(|&sensor| !is_forgotten[sensor]);
    }

    /// Whether a sensor's state changed since the last `take_dirty`.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty_list.is_empty()
    }

    /// Appends a put for every sensor whose state changed.
    pub(crate) fn take_dirty(
        &mut self,
        sensor_names: &[Arc<str>],
        entries: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        let shape = &self.shape;
        for sensor in self.dirty_list.drain(..) {
            let state = &mut self.sensors[sensor];
            state.dirty = false;
            entries.push((
                state::window_key(&shape.name, &sensor_names[sensor]),
                Some(shape.encode_sensor(state)),
            ));
        }
    }

    /// Restores one sensor's stored state, unless the window changed shape since.
    pub(crate) fn restore_sensor(&mut self, sensor: usize, stored: WindowSensorV3<'_>) -> Result<(), String> {
        let shape = &self.shape;
        let head = stored.head;
        if (head.length_ms, head.slide_ms, head.processing_time)
            != (shape.length_ms, shape.slide_ms, shape.processing_time)
        {
            return Err(format!(
                "window {} changed shape (stored length {} ms, slide {} ms, {} time)",
                shape.name,
                head.length_ms,
                head.slide_ms,
                if head.processing_time { "processing" } else { "event" }
            ));
        }
        let mut open = Vec::with_capacity(stored.open.len());
        for window in stored.open {
            open.push(shape.load_window(&mut self.spare, window)?);
        }
        open.sort_by_key(|window| window.start_ms);
        open.dedup_by_key(|window| window.start_ms);
        let state = &mut self.sensors[sensor];
        self.n_open = self.n_open - state.open.len() + open.len();
        *state = SensorWindows {
            max_ts_ms: head.max_ts_ms,
            floor_ms: head.floor_ms,
            last_activity_ms: head.last_activity_ms,
            late_seq: head.late_seq,
            open,
            dirty: false,
        };
        // The next advance scans once and finds the true next deadline.
        self.next_due_ms = i64::MIN;
        Ok(())
    }
}

impl Shape {
    fn open_window(&self, spare: &mut Vec<OpenWindow>, start_ms: i64) -> OpenWindow {
        match spare.pop() {
            Some(mut window) => {
                window.start_ms = start_ms;
                window
            }
            None => OpenWindow {
                start_ms,
                fields: vec![FieldAcc::EMPTY; self.fields.len()],
                counts: vec![Vec::new(); self.tags.len()],
                other: vec![0; self.tags.len()],
            },
        }
    }

    /// Adds a reading to an open window; returns how many of its tag values went to an
    /// `other` bucket (0 or 1 per count_by tag).
    #[inline]
    fn add(&self, window: &mut OpenWindow, reading: &Reading) -> u64 {
        for (acc, &field_idx) in window.fields.iter_mut().zip(&self.fields) {
            if let Some(Some(value)) = reading.values.get(field_idx) {
                acc.add_for(reading.ts_ms, *value, self.parts);
            }
        }
        let mut n_other = 0;
        for ((counts, other), (&tag_idx, &cap)) in
            window.counts.iter_mut().zip(&mut window.other).zip(self.tags.iter().zip(&self.tag_caps))
        {
            if let Some(Some(value)) = reading.tags.get(tag_idx) {
                let n_values = counts.len();
                match counts.binary_search_by(|(counted, _)| (**counted).cmp(&**value)) {
                    Ok(pos) => counts[pos].1 += 1,
                    Err(pos) if n_values < cap => counts.insert(pos, (value.clone(), 1)),
                    Err(_) => {
                        *other += 1;
                        n_other += 1;
                    }
                }
            }
        }
        n_other
    }

    /// Emits a closed window's non-empty fields, then its non-empty tag counts, and keeps the
    /// emptied window for reuse.
    fn emit(
        &self,
        sensor: &Arc<str>,
        mut window: OpenWindow,
        spare: &mut Vec<OpenWindow>,
        out: &mut Vec<Output>,
    ) {
        let start_ms = window.start_ms;
        let end_ms = start_ms.saturating_add(self.length_ms);
        for (acc, field) in window.fields.iter_mut().zip(&self.field_names) {
            if let Some(stats) = acc.stats() {
                out.push(Output::Result(ResultRecord::Window(WindowRecord {
                    window: self.name.clone(),
                    device: self.device.clone(),
                    sensor: sensor.clone(),
                    field: field.clone(),
                    start_ms,
                    end_ms,
                    aggregates: self.aggregates.clone(),
                    stats,
                })));
            }
            *acc = FieldAcc::EMPTY;
        }
        for ((counts, other), tag) in window.counts.iter_mut().zip(&mut window.other).zip(&self.tag_names) {
            if !counts.is_empty() || *other > 0 {
                out.push(Output::Result(ResultRecord::WindowCounts(WindowCountsRecord {
                    window: self.name.clone(),
                    device: self.device.clone(),
                    sensor: sensor.clone(),
                    tag: tag.clone(),
                    start_ms,
                    end_ms,
                    counts: counts.clone(),
                    other: *other,
                })));
            }
            // Kept for the window's reuse, unless an unusual window grew it: an emptied window
            // may wait in `spare` for long, and invented tag values (up to the cap) must not
            // stay allocated there.
            if counts.capacity() > SPARE_COUNTS_KEPT {
                *counts = Vec::new();
            } else {
                counts.clear();
            }
            *other = 0;
        }
        spare.push(window);
    }

    fn late_record(&self, sensor: &Arc<str>, reading: &Reading, watermark_ms: i64, seq: u64) -> LateRecord {
        let values = self
            .fields
            .iter()
            .zip(&self.field_names)
            .filter_map(|(&field_idx, name)| {
                reading.values.get(field_idx).copied().flatten().map(|value| (name.clone(), value))
            })
            .collect();
        LateRecord {
            window: self.name.clone(),
            device: self.device.clone(),
            sensor: sensor.clone(),
            ts_ms: reading.ts_ms,
            watermark_ms,
            values,
            seq,
        }
    }

    /// A sensor's stored entry (`WindowEnvelope::V3`), the bytes [`state::encode_window_v3`]
    /// gives for what [`Shape::store_sensor`] makes of it, written straight from the open
    /// windows: a close burst writes every sensor's entry, and building and dropping the
    /// vectors of a [`WindowSensorV3`] for each (with the micro-batch's `String` names) was a
    /// fifth of `Engine::take_dirty`'s instructions.
    fn encode_sensor(&self, state: &SensorWindows) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + state.open.len() * 128);
        state::write_window_v3_head(&mut out, &self.head(state), state.open.len());
        for window in &state.open {
            state::write_open_window_v3(
                &mut out,
                window.start_ms,
                window
                    .fields
                    .iter()
                    .zip(&self.field_names)
                    .filter(|(acc, _)| acc.count > 0)
                    .map(|(acc, name)| (&**name, AccV2::store(acc, self.parts))),
                window
                    .counts
                    .iter()
                    .zip(&self.tag_names)
                    .filter(|(counts, _)| !counts.is_empty())
                    .map(|(counts, name)| (&**name, counts.iter().map(|(value, count)| (&**value, *count)))),
                window
                    .other
                    .iter()
                    .zip(&self.tag_names)
                    .filter(|(other, _)| **other > 0)
                    .map(|(other, name)| (&**name, *other)),
            );
        }
        out
    }

    /// A sensor's state as the stored struct (tests: [`Shape::encode_sensor`] writes its bytes).
    #[cfg(test)]
    fn store_sensor<'a>(&'a self, state: &'a SensorWindows) -> WindowSensorV3<'a> {
        WindowSensorV3 {
            head: self.head(state),
            open: state.open.iter().map(|window| self.store_window(window)).collect(),
        }
    }

    /// A sensor's stored entry but its open windows.
    fn head(&self, state: &SensorWindows) -> WindowHeadV3 {
        WindowHeadV3 {
            length_ms: self.length_ms,
            slide_ms: self.slide_ms,
            processing_time: self.processing_time,
            max_ts_ms: state.max_ts_ms,
            floor_ms: state.floor_ms,
            last_activity_ms: state.last_activity_ms,
            late_seq: state.late_seq,
        }
    }

    /// The stored form of `window`, its names borrowed from the shape and the window.
    #[cfg(test)]
    fn store_window<'a>(&'a self, window: &'a OpenWindow) -> OpenWindowV3<'a> {
        OpenWindowV3 {
            start_ms: window.start_ms,
            fields: window
                .fields
                .iter()
                .zip(&self.field_names)
                .filter(|(acc, _)| acc.count > 0)
                .map(|(acc, name)| (state::Name::borrowed(name), AccV2::store(acc, self.parts)))
                .collect(),
            counts: window
                .counts
                .iter()
                .zip(&self.tag_names)
                .filter(|(counts, _)| !counts.is_empty())
                .map(|(counts, name)| {
                    (
                        state::Name::borrowed(name),
                        counts.iter().map(|(value, count)| (state::Name::borrowed(value), *count)).collect(),
                    )
                })
                .collect(),
            other: window
                .other
                .iter()
                .zip(&self.tag_names)
                .filter(|(other, _)| **other > 0)
                .map(|(other, name)| (state::Name::borrowed(name), *other))
                .collect(),
        }
    }

    /// Rebuilds a stored window; fields and tags no longer configured are dropped.
    fn load_window(
        &self,
        spare: &mut Vec<OpenWindow>,
        stored: OpenWindowV3<'_>,
    ) -> Result<OpenWindow, String> {
        let mut window = self.open_window(spare, stored.start_ms);
        for (name, acc) in stored.fields {
            if let Some(pos) = self.field_names.iter().position(|field| **field == *name) {
                window.fields[pos] = acc.load(self.parts)?;
            }
        }
        for (name, counts) in stored.counts {
            if let Some(pos) = self.tag_names.iter().position(|tag| **tag == *name) {
                let loaded = &mut window.counts[pos];
                loaded.clear();
                loaded.extend(counts.into_iter().map(|(value, count)| (Arc::from(&*value), count)));
                // Stored in order; a stored duplicate (none is written) counts once, as the
                // last one, which is what a map built from them kept.
                loaded.sort_by(|a, b| a.0.cmp(&b.0));
                loaded.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        kept.1 = later.1;
                    }
                    same
                });
            }
        }
        for (name, other) in stored.other {
            if let Some(pos) = self.tag_names.iter().position(|tag| **tag == *name) {
                window.other[pos] = other;
            }
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use eddy_sensors::Reading;

    use crate::engine::state;
    use crate::engine::tests::{count_by_window, engine_spec};
    use crate::engine::window::{WindowSet, SPARE_COUNTS_KEPT};
    use crate::engine::{Aggregate, TimeDomain, WindowSpec};

    /// Runs one 10 s tumbling window counting by mode over readings with `n_values` distinct
    /// modes, then a reading 20 s later closing it; returns the emptied window's room for
    /// counts while it waits for reuse.
    fn spare_room_after(n_values: usize) -> usize {
        let spec = count_by_window("modes");
        let engine = engine_spec(vec![spec.clone()], 60_000);
        let mut set = WindowSet::new(&engine, &spec, Arc::from("gw"), 60_000);
        set.push_sensor();
        let reading = |ts_ms: i64, mode: String| Reading {
            sensor: Arc::from("s"),
            ts_ms,
            values: smallvec::smallvec![Some(1.0)],
            tags: smallvec::smallvec![Some(Arc::from(mode.as_str()))],
        };
        let mut out = Vec::new();
        for n in 0..n_values {
            let ts_ms = i64::try_from(n).expect("small");
            set.apply(0, ts_ms, ts_ms, &reading(ts_ms, format!("mode-{n:02}")), &mut out);
        }
        set.apply(0, 20_000, 20_000, &reading(20_000, "heat".to_owned()), &mut out);
        assert_eq!(out.len(), 1, "the first window closed: {out:?}");
        assert_eq!(set.spare.len(), 1, "and waits for reuse");
        set.spare[0].counts[0].capacity()
    }

    proptest::proptest! {
        /// The bytes a commit stores for a sensor's windows, written straight from memory, are
        /// those of the stored struct ([`state::encode_window_v3`], itself postcard's bytes):
        /// fields with and without readings, counts by tag value, `other` past the cap.
        #[test]
        fn a_sensors_entry_is_written_as_its_stored_struct_encodes(
            readings in proptest::collection::vec(
                (0i64..40_000, proptest::option::weighted(0.8, -20i32..40), proptest::option::weighted(0.8, 0usize..6)),
                0..60,
            ),
        ) {
            let spec = WindowSpec::new(
                "mixed",
                Duration::from_secs(10),
                Duration::from_secs(5),
                TimeDomain::Event,
                Duration::from_secs(2),
                vec![0],
                Aggregate::ALL.to_vec(),
                vec![0],
            )
            .unwrap();
            let mut engine = (*engine_spec(vec![spec.clone()], 60_000)).clone();
            engine.count_by_max_values = 3;
            let mut set = WindowSet::new(&engine, &spec, Arc::from("gw"), 60_000);
            set.push_sensor();
            let mut out = Vec::new();
            for (ts_ms, value, mode) in readings {
                let reading = Reading {
                    sensor: Arc::from("s"),
                    ts_ms,
                    values: smallvec::smallvec![value.map(f64::from)],
                    tags: smallvec::smallvec![mode.map(|mode| Arc::from(format!("mode-{mode}").as_str()))],
                };
                set.apply(0, ts_ms, ts_ms, &reading, &mut out);
                let state = &set.sensors[0];
                let by_struct = state::encode_window_v3(&set.shape.store_sensor(state));
                proptest::prop_assert_eq!(set.shape.encode_sensor(state), by_struct);
            }
        }
    }

    #[test]
    fn an_emptied_window_keeps_room_for_a_few_tag_values_not_for_many() {
        // A thermostat's modes: the room stays, the next window counts without allocating.
        let few = spare_room_after(2);
        assert!((2..=SPARE_COUNTS_KEPT).contains(&few), "{few}");
        // Invented values up to the cap: not kept while the window waits.
        assert_eq!(spare_room_after(SPARE_COUNTS_KEPT + 5), 0);
    }
}
