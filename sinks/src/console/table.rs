//! Renders records as text: a heading block per group and Spark `show()`-style tables.
//!
//! The output of one group looks like this (Spark's console sink, plus a line for the values
//! shared by every row):
//!
//! ```text
//! -------------------------------------------
//! Batch: 850000123 [2023-11-14 22:13:20.000 UTC, +2s)
//! -------------------------------------------
//! type=batch device=gw-1 batch=850000123
//! +------+------+-----+-----+
//! |sensor|field |count| mean|
//! +------+------+-----+-----+
//! |t-000 |temp_c|   25|22.38|
//! |t-001 |temp_c|   24| 22.5|
//! +------+------+-----+-----+
//!
//! ```
//!
//! Columns are the object keys in order of first appearance. A key whose value is the same in
//! every row of a table (there being at least two rows) leaves the table for the shared-values
//! line, which keeps the table to what differs without hiding anything: in a batch the
//! heading's `type`, `device` and `batch` are shared, but so is a `count` of 50 when every
//! sensor reports at the same rate. `sensor` and `field` always stay in the table.

use std::fmt::Write as _;

use crate::console::row::{parse_row, Cell, Row};

/// The rule above and below a group's heading, as wide as Spark's.
const HEADING_RULE: &str = "-------------------------------------------";

/// Keys that identify a row and so always stay in the table.
const ROW_KEYS: [&str; 2] = ["sensor", "field"];

/// Keys never shown: a record's `id` is for machines (de-duplication at the hub) and would be
/// the widest column of every table; the file and hub sinks carry it.
const HIDDEN_KEYS: [&str; 1] = ["id"];

/// Spark's narrowest column.
const MIN_COLUMN_WIDTH: usize = 3;

/// Appends one group: the heading block, then its payloads in order, runs of objects as tables
/// and anything else as a raw line, then a blank line.
pub(crate) fn render_group<'a>(text: &mut String, group: &str, payloads: impl Iterator<Item = &'a [u8]>) {
    text.push_str(HEADING_RULE);
    text.push('\n');
    push_escaped(text, group);
    text.push('\n');
    text.push_str(HEADING_RULE);
    text.push('\n');

    let mut rows: Vec<Row> = Vec::new();
    for payload in payloads {
        match parse_row(payload) {
            Some(row) => rows.push(row),
            None => {
                render_table(text, &rows);
                rows.clear();
                push_escaped(text, &String::from_utf8_lossy(payload));
                text.push('\n');
            }
        }
    }
    render_table(text, &rows);
    text.push('\n');
}

/// Appends the shared-values line and the table of `rows`; nothing for no rows.
fn render_table(text: &mut String, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let mut keys = keys_in_order(rows);
    keys.retain(|key| !HIDDEN_KEYS.contains(key));
    let (shared, mut columns): (Vec<&str>, Vec<&str>) =
        keys.iter().partition(|key| rows.len() >= 2 && !ROW_KEYS.contains(key) && is_shared(rows, key));
    if columns.is_empty() {
        // Identical rows: a table without columns would hide how many there are.
        columns = keys;
    } else if !shared.is_empty() {
        let line: Vec<String> =
            shared.iter().map(|key| format!("{key}={}", cell_text(cell_of(&rows[0], key)))).collect();
        push_escaped(text, &line.join(" "));
        text.push('\n');
    }

    let table: Vec<Column> = columns.iter().map(|key| Column::new(key, rows)).collect();
    let border = border_line(&table);
    text.push_str(&border);
    text.push('|');
    for column in &table {
        push_padded(text, &column.header, column.width, column.numeric);
        text.push('|');
    }
    text.push('\n');
    text.push_str(&border);
    for row_idx in 0..rows.len() {
        text.push('|');
        for column in &table {
            let right = column.numeric || column.cells[row_idx].1;
            push_padded(text, &column.cells[row_idx].0, column.width, right);
            text.push('|');
        }
        text.push('\n');
    }
    text.push_str(&border);
}

/// One table column, its cells rendered.
struct Column {
    header: String,
    /// Each row's text and whether it is a number.
    cells: Vec<(String, bool)>,
    width: usize,
    /// Every present value is a number or null, and at least one is a number: header and
    /// nulls are right-aligned with the numbers.
    numeric: bool,
}

impl Column {
    fn new(key: &str, rows: &[Row]) -> Self {
        let values: Vec<Option<&Cell>> = rows.iter().map(|row| cell_of(row, key)).collect();
        let numeric = values.iter().flatten().any(|cell| cell.is_number())
            && values.iter().flatten().all(|cell| cell.is_number() || **cell == Cell::Null);
        let cells: Vec<(String, bool)> = values
            .iter()
            .map(|cell| {
                (
                    cell.map_or_else(String::new, |cell| escaped(&cell_text(Some(cell)))),
                    cell.is_some_and(Cell::is_number),
                )
            })
            .collect();
        let header = escaped(key);
        let width = cells
            .iter()
            .map(|(cell, _)| cell.chars().count())
            .chain([header.chars().count(), MIN_COLUMN_WIDTH])
            .max()
            .unwrap_or(MIN_COLUMN_WIDTH);
        Column { header, cells, width, numeric }
    }
}

/// The keys of `rows` in order of first appearance.
fn keys_in_order(rows: &[Row]) -> Vec<&str> {
    let mut keys: Vec<&str> = Vec::new();
    for (key, _) in rows.iter().flatten() {
        if !keys.contains(&key.as_str()) {
            keys.push(key);
        }
    }
    keys
}

/// Whether every row has `key` with the same value.
fn is_shared(rows: &[Row], key: &str) -> bool {
    let first = cell_of(&rows[0], key);
    first.is_some() && rows.iter().all(|row| cell_of(row, key) == first)
}

fn cell_of<'r>(row: &'r Row, key: &str) -> Option<&'r Cell> {
    row.iter().find(|(seen, _)| seen == key).map(|(_, cell)| cell)
}

/// A cell's text; an absent key shows as an empty cell, unlike an explicit `null`.
fn cell_text(cell: Option<&Cell>) -> String {
    match cell {
        None => String::new(),
        Some(Cell::Null) => "null".to_owned(),
        Some(Cell::Bool(value)) => value.to_string(),
        Some(Cell::Int(value)) => value.to_string(),
        Some(Cell::UInt(value)) => value.to_string(),
        Some(Cell::Float(value)) => float_text(*value),
        Some(Cell::Text(value) | Cell::Nested(value)) => value.clone(),
    }
}

/// At most four decimals, trailing zeros trimmed but one kept so a float still looks like one
/// (`21.5`, `3.0`); huge magnitudes in exponent form rather than dozens of digits.
pub(crate) fn float_text(value: f64) -> String {
    if value.abs() >= 1e16 {
        return format!("{value:e}");
    }
    let mut text = format!("{value:.4}");
    while text.ends_with('0') && !text.ends_with(".0") {
        text.pop();
    }
    if text == "-0.0" {
        // A tiny negative value rounds to zero; a sign on zero only confuses.
        text.remove(0);
    }
    text
}

fn border_line(table: &[Column]) -> String {
    let mut line = String::from("+");
    for column in table {
        line.push_str(&"-".repeat(column.width));
        line.push('+');
    }
    line.push('\n');
    line
}

fn push_padded(text: &mut String, cell: &str, width: usize, right: bool) {
    let padding = width.saturating_sub(cell.chars().count());
    if right {
        text.push_str(&" ".repeat(padding));
        text.push_str(cell);
    } else {
        text.push_str(cell);
        text.push_str(&" ".repeat(padding));
    }
}

/// `value` with control characters escaped (`\n`, `\u{1b}`), so a payload can neither break
/// the table's lines nor send escape sequences to the operator's terminal.
fn escaped(value: &str) -> String {
    let mut text = String::with_capacity(value.len());
    push_escaped(&mut text, value);
    text
}

fn push_escaped(text: &mut String, value: &str) {
    for character in value.chars() {
        if character.is_control() {
            // Writing to a String cannot fail.
            let _ = write!(text, "{}", character.escape_default());
        } else {
            text.push(character);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(group: &str, payloads: &[&str], expected: &str) {
        let mut text = String::new();
        render_group(&mut text, group, payloads.iter().map(|payload| payload.as_bytes()));
        assert_eq!(text, expected, "\n--- got ---\n{text}--- expected ---\n{expected}");
    }

    #[test]
    fn float_text_keeps_at_most_four_decimals() {
        for (value, expected) in [
            (21.5, "21.5"),
            (3.0, "3.0"),
            (22.382800000000003, "22.3828"),
            (22.38286, "22.3829"),
            (0.00004, "0.0"),
            (-0.00004, "0.0"),
            (-1.25, "-1.25"),
            (1e20, "1e20"),
        ] {
            assert_eq!(float_text(value), expected, "{value}");
        }
    }

    #[test]
    fn batch_group_shows_shared_values_once_and_a_row_per_record() {
        check(
            "Batch: 850000123 [2023-11-14 22:13:20.000 UTC, +2s)",
            &[
                r#"{"type":"batch","device":"gw-1","batch":850000123,"sensor":"t-000","field":"temp_c","count":25,"mean":22.382800000000003,"min":22.15}"#,
                r#"{"type":"batch","device":"gw-1","batch":850000123,"sensor":"t-001","field":"temp_c","count":24,"mean":22.5,"min":-3}"#,
            ],
            "\
-------------------------------------------
Batch: 850000123 [2023-11-14 22:13:20.000 UTC, +2s)
-------------------------------------------
type=batch device=gw-1 batch=850000123
+------+------+-----+-------+-----+
|sensor|field |count|   mean|  min|
+------+------+-----+-------+-----+
|t-000 |temp_c|   25|22.3828|22.15|
|t-001 |temp_c|   24|   22.5|   -3|
+------+------+-----+-------+-----+

",
        );
    }

    #[test]
    fn window_group_shows_nested_values_nulls_and_missing_keys() {
        check(
            "Window: temp_10s [2023-11-14 22:13:20.000 UTC, 2023-11-14 22:13:30.000 UTC)",
            &[
                r#"{"type":"window","window":{"start":1700000000000,"end":1700000010000},"sensor":"t-000","field":"temp_c","count":50,"max":22.65,"counts":{"heat":3,"cool":1}}"#,
                r#"{"type":"window","window":{"start":1700000000000,"end":1700000010000},"sensor":"t-001","field":"temp_c","count":50,"max":null,"late":true}"#,
            ],
            r#"-------------------------------------------
Window: temp_10s [2023-11-14 22:13:20.000 UTC, 2023-11-14 22:13:30.000 UTC)
-------------------------------------------
type=window window={"start":1700000000000,"end":1700000010000} count=50
+------+------+-----+-------------------+----+
|sensor|field |  max|counts             |late|
+------+------+-----+-------------------+----+
|t-000 |temp_c|22.65|{"heat":3,"cool":1}|    |
|t-001 |temp_c| null|                   |true|
+------+------+-----+-------------------+----+

"#,
        );
    }

    #[test]
    fn single_row_keeps_every_key_in_the_table() {
        check(
            "g",
            &[r#"{"type":"late","sensor":"t-9","ts":1700000000123,"temp_c":21}"#],
            "\
-------------------------------------------
g
-------------------------------------------
+----+------+-------------+------+
|type|sensor|           ts|temp_c|
+----+------+-------------+------+
|late|t-9   |1700000000123|    21|
+----+------+-------------+------+

",
        );
    }

    #[test]
    fn identical_rows_stay_in_the_table() {
        check(
            "g",
            &[r#"{"a":1}"#, r#"{"a":1}"#],
            "\
-------------------------------------------
g
-------------------------------------------
+---+
|  a|
+---+
|  1|
|  1|
+---+

",
        );
    }

    #[test]
    fn non_object_payloads_print_raw_between_tables() {
        check(
            "raw\nstuff",
            &[r#"{"a":"x"}"#, "[1,2]", "not json \u{1b}[31m", r#"{"a":"y\tz"}"#],
            r#"-------------------------------------------
raw\nstuff
-------------------------------------------
+---+
|a  |
+---+
|x  |
+---+
[1,2]
not json \u{1b}[31m
+----+
|a   |
+----+
|y\tz|
+----+

"#,
        );
    }

    #[test]
    fn invalid_utf8_payload_prints_with_replacement_characters() {
        let mut text = String::new();
        render_group(&mut text, "g", [&b"ab\xffcd"[..]].into_iter());
        assert!(text.contains("ab\u{fffd}cd\n"), "{text}");
    }

    #[test]
    fn the_id_key_is_not_shown() {
        let mut text = String::new();
        render_group(
            &mut text,
            "Batch: 1",
            [
                br#"{"sensor":"a","count":1,"id":"gw/batch/a/temp_c/0"}"#.as_slice(),
                br#"{"sensor":"b","count":2,"id":"gw/batch/b/temp_c/0"}"#.as_slice(),
            ]
            .into_iter(),
        );
        assert!(!text.contains("id"), "{text}");
        assert!(text.contains("|a     |    1|"), "{text}");
    }
}
