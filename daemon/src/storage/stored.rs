//! Stored formats: the postcard envelopes of log chunks, outbox pages and dead letters. They only ever
//! gain variants (`V2`, …); an existing variant's layout never changes.

use std::sync::Arc;

use eddy_sensors::Reading;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

/// A log chunk as stored, owned form (decoding).
#[derive(Debug, Deserialize)]
pub(crate) enum LogEnvelope {
    V1(LogChunkV1),
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogChunkV1 {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    /// The schema's field names at write time: values are positional, so a reading is
    /// re-mapped by name if the schema changed between runs.
    pub(crate) field_names: Vec<String>,
    pub(crate) tag_names: Vec<String>,
    pub(crate) readings: Vec<ReadingV1>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadingV1 {
    pub(crate) sensor: String,
    pub(crate) ts_ms: i64,
    pub(crate) values: Vec<Option<f64>>,
    pub(crate) tags: Vec<Option<String>>,
}

/// The borrowed twin of `LogEnvelope::V1`, for encoding without copying readings. Its
/// serialized layout is identical to the owned form (checked by a test).
#[derive(Serialize)]
pub(crate) enum LogEnvelopeRef<'a> {
    V1(LogChunkV1Ref<'a>),
}

#[derive(Serialize)]
pub(crate) struct LogChunkV1Ref<'a> {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: &'a [String],
    pub(crate) tag_names: &'a [String],
    pub(crate) readings: ReadingsRef<'a>,
}

pub(crate) struct ReadingsRef<'a>(pub(crate) &'a [Reading]);

impl Serialize for ReadingsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for reading in self.0 {
            seq.serialize_element(&ReadingRef(reading))?;
        }
        seq.end()
    }
}

struct ReadingRef<'a>(&'a Reading);

impl Serialize for ReadingRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_struct("ReadingV1", 4)?;
        fields.serialize_field("sensor", &*self.0.sensor)?;
        fields.serialize_field("ts_ms", &self.0.ts_ms)?;
        fields.serialize_field("values", &self.0.values)?;
        fields.serialize_field("tags", &TagsRef(&self.0.tags))?;
        fields.end()
    }
}

struct TagsRef<'a>(&'a [Option<Arc<str>>]);

impl Serialize for TagsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|tag| tag.as_deref()))
    }
}

/// A page of consecutive outbox entries as stored, under the seq of its first entry.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum OutboxPage {
    V1 {
        entries: Vec<OutboxEntryV1>,
    },
    /// V1 plus the processing time of the commit that wrote it (ms since the epoch), for the
    /// outbox `ttl` and the outbox age.
    V2 {
        committed_ms: i64,
        entries: Vec<OutboxEntryV1>,
    },
}

impl OutboxPage {
    /// The entries and the commit time (`None` for V1 pages).
    pub(crate) fn into_parts(self) -> (Option<i64>, Vec<OutboxEntryV1>) {
        match self {
            OutboxPage::V1 { entries } => (None, entries),
            OutboxPage::V2 { committed_ms, entries } => (Some(committed_ms), entries),
        }
    }
}

/// The borrowed twin of `OutboxPage::V1`, for encoding without copying payloads. Its
/// serialized layout is identical to the owned form (checked by a test).
#[derive(Serialize)]
pub(crate) enum OutboxPageRef<'a> {
    #[allow(dead_code)] // kept so that V2 keeps its variant index; new pages are V2
    V1 {
        entries: Vec<OutboxEntryV1Ref<'a>>,
    },
    V2 {
        committed_ms: i64,
        entries: Vec<OutboxEntryV1Ref<'a>>,
    },
}

/// The borrowed twin of [`OutboxEntryV1`].
#[derive(Serialize)]
pub(crate) struct OutboxEntryV1Ref<'a> {
    pub(crate) kind: &'a str,
    pub(crate) group: &'a str,
    pub(crate) payload: &'a [u8],
}

/// One outbox entry.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OutboxEntryV1 {
    pub(crate) kind: String,
    pub(crate) group: String,
    pub(crate) payload: Vec<u8>,
}

/// A page of engine state entries (those whose key hashes to this page), sorted by key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) enum StatePage {
    #[default]
    Empty,
    V1 {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A record a sink rejected permanently, kept for the operator (tree `dead`, key: a counter).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DeadLetter {
    V1 { sink: String, seq: u64, kind: String, reason: String, rejected_ms: i64, payload: Vec<u8> },
}
