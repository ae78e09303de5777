//! Forgetting silent sensors and keeping their bounded tombstones (issue #14); the rules are
//! in the engine module documentation ("Forgotten sensors").

use std::sync::Arc;

use crate::engine::sensor_clock::SensorClock;
use crate::engine::state::{self, TombstoneV1};
use crate::engine::{Engine, MAX_TOMBSTONES};

impl Engine {
    /// The latest activity of `sensor`, processing time: its last reading into a window or its
    /// clock's last sighting (`i64::MIN`: none), from which its forget deadline counts.
    pub(super) fn last_seen_ms(&self, sensor: usize) -> i64 {
        self.windows
            .iter()
            .filter_map(|window_set| window_set.last_activity_ms(sensor))
            .chain(self.sensor_clocks[sensor].last_seen_ms())
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Forgets every sensor with no reading since `now_ms - forget_ms` and nothing open (see
    /// the module documentation), in id order, and finds the next forget deadline.
    pub(super) fn forget_idle(&mut self, now_ms: i64, forget_ms: i64) {
        let mut next_due_ms = i64::MAX;
        let mut forgotten = Vec::new();
        // When each was due, not when the scan came: a replay scans at other times.
        let mut forgotten_due_ms = Vec::new();
        for &sensor in &self.sensors.sorted {
            let clock = &self.sensor_clocks[sensor];
            let due_ms = self.last_seen_ms(sensor).saturating_add(forget_ms);
            if due_ms > now_ms {
                next_due_ms = next_due_ms.min(due_ms);
                continue;
            }
            let open = clock.n_held() > 0
                || self.batch.has_open(sensor)
                || self.windows.iter().any(|window_set| window_set.has_open(sensor));
            if open {
                // Only under a changed configuration: look again at the next advance.
                next_due_ms = next_due_ms.min(now_ms.saturating_add(1));
                continue;
            }
            forgotten.push(sensor);
            forgotten_due_ms.push(due_ms);
        }
        if forgotten.is_empty() {
            self.expire_tombstones(now_ms, forget_ms, next_due_ms);
            return;
        }
        let mut is_forgotten = vec![false; self.sensors.names.len()];
        for (&sensor, &due_ms) in forgotten.iter().zip(&forgotten_due_ms) {
            is_forgotten[sensor] = true;
            let name = self.sensors.names[sensor].clone();
            self.pending_deletes.push(state::batch_key(&name));
            self.pending_deletes.push(state::sensor_clock_key(&name));
            for window_set in &self.windows {
                self.pending_deletes.push(state::window_key(window_set.name(), &name));
            }
            self.sensor_clocks[sensor] = SensorClock::default();
            self.sensor_clock_dirty[sensor] = false;
            let windows = self
                .windows
                .iter()
                .map(|window_set| {
                    let (watermark_ms, late_seq) = window_set.tombstone(sensor);
                    (window_set.name().to_string(), watermark_ms, late_seq)
                })
                .collect();
            self.keep_tombstone(name.clone(), TombstoneV1 { forgotten_ms: due_ms, windows });
            self.forgotten.push(name);
        }
        self.sensor_clock_dirty_list.retain(|&sensor| !is_forgotten[sensor]);
        self.batch.forget(&forgotten, &is_forgotten);
        for window_set in &mut self.windows {
            window_set.forget(&forgotten, &is_forgotten);
        }
        self.sensors.forget(&forgotten, &is_forgotten);
        self.sensors_forgotten_total += u64::try_from(forgotten.len()).unwrap_or(u64::MAX);
        self.expire_tombstones(now_ms, forget_ms, next_due_ms);
    }

    /// Drops the tombstones kept for `forget_ms` by `now_ms`, and sets the next forget
    /// deadline: `sensors_due_ms` (the sensors') or the next tombstone's expiry.
    fn expire_tombstones(&mut self, now_ms: i64, forget_ms: i64, sensors_due_ms: i64) {
        let mut next_due_ms = sensors_due_ms;
        while let Some((forgotten_ms, name)) = self.tombstone_order.first().cloned() {
            let expires_ms = forgotten_ms.saturating_add(forget_ms);
            if expires_ms > now_ms {
                next_due_ms = next_due_ms.min(expires_ms);
                break;
            }
            self.drop_tombstone(&name);
        }
        self.forget_due_ms = next_due_ms;
    }

    /// Keeps a forgotten sensor's tombstone, pushing out the oldest past [`MAX_TOMBSTONES`].
    fn keep_tombstone(&mut self, name: Arc<str>, tombstone: TombstoneV1) {
        if let Some(old) = self.tombstones.remove(&name) {
            self.tombstone_order.remove(&(old.forgotten_ms, name.clone()));
        }
        self.tombstone_order.insert((tombstone.forgotten_ms, name.clone()));
        self.tombstones.insert(name.clone(), tombstone);
        self.tombstones_dirty.push(name);
        while self.tombstones.len() > MAX_TOMBSTONES {
            let (_, oldest) = self.tombstone_order.first().cloned().expect("more tombstones than none");
            self.drop_tombstone(&oldest);
        }
    }

    /// Forgets a tombstone, in memory and (next `take_dirty`) in the store.
    fn drop_tombstone(&mut self, name: &Arc<str>) -> Option<TombstoneV1> {
        let tombstone = self.tombstones.remove(name)?;
        self.tombstone_order.remove(&(tombstone.forgotten_ms, name.clone()));
        self.pending_deletes.push(state::tombstone_key(name));
        Some(tombstone)
    }

    /// A new sensor: if it was forgotten and its tombstone is kept, its windows start from it.
    pub(super) fn revive(&mut self, sensor: usize) {
        let name = self.sensors.names[sensor].clone();
        let Some(tombstone) = self.drop_tombstone(&name) else { return };
        for (window, floor_ms, late_seq) in tombstone.windows {
            if let Some(window_set) =
                self.windows.iter_mut().find(|window_set| **window_set.name() == *window)
            {
                window_set.revive(sensor, floor_ms, late_seq);
            }
        }
    }
}
