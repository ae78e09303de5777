//! One `[[sources]]` or `[[sinks]]` entry: the keys every kind shares, then the keys of its
//! `kind` through a `#[serde(tag = "kind")]` enum of the components' own raw structs, with
//! every error naming its full key (`sources[1].rate`, not just `sources[1]`).
//!
//! serde reports an error inside an internally tagged enum at the entry (`sources[1]`), since
//! the entry is buffered before its kind is known. So the entry is buffered here instead, and
//! an error names the key below the entry between two [`SUBKEY_MARK`]s in its message, which
//! [`join_key`] (called by the loader with the entry's path) joins back into one key.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use toml::map::Map;
use toml::Value;

/// Set around the key below an entry at the start of an error message.
const SUBKEY_MARK: char = '\u{1f}';

/// The keys every entry of a list has whatever its kind (`name`, for sinks also `records`
/// and the delivery keys): a struct that deserializes from them alone.
pub trait SharedKeys: DeserializeOwned {
    /// The names of the keys.
    const KEYS: &'static [&'static str];
}

/// One entry as written: its shared keys, and its kind with the keys of that kind.
#[derive(Debug)]
pub struct RawEntry<S, K> {
    /// The keys every kind has.
    pub shared: S,
    /// The value of `kind`, as written (for the default name `kind-N`).
    pub kind_name: String,
    /// The kind and its own keys (`K` is a `#[serde(tag = "kind")]` enum).
    pub kind: K,
}

impl<'de, S: SharedKeys, K: DeserializeOwned> Deserialize<'de> for RawEntry<S, K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawEntry<S, K>, D::Error> {
        let entry = Map::<String, Value>::deserialize(deserializer)?;
        let (shared, own): (Map<String, Value>, Map<String, Value>) =
            entry.into_iter().partition(|(name, _)| S::KEYS.contains(&name.as_str()));
        let shared = serde_path_to_error::deserialize::<_, S>(Value::Table(shared)).map_err(|error| {
            let subkey = error.path().to_string();
            D::Error::custom(mark(&subkey, &message_of(&error.into_inner())))
        })?;
        let kind_name = match own.get("kind") {
            Some(Value::String(kind_name)) => kind_name.clone(),
            _ => String::new(),
        };
        let kind = K::deserialize(Value::Table(own.clone()))
            .map_err(|error| D::Error::custom(kind_error::<S, K>(&kind_name, &own, &message_of(&error))))?;
        Ok(RawEntry { shared, kind_name, kind })
    }
}

/// Joins the key an entry's error names (if any) to the entry's `path`: (`sources[1]`,
/// "␟rate␟does not apply ...") gives (`sources[1].rate`, "does not apply ...").
pub(crate) fn join_key(path: String, message: String) -> (String, String) {
    let Some(start) = message.find(SUBKEY_MARK) else { return (path, message) };
    let after = &message[start + SUBKEY_MARK.len_utf8()..];
    let Some(end) = after.find(SUBKEY_MARK) else { return (path, message) };
    let subkey = &after[..end];
    let rest = format!("{}{}", &message[..start], &after[end + SUBKEY_MARK.len_utf8()..]);
    let key = if subkey.starts_with('[') { format!("{path}{subkey}") } else { format!("{path}.{subkey}") };
    (key, rest)
}

/// The message of a `toml` error, without the key context (`in `records``) it adds on a
/// second line (the key is named in full by the caller) and without a quoted value.
fn message_of(error: &toml::de::Error) -> String {
    crate::config::shown::without_values(error.to_string().lines().next().unwrap_or_default())
}

fn mark(subkey: &str, message: &str) -> String {
    if subkey.is_empty() || subkey == "." {
        message.to_owned()
    } else {
        format!("{SUBKEY_MARK}{subkey}{SUBKEY_MARK}{message}")
    }
}

/// Names the key behind an error of the kind's own keys.
fn kind_error<S: SharedKeys, K: DeserializeOwned>(
    kind_name: &str,
    own: &Map<String, Value>,
    message: &str,
) -> String {
    if let Some(field) = quoted_after(message, "unknown field ") {
        let mut keys: Vec<String> = S::KEYS.iter().map(|key| format!("`{key}`")).collect();
        keys.extend(expected(message).into_iter().map(|key| format!("`{key}`")));
        return mark(
            &field,
            &format!("does not apply to kind = \"{kind_name}\" (its keys: {})", keys.join(", ")),
        );
    }
    if let Some(variant) = quoted_after(message, "unknown variant ") {
        return mark("kind", &format!("`{variant}` is not one of: {}", expected(message).join(", ")));
    }
    if kind_name.is_empty() {
        return mark("kind", &format!("must be given, as a string ({message})"));
    }
    // A value of the wrong type: serde does not say whose, so try each key alone (every key
    // of a kind is optional, so only the wrong one fails).
    for (name, value) in own.iter().filter(|(name, _)| name.as_str() != "kind") {
        let alone: Map<String, Value> =
            [("kind".to_owned(), Value::String(kind_name.to_owned())), (name.clone(), value.clone())]
                .into_iter()
                .collect();
        if let Err(error) = K::deserialize(Value::Table(alone)) {
            return mark(name, &message_of(&error));
        }
    }
    message.to_owned()
}

/// `x` from "`prefix``x`` ...".
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(quoted, _)| quoted.to_owned())
}

/// The names serde lists after "expected" ("expected one of `a`, `b`", "expected `a`"; none
/// for "there are no fields").
fn expected(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once(", expected ") else { return Vec::new() };
    list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_key_joins_the_entry_path() {
        let message = mark("rate", "does not apply");
        assert_eq!(
            join_key("sources[1]".to_owned(), message),
            ("sources[1].rate".to_owned(), "does not apply".to_owned())
        );
        let message = mark("records[0]", "bad");
        assert_eq!(
            join_key("sinks[0]".to_owned(), message),
            ("sinks[0].records[0]".to_owned(), "bad".to_owned())
        );
        assert_eq!(
            join_key("batch".to_owned(), "plain".to_owned()),
            ("batch".to_owned(), "plain".to_owned())
        );
    }

    #[test]
    fn serde_lists_are_read_back() {
        assert_eq!(expected("unknown variant `x`, expected one of `tcp`, `mqtt`"), ["tcp", "mqtt"]);
        assert_eq!(expected("unknown field `x`, expected `path`"), ["path"]);
        assert!(expected("unknown field `x`, there are no fields").is_empty());
        assert_eq!(quoted_after("unknown field `rate`, expected", "unknown field ").as_deref(), Some("rate"));
    }
}
