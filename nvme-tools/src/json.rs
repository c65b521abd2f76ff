//! The one JSON writer of the tools: a small value type printed pretty (`nvmectl -o json`,
//! nvme-cli's layout) or compact (`nvme-perf --json`), without a runtime dependency.
//!
//! Strings are escaped as RFC 8259 requires and no further: `"`, `\` and the control
//! characters U+0000..U+001F. DEL (U+007F) and everything above it are written as they are.

use std::fmt::Write;

/// A JSON value. Objects keep their keys in insertion order (as nvme-cli prints them).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// An unsigned integer (128 bits: the SMART counters are 128-bit).
    Uint(u128),
    /// A signed integer (temperatures in Celsius).
    Int(i64),
    /// A number printed with a fixed count of decimals; `null` if not finite.
    Fixed(f64, usize),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An empty object, to fill with [`Json::push`].
    pub fn object() -> Json {
        Json::Obj(Vec::new())
    }

    /// `v` printed with `decimals` digits after the point (`null` if not finite).
    pub fn fixed(v: f64, decimals: usize) -> Json {
        Json::Fixed(v, decimals)
    }

    /// Adds `key: value` to an object (does nothing to other values).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<Json>) -> &mut Json {
        if let Json::Obj(members) = self {
            members.push((key.into(), value.into()));
        }
        self
    }

    /// The value printed with two-space indentation, one member per line, `"key" : value`.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, Some(0));
        out
    }

    /// The value printed on one line without any blanks.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, None);
        out
    }

    /// Appends the value to `out`; `indent` is `None` for the compact form.
    fn write(&self, out: &mut String, indent: Option<usize>) {
        match self {
            Json::Uint(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Fixed(v, decimals) => write_fixed(out, *v, *decimals),
            Json::Str(s) => write_string(out, s),
            Json::Arr(items) => write_list(out, indent, '[', ']', items, |out, item, ind| {
                item.write(out, ind)
            }),
            Json::Obj(members) => write_list(out, indent, '{', '}', members, |out, (k, v), ind| {
                write_string(out, k);
                out.push_str(if ind.is_some() { " : " } else { ":" });
                v.write(out, ind)
            }),
        }
    }
}

/// Writes `open`, the items (one per line indented, or comma-separated on one line when
/// `indent` is `None`), then `close`.
fn write_list<T>(
    out: &mut String,
    indent: Option<usize>,
    open: char,
    close: char,
    items: &[T],
    mut item: impl FnMut(&mut String, &T, Option<usize>),
) {
    out.push(open);
    let Some(indent) = indent else {
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            item(out, it, None);
        }
        out.push(close);
        return;
    };
    if items.is_empty() {
        out.push(close);
        return;
    }
    for (i, it) in items.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str(&"  ".repeat(indent + 1));
        item(out, it, Some(indent + 1));
    }
    out.push('\n');
    out.push_str(&"  ".repeat(indent));
    out.push(close);
}

/// Appends `s` as a JSON string literal: `"`, `\` and U+0000..U+001F escaped (the short
/// forms `\n`, `\r`, `\t` where they exist), everything else as it is.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal (see [`write_string`]).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_string(&mut out, s);
    out
}

fn write_fixed(out: &mut String, v: f64, decimals: usize) {
    if v.is_finite() {
        let _ = write!(out, "{v:.decimals$}");
    } else {
        out.push_str("null");
    }
}

impl From<u128> for Json {
    fn from(v: u128) -> Json {
        Json::Uint(v)
    }
}

macro_rules! from_unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for Json {
            fn from(v: $t) -> Json {
                Json::Uint(v as u128)
            }
        }
    )*};
}
from_unsigned!(u8, u16, u32, u64, usize);

impl From<i64> for Json {
    fn from(v: i64) -> Json {
        Json::Int(v)
    }
}

impl From<&str> for Json {
    fn from(v: &str) -> Json {
        Json::Str(v.to_string())
    }
}

impl From<String> for Json {
    fn from(v: String) -> Json {
        Json::Str(v)
    }
}

impl From<Vec<Json>> for Json {
    fn from(v: Vec<Json>) -> Json {
        Json::Arr(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nests() {
        let mut o = Json::object();
        o.push("sn", "a\"b\\c\n\u{1}")
            .push("big", u128::MAX)
            .push("t", -3i64)
            .push("list", vec![Json::from(1u8), Json::object()])
            .push("empty", Vec::<Json>::new());
        let text = o.pretty();
        assert!(text.contains(r#""sn" : "a\"b\\c\n\u0001""#), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["sn"], "a\"b\\c\n\u{1}");
        assert_eq!(v["t"], -3);
        assert_eq!(v["list"][0], 1);
        assert!(v["empty"].as_array().unwrap().is_empty());
    }

    #[test]
    fn strings_escape_what_rfc_8259_requires_and_nothing_else() {
        assert_eq!(string("SIM (sim) NSID 1"), "\"SIM (sim) NSID 1\"");
        assert_eq!(string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(string("\r\t"), "\"\\r\\t\"");
        assert_eq!(
            string("\u{0}\u{8}\u{c}\u{1b}\u{1f}"),
            "\"\\u0000\\u0008\\u000c\\u001b\\u001f\""
        );
        // Space and DEL need no escape: written as they are.
        assert_eq!(string(" \u{7f}"), "\" \u{7f}\"");
        assert_eq!(string("\u{80}\u{2028}"), "\"\u{80}\u{2028}\"");
        // Every control character round-trips through a real parser, and so does DEL.
        let all: String = (0u8..=0x7f).map(char::from).collect();
        let parsed: String = serde_json::from_str(&string(&all)).expect("valid JSON");
        assert_eq!(parsed, all);
    }

    #[test]
    fn fixed_numbers() {
        assert_eq!(Json::fixed(1.0 / 3.0, 3).compact(), "0.333");
        assert_eq!(Json::fixed(2.0, 6).compact(), "2.000000");
        assert_eq!(Json::fixed(f64::NAN, 2).compact(), "null");
        assert_eq!(Json::fixed(f64::INFINITY, 2).compact(), "null");
        assert_eq!(Json::fixed(f64::NEG_INFINITY, 2).pretty(), "null");
    }

    #[test]
    fn compact_and_pretty_forms() {
        let mut o = Json::object();
        o.push("a", 1u8)
            .push("b", vec![Json::from("x"), Json::fixed(0.5, 1)])
            .push("c", Json::object())
            .push("d", Vec::<Json>::new());
        assert_eq!(o.compact(), r#"{"a":1,"b":["x",0.5],"c":{},"d":[]}"#);
        assert_eq!(
            o.pretty(),
            "{\n  \"a\" : 1,\n  \"b\" : [\n    \"x\",\n    0.5\n  ],\n  \"c\" : {},\n  \"d\" : []\n}"
        );
    }
}
