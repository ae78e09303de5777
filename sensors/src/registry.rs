//! The cap on distinct sensor ids: a sender inventing ids must not exhaust the gateway.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of sensor ids seen so far, shared by every source, with a cap.
///
/// A std `Mutex` is enough: it is held only for a hash lookup, never across `.await`, and each
/// source keeps a local cache of ids it has already admitted so that the lock is taken once per
/// new id per source, not per reading.
#[derive(Debug)]
pub struct SensorRegistry {
    cap: usize,
    known: Mutex<HashSet<Arc<str>>>,
}

impl SensorRegistry {
    /// An empty registry that admits at most `cap` distinct ids.
    pub fn new(cap: usize) -> SensorRegistry {
        SensorRegistry { cap, known: Mutex::new(HashSet::new()) }
    }

    /// Admits `sensor` if it is known already or the cap leaves room; returns the shared copy
    /// of the id, or `None` when the cap is reached.
    pub fn admit(&self, sensor: &str) -> Option<Arc<str>> {
        let mut known = self.known.lock().unwrap();
        if let Some(existing) = known.get(sensor) {
            return Some(existing.clone());
        }
        if known.len() >= self.cap {
            return None;
        }
        let id: Arc<str> = Arc::from(sensor);
        known.insert(id.clone());
        Some(id)
    }

    /// Number of distinct ids admitted.
    pub fn len(&self) -> usize {
        self.known.lock().unwrap().len()
    }

    /// True when no id has been admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// A source's local cache in front of the shared registry.
#[derive(Debug)]
pub struct AdmittedSensors {
    registry: Arc<SensorRegistry>,
    local: HashSet<Arc<str>>,
}

impl AdmittedSensors {
    /// A cache in front of `registry`.
    pub fn new(registry: Arc<SensorRegistry>) -> AdmittedSensors {
        AdmittedSensors { registry, local: HashSet::new() }
    }

    /// The shared id for `sensor`, or `None` when the registry's cap is reached.
    pub fn admit(&mut self, sensor: &str) -> Option<Arc<str>> {
        if let Some(id) = self.local.get(sensor) {
            return Some(id.clone());
        }
        let id = self.registry.admit(sensor)?;
        self.local.insert(id.clone());
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_refuses_new_ids_past_the_cap_but_keeps_known_ones() {
        let registry = Arc::new(SensorRegistry::new(2));
        let mut cache = AdmittedSensors::new(registry.clone());
        assert!(cache.admit("a").is_some());
        assert!(cache.admit("b").is_some());
        assert!(cache.admit("c").is_none());
        assert!(cache.admit("a").is_some());
        let mut other = AdmittedSensors::new(registry.clone());
        assert!(other.admit("b").is_some());
        assert!(other.admit("d").is_none());
        assert_eq!(registry.len(), 2);
    }
}
