//! The caps on distinct sensor ids: a sender inventing ids must not exhaust the gateway, and
//! one source inventing ids must not lock the other sources' sensors out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use foldhash::fast::RandomState;

/// The set of sensor ids seen so far, with a cap.
///
/// The daemon makes one registry for the gateway ([`SensorRegistry::new`], `ingest.max_sensors`)
/// and, in front of it, one per source ([`SensorRegistry::for_source`], the source's
/// `max_sensors`): an id is admitted when its source's cap and the gateway's both leave room,
/// and it counts against the source that sent it. With the sources' caps adding up to at most
/// the gateway's (the configuration checks it), a source that invents ids fills its own cap
/// and never the room of another.
///
/// Ids are forgotten too: the engine forgets a sensor silent for `forget_after`, and once that
/// is committed the daemon calls [`SensorRegistry::release`] on the gateway's registry, which
/// releases the ids in every source's registry as well, so the caps count sensors that are
/// alive, not every id ever sent.
///
/// A std `Mutex` is enough: it is held only for a hash lookup, never across `.await`, and each
/// decoder keeps a local cache of ids it has already admitted so that the lock is taken once
/// per new id per decoder, not per reading. A release bumps a generation shared by the
/// registries, and a cache that sees it moved empties itself, so that a released id is
/// admitted (and counted) again before it is used.
#[derive(Debug)]
pub struct SensorRegistry {
    cap: usize,
    known: Mutex<HashSet<Arc<str>>>,
    /// The gateway-wide registry this source's registry sits in front of (None: this is it).
    parent: Option<Arc<SensorRegistry>>,
    /// The gateway's registry: the sources' registries, to release ids in them too.
    children: Mutex<Vec<Weak<SensorRegistry>>>,
    /// Releases so far, shared by the gateway's registry and the sources'.
    generation: Arc<AtomicU64>,
}

impl SensorRegistry {
    /// An empty registry that admits at most `cap` distinct ids.
    pub fn new(cap: usize) -> SensorRegistry {
        SensorRegistry {
            cap,
            known: Mutex::new(HashSet::new()),
            parent: None,
            children: Mutex::new(Vec::new()),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// An empty registry for one source: at most `cap` distinct ids of its own, each also
    /// admitted by `parent` (the gateway-wide registry and its cap).
    pub fn for_source(parent: &Arc<SensorRegistry>, cap: usize) -> Arc<SensorRegistry> {
        let registry = Arc::new(SensorRegistry {
            cap,
            known: Mutex::new(HashSet::new()),
            parent: Some(parent.clone()),
            children: Mutex::new(Vec::new()),
            generation: parent.generation.clone(),
        });
        let mut children = parent.children.lock().unwrap();
        children.retain(|child| child.strong_count() > 0);
        children.push(Arc::downgrade(&registry));
        drop(children);
        registry
    }

    /// Forgets `ids` here and in every source's registry made from this one: they no longer
    /// count against any cap, and a source that sends one again has it admitted anew.
    pub fn release(&self, ids: &[Arc<str>]) {
        if ids.is_empty() {
            return;
        }
        let children: Vec<Arc<SensorRegistry>> =
            self.children.lock().unwrap().iter().filter_map(Weak::upgrade).collect();
        // Lock order as in `admit`: a source's registry, then the gateway's.
        for child in &children {
            child.release(ids);
        }
        let mut known = self.known.lock().unwrap();
        for id in ids {
            known.remove(&**id);
        }
        drop(known);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Releases so far (a cache in front of this registry is stale once it moved).
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Admits `sensor` if it is known already or the cap (and the parent's) leaves room;
    /// returns the shared copy of the id, or `None` when a cap is reached.
    pub fn admit(&self, sensor: &str) -> Option<Arc<str>> {
        let mut known = self.known.lock().unwrap();
        if let Some(existing) = known.get(sensor) {
            return Some(existing.clone());
        }
        if known.len() >= self.cap {
            return None;
        }
        // Lock order: a source's registry, then the gateway's; never the other way round.
        let id: Arc<str> = match &self.parent {
            Some(parent) => parent.admit(sensor)?,
            None => Arc::from(sensor),
        };
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
    /// Looked up for every reading: foldhash (seeded per process) rather than SipHash, whose
    /// hashing was ~2 % of the daemon's CPU at full speed; the sensor caps bound its keys.
    local: HashSet<Arc<str>, RandomState>,
    /// The registry's generation when `local` was last emptied.
    generation: u64,
}

impl AdmittedSensors {
    /// A cache in front of `registry`.
    pub fn new(registry: Arc<SensorRegistry>) -> AdmittedSensors {
        let generation = registry.generation();
        AdmittedSensors { registry, local: HashSet::default(), generation }
    }

    /// The shared id for `sensor`, or `None` when the registry's cap is reached.
    pub fn admit(&mut self, sensor: &str) -> Option<Arc<str>> {
        let generation = self.registry.generation();
        if generation != self.generation {
            // Some ids were released: ask the registry again for each.
            self.local.clear();
            self.generation = generation;
        }
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

    #[test]
    fn a_source_that_fills_its_cap_leaves_room_for_the_other_sources() {
        let gateway = Arc::new(SensorRegistry::new(10));
        let junk = SensorRegistry::for_source(&gateway, 5);
        let serial = SensorRegistry::for_source(&gateway, 5);
        let mut junk_cache = AdmittedSensors::new(junk.clone());
        let admitted = (0..10_000).filter(|n| junk_cache.admit(&format!("junk-{n}")).is_some()).count();
        assert_eq!(admitted, 5);
        let mut serial_cache = AdmittedSensors::new(serial.clone());
        assert!(serial_cache.admit("boiler").is_some());
        // An id another source introduced counts against each source that sends it.
        assert!(serial_cache.admit("junk-0").is_some());
        assert_eq!((junk.len(), serial.len(), gateway.len()), (5, 2, 6));
    }

    #[test]
    fn the_gateway_cap_bounds_every_source_together() {
        let gateway = Arc::new(SensorRegistry::new(3));
        let first = SensorRegistry::for_source(&gateway, 3);
        let second = SensorRegistry::for_source(&gateway, 3);
        assert!(first.admit("a").is_some() && first.admit("b").is_some());
        assert!(second.admit("c").is_some());
        assert!(second.admit("d").is_none());
        assert_eq!(second.len(), 1, "an id the gateway refused is not counted by its source");
    }

    #[test]
    fn released_ids_leave_every_cap_and_every_cache() {
        let gateway = Arc::new(SensorRegistry::new(10));
        let source = SensorRegistry::for_source(&gateway, 2);
        let mut cache = AdmittedSensors::new(source.clone());
        assert!(cache.admit("a").is_some() && cache.admit("b").is_some());
        assert!(cache.admit("c").is_none());
        gateway.release(&[Arc::from("a")]);
        assert_eq!((source.len(), gateway.len()), (1, 1));
        assert!(cache.admit("c").is_some(), "the released id made room");
        // The cache no longer vouches for `a`: it must be admitted again, and the cap is full.
        assert!(cache.admit("a").is_none());
        assert!(cache.admit("b").is_some());
        assert_eq!((source.len(), gateway.len()), (2, 2));
    }
}
