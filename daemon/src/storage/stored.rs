//! Stored formats: the postcard envelopes of log chunks, outbox pages, engine state pages and
//! their deltas, source marks and dead letters. They only ever gain variants (`V2`, …); an
//! existing variant's layout never changes.

#[cfg(test)]
use std::sync::Arc;

#[cfg(test)]
use eddy_sensors::Reading;
#[cfg(test)]
use serde::ser::{SerializeSeq, SerializeStruct};
#[cfg(test)]
use serde::Serializer;
use serde::{Deserialize, Serialize};

use crate::storage::columns::{ReadingColumnsV1, ReadingColumnsV1Ref};

/// A log chunk as stored, owned form (decoding).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum LogEnvelope {
    V1(LogChunkV1),
    /// The postcard bytes of a [`LogChunkV1`], LZ4-compressed ([`compress`]): sensor ids, tags
    /// and timestamps repeat within a chunk; the log takes ~2x less disk, and less of sled's
    /// memory until it is trimmed.
    Lz4V1(#[serde(with = "byte_vec")] Vec<u8>),
    /// The postcard bytes of a [`LogChunkV2`] (V1 plus the sources' marks), LZ4-compressed.
    Lz4V2(#[serde(with = "byte_vec")] Vec<u8>),
    /// The postcard bytes of a [`LogChunkV3`] (V2 with the readings by column),
    /// LZ4-compressed: about a quarter of V2's bytes for thermostat readings, and the log is
    /// most of what eddy writes to flash.
    Lz4V3(#[serde(with = "byte_vec")] Vec<u8>),
}

/// Serde for the byte strings of stored values (`#[serde(with = "byte_vec")]`): the layout
/// postcard gives a `Vec<u8>` or `&[u8]` (its length, then the bytes), written and read in one
/// copy instead of one byte at a time through serde's sequence path (the outbox's payloads and
/// compressed pages, the log's compressed chunks). The bytes are the same, so no new variant.
pub(crate) mod byte_vec {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteVecVisitor)
    }

    struct ByteVecVisitor;

    impl<'de> serde::de::Visitor<'de> for ByteVecVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

/// A source mark as stored: its key (source name, 0, kind, id) and value; `None` forgets it.
pub(crate) type MarkV1 = (Vec<u8>, Option<u64>);

/// Encodes a log chunk (as `Lz4V3`).
pub(crate) fn encode_log_chunk(chunk: &LogChunkV3Ref<'_>) -> Result<Vec<u8>, postcard::Error> {
    // A full chunk of thermostat readings is ~10 KB before compression: room for it at once
    // instead of a dozen doublings.
    let mut plain = Vec::with_capacity(16 * 1024);
    chunk.write_postcard(&mut plain);
    postcard::to_allocvec(&LogEnvelope::Lz4V3(compress(&plain)))
}

impl LogChunkV3Ref<'_> {
    /// Appends the chunk's postcard bytes to `out` by hand ([`crate::wire`]): what
    /// `postcard::to_extend` of the derived `Serialize` writes, without a serde call per value
    /// (a property test compares the two).
    pub(crate) fn write_postcard(&self, out: &mut Vec<u8>) {
        use crate::wire;
        wire::zigzag(out, self.ingest_ms);
        wire::varint(out, self.batch);
        for names in [self.field_names, self.tag_names] {
            wire::len(out, names.len());
            for name in names {
                wire::bytes(out, name.as_bytes());
            }
        }
        self.readings.write_postcard(out);
        wire::len(out, self.marks.len());
        for (key, value) in self.marks {
            wire::bytes(out, key);
            wire::option(out, *value, wire::varint);
        }
    }
}

/// Encodes a log chunk as eddy did before `Lz4V3` (as `Lz4V2`), for the tests that such
/// chunks still decode.
#[cfg(test)]
pub(crate) fn encode_log_chunk_v2(chunk: &LogChunkV2Ref<'_>) -> Result<Vec<u8>, postcard::Error> {
    let compressed = compress(&postcard::to_allocvec(chunk)?);
    postcard::to_allocvec(&LogEnvelope::Lz4V2(compressed))
}

/// Decodes a log chunk of any version (a V1 chunk has no marks).
pub(crate) fn decode_log_chunk(bytes: &[u8]) -> Result<LogChunkV2, String> {
    let decode_v1 = |chunk: LogChunkV1| LogChunkV2 {
        ingest_ms: chunk.ingest_ms,
        batch: chunk.batch,
        field_names: chunk.field_names,
        tag_names: chunk.tag_names,
        readings: chunk.readings,
        marks: Vec::new(),
    };
    match postcard::from_bytes::<LogEnvelope>(bytes).map_err(|error| error.to_string())? {
        LogEnvelope::V1(chunk) => Ok(decode_v1(chunk)),
        LogEnvelope::Lz4V1(compressed) => {
            postcard::from_bytes(&decompress(&compressed)?).map(decode_v1).map_err(|error| error.to_string())
        }
        LogEnvelope::Lz4V2(compressed) => {
            postcard::from_bytes(&decompress(&compressed)?).map_err(|error| error.to_string())
        }
        LogEnvelope::Lz4V3(compressed) => {
            let chunk: LogChunkV3 =
                postcard::from_bytes(&decompress(&compressed)?).map_err(|error| error.to_string())?;
            Ok(LogChunkV2 {
                ingest_ms: chunk.ingest_ms,
                batch: chunk.batch,
                field_names: chunk.field_names,
                tag_names: chunk.tag_names,
                readings: chunk.readings.decode()?,
                marks: chunk.marks,
            })
        }
    }
}

/// A log chunk with its readings by column ([`ReadingColumnsV1`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogChunkV3 {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: Vec<String>,
    pub(crate) tag_names: Vec<String>,
    pub(crate) readings: ReadingColumnsV1,
    pub(crate) marks: Vec<MarkV1>,
}

/// The borrowed twin of [`LogChunkV3`], for encoding; same serialized layout.
#[derive(Serialize)]
pub(crate) struct LogChunkV3Ref<'a> {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: &'a [String],
    pub(crate) tag_names: &'a [String],
    pub(crate) readings: &'a ReadingColumnsV1Ref<'a>,
    pub(crate) marks: &'a [MarkV1],
}

/// A log chunk with the marks its sources stored with it (see `eddy_sensors::Mark`): they
/// become durable in the same value as the readings, so neither can survive a crash alone.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogChunkV2 {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: Vec<String>,
    pub(crate) tag_names: Vec<String>,
    pub(crate) readings: Vec<ReadingV1>,
    pub(crate) marks: Vec<MarkV1>,
}

/// The borrowed twin of [`LogChunkV2`] (what eddy wrote before `Lz4V3`); its serialized
/// layout is identical (checked by a test).
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct LogChunkV2Ref<'a> {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: &'a [String],
    pub(crate) tag_names: &'a [String],
    pub(crate) readings: ReadingsRef<'a>,
    pub(crate) marks: &'a [MarkV1],
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogChunkV1 {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    /// The schema's field names at write time: values are positional, so a reading is
    /// re-mapped by name if the schema changed between runs.
    pub(crate) field_names: Vec<String>,
    pub(crate) tag_names: Vec<String>,
    pub(crate) readings: Vec<ReadingV1>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReadingV1 {
    pub(crate) sensor: String,
    pub(crate) ts_ms: i64,
    pub(crate) values: Vec<Option<f64>>,
    pub(crate) tags: Vec<Option<String>>,
}

/// The borrowed twin of [`LogChunkV1`] (what eddy wrote before marks), kept for the test that
/// older chunks still decode.
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct LogChunkV1Ref<'a> {
    pub(crate) ingest_ms: i64,
    pub(crate) batch: u64,
    pub(crate) field_names: &'a [String],
    pub(crate) tag_names: &'a [String],
    pub(crate) readings: ReadingsRef<'a>,
}

#[cfg(test)]
pub(crate) struct ReadingsRef<'a>(pub(crate) &'a [Reading]);

#[cfg(test)]
impl Serialize for ReadingsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for reading in self.0 {
            seq.serialize_element(&ReadingRef(reading))?;
        }
        seq.end()
    }
}

#[cfg(test)]
struct ReadingRef<'a>(&'a Reading);

#[cfg(test)]
impl Serialize for ReadingRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_struct("ReadingV1", 4)?;
        fields.serialize_field("sensor", &*self.0.sensor)?;
        fields.serialize_field("ts_ms", &self.0.ts_ms)?;
        fields.serialize_field("values", &self.0.values[..])?;
        fields.serialize_field("tags", &TagsRef(&self.0.tags))?;
        fields.end()
    }
}

#[cfg(test)]
struct TagsRef<'a>(&'a [Option<Arc<str>>]);

#[cfg(test)]
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
    /// V2 with its entries' postcard bytes LZ4-compressed ([`compress`]) and their number
    /// beside them (so the budget can count a page without decompressing it). JSON results
    /// repeat their keys, device, window and sensor names: a page shrinks ~5x, which is as
    /// much more backlog in the disk budget and less memory in sled's cache and IO buffers.
    Lz4V2 {
        committed_ms: i64,
        n_entries: u32,
        #[serde(with = "byte_vec")]
        compressed: Vec<u8>,
    },
}

/// The borrowed twin of [`OutboxPage`], for encoding without copying.
#[derive(Serialize)]
enum OutboxPageRef<'a> {
    #[allow(dead_code)] // kept so that later variants keep their index; new pages are Lz4V2
    V1 { entries: Vec<OutboxEntryV1Ref<'a>> },
    #[allow(dead_code)]
    V2 { committed_ms: i64, entries: Vec<OutboxEntryV1Ref<'a>> },
    Lz4V2 {
        committed_ms: i64,
        n_entries: u32,
        #[serde(serialize_with = "byte_vec::serialize")]
        compressed: &'a [u8],
    },
}

/// The compressed entries of an outbox page, ready to be stored by [`encode_outbox_page`].
pub(crate) fn compress_outbox_entries(entries: &[OutboxEntryV1Ref<'_>]) -> Result<Vec<u8>, postcard::Error> {
    Ok(compress(&postcard::to_allocvec(entries)?))
}

/// An outbox page (as `Lz4V2`) of `n_entries` entries compressed by
/// [`compress_outbox_entries`].
pub(crate) fn encode_outbox_page(
    committed_ms: i64,
    n_entries: usize,
    compressed: &[u8],
) -> Result<Vec<u8>, postcard::Error> {
    let n_entries = u32::try_from(n_entries).expect("an outbox page holds at most 256 entries");
    postcard::to_allocvec(&OutboxPageRef::Lz4V2 { committed_ms, n_entries, compressed })
}

/// Decodes an outbox page of any version: its commit time (`None` for V1) and entries.
pub(crate) fn decode_outbox_page(bytes: &[u8]) -> Result<(Option<i64>, Vec<OutboxEntryV1>), String> {
    match postcard::from_bytes::<OutboxPage>(bytes).map_err(|error| error.to_string())? {
        OutboxPage::V1 { entries } => Ok((None, entries)),
        OutboxPage::V2 { committed_ms, entries } => Ok((Some(committed_ms), entries)),
        OutboxPage::Lz4V2 { committed_ms, compressed, .. } => {
            let entries =
                postcard::from_bytes(&decompress(&compressed)?).map_err(|error| error.to_string())?;
            Ok((Some(committed_ms), entries))
        }
    }
}

/// An outbox page's commit time and number of entries, without decompressing it.
pub(crate) fn outbox_page_header(bytes: &[u8]) -> Result<(Option<i64>, usize), String> {
    match postcard::from_bytes::<OutboxPage>(bytes).map_err(|error| error.to_string())? {
        OutboxPage::V1 { entries } => Ok((None, entries.len())),
        OutboxPage::V2 { committed_ms, entries } => Ok((Some(committed_ms), entries.len())),
        OutboxPage::Lz4V2 { committed_ms, n_entries, .. } => {
            Ok((Some(committed_ms), usize::try_from(n_entries).unwrap_or(usize::MAX)))
        }
    }
}

/// The borrowed twin of [`OutboxEntryV1`], for encoding without copying payloads; its
/// serialized layout is identical (checked by a test).
#[derive(Serialize)]
pub(crate) struct OutboxEntryV1Ref<'a> {
    pub(crate) kind: &'a str,
    pub(crate) group: &'a str,
    #[serde(serialize_with = "byte_vec::serialize")]
    pub(crate) payload: &'a [u8],
}

/// One outbox entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutboxEntryV1 {
    pub(crate) kind: String,
    pub(crate) group: String,
    #[serde(with = "byte_vec")]
    pub(crate) payload: Vec<u8>,
}

/// A page of engine state entries (those whose key hashes to this page), sorted by key. The
/// owned form, kept for the tests that write each variant; eddy reads and writes pages through
/// [`StatePageRef`], which has the same bytes.
#[cfg(test)]
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) enum StatePage {
    #[default]
    Empty,
    V1 {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The postcard bytes of `V1`'s `entries`, LZ4-compressed ([`compress`]).
    Lz4V1 {
        compressed: Vec<u8>,
    },
}

/// A byte string stored the way postcard stores a `Vec<u8>` (its length, then the bytes),
/// written and read in one copy instead of byte by byte through serde's sequence path (which
/// took most of a commit's CPU at 10,000 sensors), and borrowed when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(Bytes)
    }
}

/// One engine state entry of a page, borrowed: key and value.
pub(crate) type StateEntryRef<'a> = (Bytes<'a>, Bytes<'a>);

/// [`StatePage`] borrowed: the same variants, the same bytes.
#[derive(Debug, Serialize, Deserialize)]
enum StatePageRef<'a> {
    Empty,
    V1 {
        #[serde(borrow)]
        entries: Vec<StateEntryRef<'a>>,
    },
    Lz4V1 {
        #[serde(borrow)]
        compressed: Bytes<'a>,
    },
}

/// Engine state entries, sorted by key.
#[cfg(test)]
pub(crate) type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes a page of engine state entries, sorted by key (as `Lz4V1`).
pub(crate) fn encode_state_page(entries: &[StateEntryRef<'_>]) -> Result<Vec<u8>, postcard::Error> {
    let plain = postcard::to_allocvec(entries)?;
    let compressed = compress(&plain);
    postcard::to_allocvec(&StatePageRef::Lz4V1 { compressed: Bytes(&compressed) })
}

/// Decodes a state page of any version and hands its entries, borrowed, to `read`.
pub(crate) fn read_state_page<R>(
    bytes: &[u8],
    read: impl FnOnce(&[StateEntryRef<'_>]) -> R,
) -> Result<R, String> {
    match postcard::from_bytes::<StatePageRef<'_>>(bytes).map_err(|error| error.to_string())? {
        StatePageRef::Empty => Ok(read(&[])),
        StatePageRef::V1 { entries } => Ok(read(&entries)),
        StatePageRef::Lz4V1 { compressed } => {
            let plain = decompress(compressed.0)?;
            let entries: Vec<StateEntryRef<'_>> =
                postcard::from_bytes(&plain).map_err(|error| error.to_string())?;
            Ok(read(&entries))
        }
    }
}

/// Decodes a state page of any version into owned entries.
#[cfg(test)]
pub(crate) fn decode_state_page(bytes: &[u8]) -> Result<StateEntries, String> {
    read_state_page(bytes, |entries| {
        entries.iter().map(|(key, value)| (key.0.to_vec(), value.0.to_vec())).collect()
    })
}

/// One change of a state delta: an entry's key and its new value, or `None` for a delete.
pub(crate) type StateChangeRef<'a> = (Bytes<'a>, Option<Bytes<'a>>);

/// The changes one commit made to one state page (main tree `d` + page + delta number), kept
/// beside the page until a later commit folds them into it: a commit that changes a few
/// sensors of a page writes those, not the page. Sorted by key, one change per key.
#[derive(Debug, Serialize, Deserialize)]
enum StateDeltaRef<'a> {
    /// The postcard bytes of the changes (`Vec<StateChangeRef>`), LZ4-compressed ([`compress`]).
    Lz4V1 {
        #[serde(borrow)]
        compressed: Bytes<'a>,
    },
}

/// Encodes a state delta: changes sorted by key, one per key (as `Lz4V1`).
pub(crate) fn encode_state_delta(changes: &[StateChangeRef<'_>]) -> Result<Vec<u8>, postcard::Error> {
    let plain = postcard::to_allocvec(changes)?;
    let compressed = compress(&plain);
    postcard::to_allocvec(&StateDeltaRef::Lz4V1 { compressed: Bytes(&compressed) })
}

/// Decodes a state delta of any version and hands its changes, borrowed, to `read`.
pub(crate) fn read_state_delta<R>(
    bytes: &[u8],
    read: impl FnOnce(&[StateChangeRef<'_>]) -> R,
) -> Result<R, String> {
    match postcard::from_bytes::<StateDeltaRef<'_>>(bytes).map_err(|error| error.to_string())? {
        StateDeltaRef::Lz4V1 { compressed } => {
            let plain = decompress(compressed.0)?;
            let changes: Vec<StateChangeRef<'_>> =
                postcard::from_bytes(&plain).map_err(|error| error.to_string())?;
            Ok(read(&changes))
        }
    }
}

/// The largest page a stored size may announce: a torn or foreign size must not make a
/// decoder allocate gigabytes.
const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

/// LZ4 block format with the uncompressed size in front (4 bytes, little-endian).
pub(crate) fn compress(bytes: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(bytes)
}

/// The inverse of [`compress`], refusing sizes over [`MAX_DECOMPRESSED_BYTES`].
pub(crate) fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let size = bytes
        .get(..4)
        .map(|size| u32::from_le_bytes([size[0], size[1], size[2], size[3]]))
        .ok_or_else(|| "compressed page shorter than its size".to_owned())?;
    if usize::try_from(size).map_or(true, |size| size > MAX_DECOMPRESSED_BYTES) {
        return Err(format!("compressed page announces {size} bytes"));
    }
    lz4_flex::block::decompress_size_prepended(bytes).map_err(|error| error.to_string())
}

/// A page of committed source marks (main tree `k` + the marks' key without its last byte):
/// each entry is a mark's last key byte and its value, sorted. Paged so that a commit after
/// thousands of MQTT messages writes at most 256 small pages per source, not a key each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MarkPage {
    V1(Vec<(u8, u64)>),
}

/// Encodes a page of marks (as `V1`).
pub(crate) fn encode_mark_page(entries: &[(u8, u64)]) -> Result<Vec<u8>, postcard::Error> {
    #[derive(Serialize)]
    enum MarkPageRef<'a> {
        V1(&'a [(u8, u64)]),
    }
    postcard::to_allocvec(&MarkPageRef::V1(entries))
}

/// Decodes a page of marks of any version.
pub(crate) fn decode_mark_page(bytes: &[u8]) -> Result<Vec<(u8, u64)>, String> {
    match postcard::from_bytes::<MarkPage>(bytes).map_err(|error| error.to_string())? {
        MarkPage::V1(entries) => Ok(entries),
    }
}

/// A record a sink rejected permanently, kept for the operator (tree `dead`, key: a counter).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DeadLetter {
    V1 { sink: String, seq: u64, kind: String, reason: String, rejected_ms: i64, payload: Vec<u8> },
}

/// Where the engine state's pages stand, written with each commit (see
/// `Store::load_engine_meta`): which pages hold micro-batch entries, and until when nothing
/// but the micro-batch can close, release or forget anything. It lets a restart load the pages
/// of the sensors that readings name first and the others in the background.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StateIndexEnvelope {
    V1(StateIndexV1),
}

/// [`StateIndexEnvelope::V1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateIndexV1 {
    /// The log position, next seq and processing clock of the commit that wrote it: an index
    /// whose commit is not the last one (a build without the index committed after it) is
    /// ignored.
    pub(crate) log_pos: u64,
    pub(crate) next_seq: u64,
    pub(crate) clock_ms: u64,
    /// Pages that may hold micro-batch entries: one bit per state page, page `p` in byte
    /// `p / 8`, bit `p % 8`.
    pub(crate) batch_pages: Vec<u8>,
    /// A lower bound of the processing time at which the engine may close, release or forget
    /// anything of the state beyond the micro-batch (`i64::MAX`: nothing pending).
    pub(crate) due_ms: i64,
}

/// Encodes a state index.
pub(crate) fn encode_state_index(index: &StateIndexV1) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&StateIndexEnvelope::V1(index.clone()))
}

/// Decodes a state index of any version.
pub(crate) fn decode_state_index(bytes: &[u8]) -> Result<StateIndexV1, String> {
    match postcard::from_bytes::<StateIndexEnvelope>(bytes).map_err(|error| error.to_string())? {
        StateIndexEnvelope::V1(index) => Ok(index),
    }
}
