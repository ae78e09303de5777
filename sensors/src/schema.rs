//! The reading schema: which numeric fields and string tags a reading has, and their bounds.

use std::sync::Arc;

/// A numeric field of the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// Name of the key in the input (`temp_c`).
    pub name: String,
    /// A reading without this field is rejected.
    pub required: bool,
    /// Smallest plausible value (inclusive).
    pub min: f64,
    /// Largest plausible value (inclusive).
    pub max: f64,
}

/// A string tag of the schema (`mode`).
#[derive(Debug, Clone, PartialEq)]
pub struct TagSpec {
    /// Name of the key in the input.
    pub name: String,
    /// A reading without this tag is rejected.
    pub required: bool,
    /// The allowed values; empty means any string of at most 64 bytes.
    pub values: Vec<String>,
}

/// What a reading may contain. Cheap to share: sources hold an `Arc<Schema>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Numeric fields, in the order of `Reading::values`.
    pub fields: Vec<FieldSpec>,
    /// String tags, in the order of `Reading::tags`.
    pub tags: Vec<TagSpec>,
}

impl Schema {
    /// The thermostat schema: `temp_c` (required, −60..=125), `humidity` (0..=100),
    /// `setpoint_c` (optional, −60..=125), tag `mode` (heat, cool, off, auto).
    pub fn thermostat() -> Schema {
        Schema {
            fields: vec![
                FieldSpec { name: "temp_c".into(), required: true, min: -60.0, max: 125.0 },
                FieldSpec { name: "humidity".into(), required: false, min: 0.0, max: 100.0 },
                FieldSpec { name: "setpoint_c".into(), required: false, min: -60.0, max: 125.0 },
            ],
            tags: vec![TagSpec {
                name: "mode".into(),
                required: false,
                values: ["heat", "cool", "off", "auto"].map(String::from).to_vec(),
            }],
        }
    }

    /// Index of the field called `name`.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|field| field.name == name)
    }

    /// Index of the tag called `name`.
    pub fn tag_index(&self, name: &str) -> Option<usize> {
        self.tags.iter().position(|tag| tag.name == name)
    }
}

/// Shared `Arc<str>` copies of every allowed tag value, built once per schema.
#[derive(Debug, Clone, Default)]
pub struct InternedTags {
    per_tag: Vec<Vec<Arc<str>>>,
}

impl InternedTags {
    /// Interns the allowed values of every tag of `schema`.
    pub fn new(schema: &Schema) -> InternedTags {
        InternedTags {
            per_tag: schema
                .tags
                .iter()
                .map(|tag| tag.values.iter().map(|value| Arc::from(value.as_str())).collect())
                .collect(),
        }
    }

    /// The interned copy of `value` for tag `tag_idx`; for a tag with no list of allowed
    /// values, a fresh `Arc<str>`; `None` when the value is not allowed.
    pub fn lookup(&self, tag_idx: usize, value: &str) -> Option<Arc<str>> {
        let allowed = self.per_tag.get(tag_idx)?;
        if allowed.is_empty() {
            return Some(Arc::from(value));
        }
        allowed.iter().find(|candidate| &***candidate == value).cloned()
    }
}
