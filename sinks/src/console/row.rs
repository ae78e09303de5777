//! Parses one payload into an ordered row of display cells, keeping the object's key order.
//!
//! `serde_json::Value` sorts object keys unless serde_json's `preserve_order` feature is on, and
//! features unify across the workspace, so turning it on here would change map order for every
//! crate. These small visitors keep document order instead, nested objects included.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One top-level value of a payload object, as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A negative integer (serde_json reports non-negative integers as `UInt`).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// A string, unquoted.
    Text(String),
    /// A nested object or array as compact JSON, keys in document order.
    Nested(String),
}

impl Cell {
    /// Whether the cell is a number, which the table right-aligns.
    pub(crate) fn is_number(&self) -> bool {
        matches!(self, Cell::Int(_) | Cell::UInt(_) | Cell::Float(_))
    }
}

/// A payload object's entries in document order. A repeated key keeps its first position and
/// its last value, as serde_json does.
pub(crate) type Row = Vec<(String, Cell)>;

/// Parses `payload` as one JSON object; `None` if it is not one (invalid JSON, an array, a
/// number, trailing bytes, nesting deeper than serde_json's recursion limit).
pub(crate) fn parse_row(payload: &[u8]) -> Option<Row> {
    serde_json::from_slice::<OrderedObject>(payload).ok().map(|object| object.0)
}

/// Deserialises a JSON object into a [`Row`].
struct OrderedObject(Row);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OrderedObjectVisitor)
    }
}

struct OrderedObjectVisitor;

impl<'de> Visitor<'de> for OrderedObjectVisitor {
    type Value = OrderedObject;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
        let mut row = Row::new();
        while let Some(key) = map.next_key::<String>()? {
            let cell = map.next_value::<Cell>()?;
            match row.iter_mut().find(|(seen, _)| *seen == key) {
                Some((_, existing)) => *existing = cell,
                None => row.push((key, cell)),
            }
        }
        Ok(OrderedObject(row))
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Cell, E> {
        Ok(Cell::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Cell, E> {
        Ok(Cell::Int(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Cell, E> {
        Ok(Cell::UInt(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Cell, E> {
        Ok(Cell::Float(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Cell, E> {
        Ok(Cell::Text(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Cell, E> {
        Ok(Cell::Text(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
        CompactVisitor.visit_seq(seq).map(|compact| Cell::Nested(compact.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
        CompactVisitor.visit_map(map).map(|compact| Cell::Nested(compact.0))
    }
}

/// Any JSON value re-encoded as compact JSON text, object keys in document order.
struct Compact(String);

impl<'de> Deserialize<'de> for Compact {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CompactVisitor)
    }
}

struct CompactVisitor;

impl<'de> Visitor<'de> for CompactVisitor {
    type Value = Compact;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Compact, E> {
        Ok(Compact("null".to_owned()))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Compact, E> {
        Ok(Compact(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Compact, E> {
        Ok(Compact(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Compact, E> {
        Ok(Compact(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Compact, E> {
        // JSON has no NaN or infinity, so a parsed f64 always converts; `null` is what
        // serde_json itself writes for a non-finite float.
        let text = serde_json::Number::from_f64(value).map_or_else(|| "null".to_owned(), |n| n.to_string());
        Ok(Compact(text))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Compact, E> {
        serde_json::to_string(value).map(Compact).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Compact, A::Error> {
        let mut text = String::from("[");
        while let Some(element) = seq.next_element::<Compact>()? {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&element.0);
        }
        text.push(']');
        Ok(Compact(text))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Compact, A::Error> {
        let mut text = String::from("{");
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Compact>()?;
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(&key).map_err(de::Error::custom)?);
            text.push(':');
            text.push_str(&value.0);
        }
        text.push('}');
        Ok(Compact(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(payload: &str, expected: Option<Row>) {
        assert_eq!(parse_row(payload.as_bytes()), expected, "payload {payload:?}");
    }

    fn text(value: &str) -> Cell {
        Cell::Text(value.to_owned())
    }

    #[test]
    fn row_keeps_keys_in_document_order() {
        check(
            r#"{"z":1,"a":-2,"m":1.5,"b":"x","n":null,"t":true}"#,
            Some(vec![
                ("z".into(), Cell::UInt(1)),
                ("a".into(), Cell::Int(-2)),
                ("m".into(), Cell::Float(1.5)),
                ("b".into(), text("x")),
                ("n".into(), Cell::Null),
                ("t".into(), Cell::Bool(true)),
            ]),
        );
    }

    #[test]
    fn nested_values_become_compact_json_in_document_order() {
        check(
            r#"{ "counts" : { "on": 3, "off" : 1, "a\"b": [1, 2.5, "s", null, {}] }, "e": [] }"#,
            Some(vec![
                ("counts".into(), Cell::Nested(r#"{"on":3,"off":1,"a\"b":[1,2.5,"s",null,{}]}"#.into())),
                ("e".into(), Cell::Nested("[]".into())),
            ]),
        );
    }

    #[test]
    fn repeated_key_keeps_first_position_and_last_value() {
        check(r#"{"a":1,"b":2,"a":3}"#, Some(vec![("a".into(), Cell::UInt(3)), ("b".into(), Cell::UInt(2))]));
    }

    #[test]
    fn payloads_that_are_not_one_object_are_not_rows() {
        check("[1,2]", None);
        check("42", None);
        check(r#""text""#, None);
        check("{", None);
        check(r#"{"a":1} {"b":2}"#, None);
        check("", None);
        check(&format!("{}1{}", r#"{"a":["#.repeat(200), "]}".repeat(200)), None);
        assert_eq!(parse_row(&[b'{', 0xff, b'}']), None);
    }
}
