//! Builds the eddy configuration files the end-to-end tests and benches write, so that each
//! states only what it needs: the sources, windows and sinks it uses and the keys it tunes.
//!
//! This is plain TOML text, not the daemon's configuration types (the tests crate does not
//! depend on the daemon), so a test can still write any key, including one eddy would refuse.
//! Paths may use the harness's `{dir}` placeholder, replaced by [`crate::Eddy`] with the run's
//! directory. A test of an invalid or unusual file writes its text literally instead.
//!
//! ```
//! use eddy_tests::config::ConfigToml;
//!
//! let toml = ConfigToml::new("gw-doc")
//!     .table("ingest")
//!     .key("flush_interval", "5ms")
//!     .tcp_source("in")
//!     .key("ack", true)
//!     .window("w1s", "1s")
//!     .key("fields", ["temp_c"])
//!     .file_sink("results", "{dir}/results.jsonl")
//!     .to_toml();
//! assert!(toml.starts_with("device_id = \"gw-doc\"\ndata_dir = \"{dir}/data\"\n[ingest]\n"));
//! ```

use std::fmt::Write as _;

/// A TOML value as a test writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A basic string, quoted and escaped on output.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An array of values.
    Array(Vec<Value>),
    /// TOML written as given, such as an inline table `{ name = "temp_c", min = 0.0 }`.
    Raw(String),
}

/// An eddy configuration file under construction.
///
/// [`ConfigToml::key`] sets a key in the table opened last (`[ingest]`, the last
/// `[[sources]]`…), or at the top level before any table; setting a key again replaces its
/// value in place. Top-level keys are always written first, then `[table]`s, then the
/// `[[array]]` entries, each group in call order.
#[derive(Debug, Clone)]
pub struct ConfigToml {
    root: Vec<(String, Value)>,
    tables: Vec<Table>,
    /// Index into `tables` that [`ConfigToml::key`] writes to; `None`: the top level.
    current: Option<usize>,
}

/// One `[table]` or `[[array]]` entry and its keys, in the order written.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    is_array: bool,
    keys: Vec<(String, Value)>,
}

/// TOML text written as given (an inline table, an array of them).
pub fn raw(text: impl Into<String>) -> Value {
    Value::Raw(text.into())
}

/// The throughput benches' eddy (benches/ingest_tcp.rs, benches/mqtt_windows.rs) without its
/// source, which the bench adds: 10 ms group commits, room for 100,000 sensors, 1 s
/// checkpoints, a sliding 10 s and a tumbling 5 s window, 2 s micro-batches, and the results
/// in a file sink `results`.
pub fn throughput_bench() -> ConfigToml {
    throughput_bench_windows(2)
}

/// The windows of [`throughput_bench_windows`], in order: (name, length, slide).
const BENCH_WINDOWS: [(&str, &str, Option<&str>); 8] = [
    ("temp_10s", "10s", Some("5s")),
    ("temp_5s", "5s", None),
    ("temp_30s", "30s", Some("10s")),
    ("temp_1m", "1m", None),
    ("temp_1m_20s", "1m", Some("20s")),
    ("temp_15s", "15s", None),
    ("temp_2m", "2m", Some("1m")),
    ("temp_20s", "20s", None),
];

/// [`throughput_bench`] with the first `n` (1 to 8) of a fixed list of windows, sliding and
/// tumbling in turn, 5 s to 2 min, each over every field with lateness 5 s: how the cost grows
/// with the number of windows (`n = 2` is the two-window configuration).
pub fn throughput_bench_windows(n: usize) -> ConfigToml {
    assert!((1..=BENCH_WINDOWS.len()).contains(&n), "1 to {} windows, not {n}", BENCH_WINDOWS.len());
    let mut config = ConfigToml::new("gw-bench")
        .table("ingest")
        .key("flush_interval", "10ms")
        .key("max_sensors", 100_000)
        .table("engine")
        .key("checkpoint_interval", "1s")
        .table("batch")
        .key("interval", "2s");
    for (name, length, slide) in &BENCH_WINDOWS[..n] {
        config = config.window(name, length);
        if let Some(slide) = slide {
            config = config.key("slide", *slide);
        }
        config = config.key("lateness", "5s");
    }
    config.file_sink("results", "{dir}/results.jsonl")
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::Str(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Str(text)
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Value {
        Value::Str(text.clone())
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Value {
        Value::Bool(flag)
    }
}

impl From<f64> for Value {
    fn from(number: f64) -> Value {
        Value::Float(number)
    }
}

macro_rules! integer_values {
    ($($int:ty),*) => {$(
        impl From<$int> for Value {
            fn from(number: $int) -> Value {
                Value::Int(i64::try_from(number).expect("a TOML integer fits in i64"))
            }
        }
    )*};
}
integer_values!(i32, i64, u16, u32, u64, usize);

impl<T: Into<Value>, const N: usize> From<[T; N]> for Value {
    fn from(items: [T; N]) -> Value {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Value {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl Value {
    fn write_to(&self, out: &mut String) {
        match self {
            Value::Str(text) => {
                out.push('"');
                for c in text.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        _ => out.push(c),
                    }
                }
                out.push('"');
            }
            Value::Int(number) => {
                let _ = write!(out, "{number}");
            }
            // `{:?}` keeps the decimal point TOML needs for a float (`100.0`, not `100`).
            Value::Float(number) => {
                let _ = write!(out, "{number:?}");
            }
            Value::Bool(flag) => {
                let _ = write!(out, "{flag}");
            }
            Value::Array(items) => {
                out.push('[');
                for (item_idx, item) in items.iter().enumerate() {
                    if item_idx > 0 {
                        out.push_str(", ");
                    }
                    item.write_to(out);
                }
                out.push(']');
            }
            Value::Raw(text) => out.push_str(text),
        }
    }
}

impl ConfigToml {
    /// `device_id = DEVICE_ID` and `data_dir = "{dir}/data"`.
    pub fn new(device_id: &str) -> ConfigToml {
        ConfigToml { root: Vec::new(), tables: Vec::new(), current: None }
            .root("device_id", device_id)
            .root("data_dir", "{dir}/data")
    }

    /// Sets a top-level key (`shutdown_timeout`, `data_dir`), whichever table is open.
    pub fn root(mut self, key: &str, value: impl Into<Value>) -> ConfigToml {
        set(&mut self.root, key, value.into());
        self
    }

    /// Sets `key` in the table opened last (the top level if none was).
    pub fn key(mut self, key: &str, value: impl Into<Value>) -> ConfigToml {
        match self.current {
            Some(table_idx) => set(&mut self.tables[table_idx].keys, key, value.into()),
            None => set(&mut self.root, key, value.into()),
        }
        self
    }

    /// Opens the table `[name]` (`ingest`, `engine`, `batch`, `storage`, `api`, `log`…), or
    /// reopens it if it is there already, so that later keys go into it.
    pub fn table(mut self, name: &str) -> ConfigToml {
        let existing = self.tables.iter().position(|table| !table.is_array && table.name == name);
        self.current = Some(existing.unwrap_or_else(|| {
            self.tables.push(Table { name: name.to_owned(), is_array: false, keys: Vec::new() });
            self.tables.len() - 1
        }));
        self
    }

    /// Opens a new `[[name]]` entry (`sources`, `windows`, `sinks`).
    pub fn array_entry(mut self, name: &str) -> ConfigToml {
        self.tables.push(Table { name: name.to_owned(), is_array: true, keys: Vec::new() });
        self.current = Some(self.tables.len() - 1);
        self
    }

    /// `[schema] fields = [...]`, each field an inline table such as
    /// `{ name = "temp_c", required = true, min = -50.0, max = 100.0 }`, one per line.
    pub fn schema_fields(self, fields: &[&str]) -> ConfigToml {
        let list: String = fields.iter().map(|field| format!("\n  {field},")).collect();
        self.table("schema").key("fields", raw(format!("[{list}\n]")))
    }

    /// A new `[[sources]]` entry of `kind` named `name`.
    pub fn source(self, kind: &str, name: &str) -> ConfigToml {
        self.array_entry("sources").key("kind", kind).key("name", name)
    }

    /// A TCP source named `name` on a free loopback port (`127.0.0.1:0`; see
    /// [`crate::Eddy::tcp_address`]).
    pub fn tcp_source(self, name: &str) -> ConfigToml {
        self.source("tcp", name).key("listen", "127.0.0.1:0")
    }

    /// An MQTT source named `name` on the broker at `url`.
    pub fn mqtt_source(self, name: &str, url: &str) -> ConfigToml {
        self.source("mqtt", name).key("url", url)
    }

    /// A serial source named `name` on the device at `path`.
    pub fn serial_source(self, name: &str, path: &str) -> ConfigToml {
        self.source("serial", name).key("path", path)
    }

    /// A new `[[windows]]` entry named `name`, `length` long (`"10s"`).
    pub fn window(self, name: &str, length: &str) -> ConfigToml {
        self.array_entry("windows").key("name", name).key("length", length)
    }

    /// A new `[[sinks]]` entry of `kind`, without a name (eddy names it after the kind).
    pub fn sink(self, kind: &str) -> ConfigToml {
        self.array_entry("sinks").key("kind", kind)
    }

    /// A file sink named `name` writing JSON lines to `path`.
    pub fn file_sink(self, name: &str, path: &str) -> ConfigToml {
        self.sink("file").key("name", name).key("path", path)
    }

    /// An HTTP sink named `name` posting to `url`.
    pub fn http_sink(self, name: &str, url: &str) -> ConfigToml {
        self.sink("http").key("name", name).key("url", url)
    }

    /// An MQTT sink named `name` publishing to the broker at `url`.
    pub fn mqtt_sink(self, name: &str, url: &str) -> ConfigToml {
        self.sink("mqtt").key("name", name).key("url", url)
    }

    /// A Kafka sink named `name` producing to the brokers `brokers` (`host:port`).
    pub fn kafka_sink(self, name: &str, brokers: &str) -> ConfigToml {
        self.sink("kafka").key("name", name).key("brokers", [brokers])
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        write_keys(&mut out, &self.root);
        // `[table]`s before `[[array]]` entries: a table opened after a sink (a test adding
        // `[storage]` to a shared pipeline) then cannot be read as part of that sink.
        let (arrays, tables): (Vec<&Table>, Vec<&Table>) =
            self.tables.iter().partition(|table| table.is_array);
        for table in tables.into_iter().chain(arrays) {
            let (open, close) = if table.is_array { ("[[", "]]") } else { ("[", "]") };
            let _ = writeln!(out, "{open}{}{close}", table.name);
            write_keys(&mut out, &table.keys);
        }
        out
    }
}

fn set(keys: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match keys.iter_mut().find(|(existing, _)| existing == key) {
        Some((_, old)) => *old = value,
        None => keys.push((key.to_owned(), value)),
    }
}

fn write_keys(out: &mut String, keys: &[(String, Value)]) {
    for (key, value) in keys {
        // Bare keys (and dotted ones, such as `header.authorization`) as they are; others quoted.
        if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            out.push_str(key);
        } else {
            Value::Str(key.clone()).write_to(out);
        }
        out.push_str(" = ");
        value.write_to(out);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_top_level_keys_before_tables_whatever_the_call_order() {
        let toml = ConfigToml::new("gw")
            .table("ingest")
            .key("flush_interval", "5ms")
            .root("shutdown_timeout", "20s");
        assert_eq!(
            toml.to_toml(),
            "device_id = \"gw\"\ndata_dir = \"{dir}/data\"\nshutdown_timeout = \"20s\"\n\
             [ingest]\nflush_interval = \"5ms\"\n"
        );
    }

    #[test]
    fn reopening_a_table_or_setting_a_key_again_keeps_one_of_each() {
        let toml = ConfigToml::new("gw")
            .table("engine")
            .key("checkpoint_interval", "100ms")
            .tcp_source("in")
            .table("engine")
            .key("forward_raw", true)
            .key("checkpoint_interval", "1s")
            .to_toml();
        assert_eq!(
            toml,
            "device_id = \"gw\"\ndata_dir = \"{dir}/data\"\n[engine]\ncheckpoint_interval = \"1s\"\n\
             forward_raw = true\n[[sources]]\nkind = \"tcp\"\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n"
        );
    }

    #[test]
    fn a_table_opened_after_a_sink_is_written_before_every_array_entry() {
        let toml = ConfigToml::new("gw")
            .file_sink("oracle", "{dir}/oracle.jsonl")
            .table("storage")
            .key("max_bytes", 65536)
            .http_sink("hub", "http://127.0.0.1:1/")
            .to_toml();
        assert_eq!(
            toml,
            "device_id = \"gw\"\ndata_dir = \"{dir}/data\"\n[storage]\nmax_bytes = 65536\n\
             [[sinks]]\nkind = \"file\"\nname = \"oracle\"\npath = \"{dir}/oracle.jsonl\"\n\
             [[sinks]]\nkind = \"http\"\nname = \"hub\"\nurl = \"http://127.0.0.1:1/\"\n"
        );
    }

    #[test]
    fn writes_arrays_floats_and_raw_values_as_toml() {
        let toml = ConfigToml::new("gw")
            .window("w", "1s")
            .key("fields", ["temp_c", "humidity"])
            .key("slide", "500ms")
            .schema_fields(&["{ name = \"temp_c\", min = -50.0 }"])
            .key("max_line_bytes", 256_u32)
            .to_toml();
        assert!(toml
            .contains("[[windows]]\nname = \"w\"\nlength = \"1s\"\nfields = [\"temp_c\", \"humidity\"]\n"));
        assert!(toml.contains(
            "[schema]\nfields = [\n  { name = \"temp_c\", min = -50.0 },\n]\nmax_line_bytes = 256\n"
        ));
        assert_eq!(Value::from(-50.0), Value::Float(-50.0));
        let mut out = String::new();
        Value::from(100.0).write_to(&mut out);
        assert_eq!(out, "100.0");
    }
}
