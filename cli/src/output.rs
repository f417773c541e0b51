//! Rendering answers as the user asked: a psql-like table, a JSON array of
//! objects (times in RFC 3339), or CSV. Every command builds JSON objects;
//! tables and CSV are laid out from the same objects, so the three formats
//! never disagree.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde_json::{Map, Value};

use crate::time::local_display;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, like psql.
    Table,
    /// A JSON array of objects.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// One row: a JSON object whose key order is the column order.
pub type Row = Map<String, Value>;

/// Renders `rows` in `format`. `columns` picks and orders the table and
/// CSV columns (JSON always carries every field).
pub fn render(rows: &[Row], columns: &[&str], format: Format) -> String {
    match format {
        Format::Json => {
            let array = Value::Array(rows.iter().cloned().map(Value::Object).collect());
            serde_json::to_string_pretty(&array).expect("JSON values serialize") + "\n"
        }
        Format::Csv => csv(rows, columns),
        Format::Table => table(rows, columns),
    }
}

fn cell(value: Option<&Value>, for_table: bool) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => {
            if for_table {
                local_display(s).unwrap_or_else(|| shorten(&s.replace(['\n', '\r', '\t'], " ")))
            } else {
                s.clone()
            }
        }
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| cell(Some(v), for_table))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v), for_table)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Cells longer than this are cut in tables (JSON and CSV keep all).
const MAX_CELL_CHARS: usize = 100;

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_CELL_CHARS {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX_CELL_CHARS - 1).collect();
    cut + "…"
}

fn table(rows: &[Row], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r.get(*c), true)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, values: &[String]| {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!(" {v:<w$} "))
            .collect();
        let _ = writeln!(out, "{}", parts.join("|").trim_end());
    };
    line(
        &mut out,
        &columns.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    );
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    let _ = writeln!(out, "{}", rule.join("+"));
    for r in &cells {
        line(&mut out, r);
    }
    let n = rows.len();
    let _ = writeln!(out, "({n} {})", if n == 1 { "row" } else { "rows" });
    out
}

fn csv(rows: &[Row], columns: &[&str]) -> String {
    let mut out = String::new();
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let _ = writeln!(
        out,
        "{}",
        columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(",")
    );
    for r in rows {
        let values: Vec<String> = columns
            .iter()
            .map(|c| quote(&cell(r.get(*c), false)))
            .collect();
        let _ = writeln!(out, "{}", values.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<Row> {
        let v = json!([
            {"host": "db-1", "total": 3, "by_state": {"active": 1, "idle": 2}, "note": null},
            {"host": "db-2", "total": 12, "by_state": {}, "note": "a, \"b\""}
        ]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn tables_look_like_psql() {
        let out = render(&rows(), &["host", "total", "by_state"], Format::Table);
        let expected = " host | total | by_state\n\
                        ------+-------+-----------------\n \
                        db-1 | 3     | active=1 idle=2\n \
                        db-2 | 12    |\n\
                        (2 rows)\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let out = render(&rows(), &["host", "note"], Format::Csv);
        assert_eq!(out, "host,note\ndb-1,\ndb-2,\"a, \"\"b\"\"\"\n");
    }

    #[test]
    fn json_keeps_every_field() {
        let out = render(&rows(), &["host"], Format::Json);
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back[0]["by_state"]["idle"], 2);
        assert!(back[0]["note"].is_null());
    }
}
