//! The JSON lines format: one object per line, read in a single pass without a DOM.
//!
//! `{"sensor":"t-017","ts":1700000000123,"temp_c":21.37,"humidity":44.1,"mode":"heat"}`
//!
//! - `sensor`: a non-empty string of at most 64 bytes.
//! - `ts`: integer milliseconds since the Unix epoch, or an RFC 3339 string; a float (even
//!   `1.7e12`) is refused because it usually means seconds or a lossy conversion upstream.
//! - the schema's fields: any JSON number; null means absent.
//! - the schema's tags: strings; null means absent.
//! - every other key is skipped without being decoded.
//!
//! The line is deserialised with a [`Visitor`] that matches each key against the schema and
//! keeps the last value seen for it; nothing is checked until the whole object has been read,
//! so a duplicate key replaces an earlier bad value, and a syntax error anywhere in the line
//! wins over a bad value. Strings without escapes are borrowed from the line.
//!
//! serde_json refuses `NaN`, `Infinity` and numbers too large for an f64 (`1e999`) while
//! parsing, so those are `bad_syntax` here; the finiteness check in
//! [`LineParser::check_field`] remains as a guard.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::parse::{i64_to_f64, u64_to_f64, LineParser, Parsed};
use crate::reading::{Tags, Values};
use crate::reject::{RejectReason, Rejection};
use crate::schema::Schema;

/// Parses one JSON line (already checked for length, UTF-8 and blankness).
/// With `sensor_override`, the id comes from the transport and a `sensor` key is ignored.
pub(crate) fn parse_json<'a>(
    parser: &LineParser,
    line: &'a str,
    sensor_override: Option<&'a str>,
    now_ms: i64,
) -> Result<Parsed<'a>, Rejection> {
    parse_json_with(parser, line, sensor_override, now_ms, true)
}

/// [`parse_json`], trying [`scan_flat`] first if `fast` (tests compare both ways).
pub(crate) fn parse_json_with<'a>(
    parser: &LineParser,
    line: &'a str,
    sensor_override: Option<&'a str>,
    now_ms: i64,
    fast: bool,
) -> Result<Parsed<'a>, Rejection> {
    // Filled in place: the slots are ~500 bytes, and each move of them was a copy.
    let mut collected = Collected::new(&parser.schema);
    if !(fast && scan_flat(line, &parser.schema, &mut collected)) {
        collected = collect_with_serde(parser, line)?;
    }

    let sensor = match (sensor_override, collected.sensor) {
        (Some(sensor), _) => {
            LineParser::check_sensor(sensor)?;
            Cow::Borrowed(sensor)
        }
        (None, None | Some(Value::Null)) => {
            return Err(Rejection::new(RejectReason::MissingSensor, "sensor: missing or null"));
        }
        (None, Some(Value::Str(sensor))) => {
            LineParser::check_sensor(&sensor)?;
            sensor
        }
        (None, Some(other)) => {
            return Err(Rejection::new(
                RejectReason::BadSensor,
                format!("sensor: expected a string, got {}", other.kind()),
            ));
        }
    };

    let ts_ms = match collected.ts {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectReason::MissingTs, "ts: missing or null"))
        }
        Some(Value::UInt(ts)) => i64::try_from(ts)
            .map_err(|_| Rejection::new(RejectReason::BadTs, format!("ts: {ts} is outside 0..2^53")))?,
        Some(Value::NegInt(ts)) => ts,
        Some(Value::Str(text)) => rfc3339_to_ms(&text)?,
        Some(_) => return Err(bad_ts_type()),
    };
    let ts_ms = parser.check_ts(ts_ms, now_ms)?;

    let mut values = Values::with_capacity(collected.fields.len());
    for (field_idx, slot) in collected.fields.iter().copied().enumerate() {
        let number = match slot {
            FieldSlot::Absent => None,
            FieldSlot::Number(number) => Some(number),
            FieldSlot::Wrong(kind) => {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("{}: expected a number, got {kind}", parser.schema.fields[field_idx].name),
                ));
            }
        };
        values.push(parser.check_field(field_idx, number)?);
    }

    let mut tags = Tags::with_capacity(collected.tags.len());
    for (tag_idx, slot) in collected.tags.iter().enumerate() {
        let text = match slot {
            None | Some(Value::Null) => None,
            Some(Value::Str(text)) => Some(&**text),
            Some(other) => {
                return Err(Rejection::new(
                    RejectReason::WrongType,
                    format!("{}: expected a string, got {}", parser.schema.tags[tag_idx].name, other.kind()),
                ));
            }
        };
        tags.push(parser.check_tag(tag_idx, text)?);
    }

    Ok(Parsed { sensor, ts_ms, values, tags })
}

/// Reads the line with serde_json into the values of the keys the schema names.
fn collect_with_serde<'a>(parser: &LineParser, line: &'a str) -> Result<Collected<'a>, Rejection> {
    let mut deserializer = serde_json::Deserializer::from_str(line);
    let shape = LineVisitor { schema: &parser.schema }
        .deserialize(&mut deserializer)
        .and_then(|shape| deserializer.end().map(|()| shape))
        .map_err(|err| Rejection::new(RejectReason::BadSyntax, err.to_string()))?;
    match shape {
        Shape::Object(collected) => Ok(collected),
        Shape::Other(kind) => {
            Err(Rejection::new(RejectReason::NotObject, format!("expected a JSON object, got {kind}")))
        }
    }
}

/// Most significant digits of a number [`scan_flat`] reads: up to 15 digits and no exponent,
/// the value is exact as an integer below 2^53 divided by a power of ten up to 10^15, so both
/// Rust's parser and serde_json's round it the same (correctly).
const FLAT_NUMBER_DIGITS: usize = 15;

/// The common line read by hand into `collected` (a fresh one), a third faster than through
/// serde_json's visitor:
/// a flat object of keys without escapes, whose values are strings without escapes or control
/// characters, `null`, booleans, and numbers of at most [`FLAT_NUMBER_DIGITS`] digits without
/// exponent (nor `-0`), with JSON whitespace between tokens. Anything else — nested values, an
/// escape, an exponent, a long number, any syntax error — gives `None`, and the line goes
/// through serde_json (`false`; `collected` is then partly filled and must be replaced), so
/// every line accepted here would be read the same by serde_json
/// (`json_fast_path_reads_what_serde_json_reads`) and every error is serde_json's.
fn scan_flat<'de>(line: &'de str, schema: &Schema, collected: &mut Collected<'de>) -> bool {
    scan_flat_into(line, schema, collected).is_some()
}

/// [`scan_flat`], `None` where it gives `false`.
fn scan_flat_into<'de>(line: &'de str, schema: &Schema, collected: &mut Collected<'de>) -> Option<()> {
    let bytes = line.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    if bytes.get(pos) != Some(&b'{') {
        return None;
    }
    pos = skip_ws(bytes, pos + 1);
    // Senders write a schema's fields in its order: the field after the last one found is
    // tried first.
    let mut next_field = 0;
    if bytes.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        loop {
            let (key, next) = scan_plain_str(line, pos)?;
            pos = skip_ws(bytes, next);
            if bytes.get(pos) != Some(&b':') {
                return None;
            }
            let (value, next) = scan_flat_value(line, skip_ws(bytes, pos + 1))?;
            match resolve_key(schema, key, next_field) {
                Key::Sensor => collected.sensor = Some(value),
                Key::Ts => collected.ts = Some(value),
                Key::Field(field_idx) => {
                    collected.fields[field_idx] = value.into_field_slot();
                    next_field = field_idx + 1;
                }
                Key::Tag(tag_idx) => collected.tags[tag_idx] = Some(value),
                Key::Unknown => {}
            }
            pos = skip_ws(bytes, next);
            match bytes.get(pos) {
                Some(b',') => pos = skip_ws(bytes, pos + 1),
                Some(b'}') => {
                    pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(bytes, pos) == bytes.len()).then_some(())
}

/// Whether [`scan_flat`] reads `line` (tests: that the common lines take the fast path).
#[cfg(test)]
pub(crate) fn scans_flat(line: &str, schema: &Schema) -> bool {
    scan_flat(line, schema, &mut Collected::new(schema))
}

/// The position of the first byte at or after `pos` that is not JSON whitespace.
fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// A string at `pos` without escapes or control characters, borrowed, and the position after
/// its closing quote.
fn scan_plain_str(line: &str, pos: usize) -> Option<(&str, usize)> {
    let bytes = line.as_bytes();
    if bytes.get(pos) != Some(&b'"') {
        return None;
    }
    let start = pos + 1;
    let end = start + string_stop(bytes.get(start..)?)?;
    // Quotes are ASCII, so both ends are character boundaries of the (valid UTF-8) line.
    (bytes[end] == b'"').then(|| (&line[start..end], end + 1))
}

/// The index of the first byte of `bytes` that ends a plain string: `"`, `\\` or a control
/// character (below 0x20). Eight bytes at a time (a word's lowest flagged byte is exact: the
/// borrows of the tests below only reach bytes above the first match), then byte by byte.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        let flagged = zero_bytes(word ^ u64::from_ne_bytes([b'"'; 8]))
            | zero_bytes(word ^ u64::from_ne_bytes([b'\\'; 8]))
            | (word.wrapping_sub(u64::from_ne_bytes([0x20; 8])) & !word & HIGHS);
        if flagged != 0 {
            return Some(offset + (flagged.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|byte| matches!(byte, b'"' | b'\\' | 0..=0x1f)).map(|idx| offset + idx)
}

/// A value [`scan_flat`] reads, and the position after it.
fn scan_flat_value(line: &str, pos: usize) -> Option<(Value<'_>, usize)> {
    let bytes = line.as_bytes();
    let literal = |word: &[u8], value: Value<'static>| {
        bytes.get(pos..pos + word.len()).filter(|found| *found == word).map(|_| (value, pos + word.len()))
    };
    match bytes.get(pos)? {
        b'"' => scan_plain_str(line, pos).map(|(text, next)| (Value::Str(Cow::Borrowed(text)), next)),
        b'n' => literal(b"null", Value::Null),
        b't' => literal(b"true", Value::Bool),
        b'f' => literal(b"false", Value::Bool),
        b'-' | b'0'..=b'9' => scan_flat_number(line, pos),
        _ => None,
    }
}

/// A number in JSON's grammar without exponent, of at most [`FLAT_NUMBER_DIGITS`] digits.
fn scan_flat_number(line: &str, start: usize) -> Option<(Value<'_>, usize)> {
    let bytes = line.as_bytes();
    // The digits from `pos` on, read into `significand` as they are counted (wrapping: a
    // number of more than FLAT_NUMBER_DIGITS digits is left to serde_json below).
    let digits_from = |mut pos: usize, significand: &mut u64| {
        let from = pos;
        while let Some(digit @ b'0'..=b'9') = bytes.get(pos) {
            *significand = significand.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'));
            pos += 1;
        }
        pos - from
    };
    let negative = bytes[start] == b'-';
    let int_start = start + usize::from(negative);
    let mut significand = 0u64;
    let int_digits = digits_from(int_start, &mut significand);
    // JSON: at least one digit, and no leading zero before another digit.
    if int_digits == 0 || (int_digits > 1 && bytes[int_start] == b'0') {
        return None;
    }
    let mut pos = int_start + int_digits;
    let mut frac_digits = 0;
    if bytes.get(pos) == Some(&b'.') {
        frac_digits = digits_from(pos + 1, &mut significand);
        if frac_digits == 0 {
            return None;
        }
        pos += 1 + frac_digits;
    }
    // At most 15 digits: the significand is exact in a u64 and below 2^53, and so is the power
    // of ten it is divided by, so the quotient is the correctly rounded value (what
    // `str::parse` and serde_json give), in one division.
    if matches!(bytes.get(pos), Some(b'e' | b'E')) || int_digits + frac_digits > FLAT_NUMBER_DIGITS {
        return None;
    }
    let value = if frac_digits > 0 {
        let magnitude = u64_to_f64(significand) / POW10[frac_digits];
        Value::Float(if negative { -magnitude } else { magnitude })
    } else if negative {
        // serde_json reads `-0` as a float; leave it to serde_json.
        if significand == 0 {
            return None;
        }
        Value::NegInt(-i64::try_from(significand).ok()?)
    } else {
        Value::UInt(significand)
    };
    Some((value, pos))
}

/// 10^0 to 10^15, each exact in an f64.
const POW10: [f64; FLAT_NUMBER_DIGITS + 1] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/// The rejection for a `ts` of a JSON type that cannot be a timestamp.
fn bad_ts_type() -> Rejection {
    Rejection::new(RejectReason::BadTs, "ts: expected integer milliseconds or an RFC 3339 string")
}

/// Converts an RFC 3339 time to ms since the epoch, rounding down so that a time just before
/// the epoch stays negative (and is refused by the range check).
fn rfc3339_to_ms(text: &str) -> Result<i64, Rejection> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad_ts_type())?;
    let ms = time.unix_timestamp_nanos().div_euclid(1_000_000);
    // Years up to 9999 fit easily in i64 ms; saturate rather than fail if they ever did not.
    Ok(i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX }))
}

/// What the top-level JSON value turned out to be.
// `Object` holds the line's slots inline (~450 bytes): it lives on the stack for one line and
// is moved once; boxing it would be the per-line allocation the inline slots remove.
#[allow(clippy::large_enum_variant)]
enum Shape<'de> {
    /// An object, with the values of the keys the schema names.
    Object(Collected<'de>),
    /// Anything else, named for the rejection detail.
    Other(&'static str),
}

/// The last value seen for each key the parser cares about; `None` means the key was absent.
struct Collected<'de> {
    sensor: Option<Value<'de>>,
    ts: Option<Value<'de>>,
    /// One slot per schema field.
    fields: Slots<FieldSlot>,
    /// One slot per schema tag.
    tags: Slots<Option<Value<'de>>>,
}

impl Collected<'_> {
    /// No key seen yet, one slot per field and tag of `schema`.
    // Inlined, with the inline slots written from constants: built in the caller's frame
    // instead of filled one by one on the stack and copied (~600 bytes a line).
    #[inline(always)]
    fn new(schema: &Schema) -> Self {
        Collected {
            sensor: None,
            ts: None,
            fields: Slots::new(schema.fields.len(), [FieldSlot::Absent; INLINE_SLOTS], || FieldSlot::Absent),
            tags: Slots::new(schema.tags.len(), [const { None }; INLINE_SLOTS], || None),
        }
    }
}

/// Schemas with at most this many fields (and tags) collect a line's values on the stack;
/// larger ones allocate. Two allocations fewer per line for every usual schema.
const INLINE_SLOTS: usize = 8;

/// A fixed number of slots, inline when there are at most [`INLINE_SLOTS`].
enum Slots<T> {
    Inline { slots: [T; INLINE_SLOTS], len: usize },
    Heap(Vec<T>),
}

impl<T> Slots<T> {
    /// `len` slots: `inline` if they fit, else each `fill()`ed on the heap.
    #[inline(always)]
    fn new(len: usize, inline: [T; INLINE_SLOTS], fill: impl FnMut() -> T) -> Slots<T> {
        if len <= INLINE_SLOTS {
            Slots::Inline { slots: inline, len }
        } else {
            Slots::Heap(std::iter::repeat_with(fill).take(len).collect())
        }
    }
}

impl<T> std::ops::Deref for Slots<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Slots::Inline { slots, len } => &slots[..*len],
            Slots::Heap(slots) => slots,
        }
    }
}

impl<T> std::ops::DerefMut for Slots<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Slots::Inline { slots, len } => &mut slots[..*len],
            Slots::Heap(slots) => slots,
        }
    }
}

/// The value of a schema field, reduced to what the checks need as soon as it is read.
#[derive(Clone, Copy)]
enum FieldSlot {
    /// Absent or null.
    Absent,
    /// Any JSON number, as f64.
    Number(f64),
    /// Not a number; names the JSON type.
    Wrong(&'static str),
}

/// One JSON value as the checks need to see it. Strings are borrowed from the line unless
/// they contain escapes; arrays and objects are skipped and only their kind is kept.
enum Value<'de> {
    Null,
    Bool,
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    NegInt(i64),
    /// A number with a fraction or exponent, or an integer too large for u64.
    Float(f64),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Value<'_> {
    /// The JSON type, for rejection details.
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool => "a boolean",
            Value::UInt(_) | Value::NegInt(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Array => "an array",
            Value::Object => "an object",
        }
    }

    /// The value as a field slot.
    fn into_field_slot(self) -> FieldSlot {
        match self {
            Value::Null => FieldSlot::Absent,
            Value::UInt(number) => FieldSlot::Number(u64_to_f64(number)),
            Value::NegInt(number) => FieldSlot::Number(i64_to_f64(number)),
            Value::Float(number) => FieldSlot::Number(number),
            other => FieldSlot::Wrong(other.kind()),
        }
    }
}

/// Which of the parser's keys a JSON key is.
enum Key {
    Sensor,
    Ts,
    Field(usize),
    Tag(usize),
    /// A key the schema does not name: its value is skipped.
    Unknown,
}

/// Reads the top-level value; does the per-key work for an object.
struct LineVisitor<'a> {
    schema: &'a Schema,
}

/// Reads a key and resolves it against the schema without allocating, even when escaped.
struct KeySeed<'a> {
    schema: &'a Schema,
}

/// Reads any value into a [`Value`].
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for LineVisitor<'_> {
    type Value = Shape<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Shape<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Shape<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        let mut collected = Collected::new(self.schema);
        while let Some(key) = map.next_key_seed(KeySeed { schema: self.schema })? {
            match key {
                Key::Sensor => collected.sensor = Some(map.next_value_seed(ValueSeed)?),
                Key::Ts => collected.ts = Some(map.next_value_seed(ValueSeed)?),
                Key::Field(field_idx) => {
                    collected.fields[field_idx] = map.next_value_seed(ValueSeed)?.into_field_slot();
                }
                Key::Tag(tag_idx) => collected.tags[tag_idx] = Some(map.next_value_seed(ValueSeed)?),
                Key::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Shape::Object(collected))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape<'de>, A::Error> {
        // Read to the end so that a truncated array is a syntax error, not `not_object`.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other("an array"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("a string"))
    }

    fn visit_unit<E>(self) -> Result<Shape<'de>, E> {
        Ok(Shape::Other("null"))
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(resolve_key(self.schema, key, usize::MAX))
    }
}

/// Which of the parser's keys `key` (unescaped) is; `likely_field` is the field tried first
/// (lines name the fields in the schema's order; `usize::MAX`: none).
fn resolve_key(schema: &Schema, key: &str, likely_field: usize) -> Key {
    match key {
        "sensor" => Key::Sensor,
        "ts" => Key::Ts,
        _ => match schema.fields.get(likely_field) {
            Some(field) if field.name == key => Key::Field(likely_field),
            _ => match schema.field_index(key) {
                Some(field_idx) => Key::Field(field_idx),
                None => schema.tag_index(key).map_or(Key::Unknown, Key::Tag),
            },
        },
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool)
    }

    fn visit_u64<E>(self, number: u64) -> Result<Value<'de>, E> {
        Ok(Value::UInt(number))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Value<'de>, E> {
        // serde_json reports non-negative integers through `visit_u64`, but stay correct for
        // any deserializer.
        Ok(match u64::try_from(number) {
            Ok(number) => Value::UInt(number),
            Err(_) => Value::NegInt(number),
        })
    }

    fn visit_f64<E>(self, number: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float(number))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object)
    }
}

#[cfg(test)]
mod string_stop_tests {
    use proptest::prelude::*;

    use super::string_stop;

    fn bytewise(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|byte| matches!(byte, b'"' | b'\\' | 0..=0x1f))
    }

    #[test]
    fn every_stop_byte_is_found_at_every_position_behind_any_filler() {
        for len in 0..26 {
            for at in 0..len {
                for stop in (0u8..0x20).chain([b'"', b'\\']) {
                    // Fillers next to each stop in value: the borrows of the word tests.
                    for filler in [b' ', b'!', b'#', b'[', b']', b'a', 0x7f, 0x80, 0xa2, 0xdc, 0xff] {
                        let mut bytes = vec![filler; len];
                        bytes[at] = stop;
                        // A second stop after the first must not hide it.
                        if at + 1 < len {
                            bytes[len - 1] = b'"';
                        }
                        assert_eq!(string_stop(&bytes), Some(at), "{bytes:?}");
                    }
                }
            }
            assert_eq!(string_stop(&vec![b'x'; len]), None);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]
        #[test]
        fn string_stop_finds_what_a_byte_by_byte_scan_finds(
            bytes in proptest::collection::vec(
                prop_oneof![
                    8 => 0x20u8..0x7f,
                    2 => 0x80u8..=0xff,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                ],
                0..48,
            )
        ) {
            prop_assert_eq!(string_stop(&bytes), bytewise(&bytes));
        }
    }
}
