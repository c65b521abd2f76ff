//! A small JSON value with a printer: enough for `-o json`, without a runtime dependency.

use std::fmt::{self, Write};

/// A JSON value. Objects keep their keys in insertion order (as nvme-cli prints them).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// An unsigned integer (128 bits: the SMART counters are 128-bit).
    Uint(u128),
    /// A signed integer (temperatures in Celsius).
    Int(i64),
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

    /// Adds `key: value` to an object (does nothing to other values).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<Json>) -> &mut Json {
        if let Json::Obj(members) = self {
            members.push((key.into(), value.into()));
        }
        self
    }

    /// The value printed with two-space indentation, one member per line.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0).expect("writing to a String");
        out
    }

    fn write(&self, out: &mut String, indent: usize) -> fmt::Result {
        match self {
            Json::Uint(n) => write!(out, "{n}"),
            Json::Int(n) => write!(out, "{n}"),
            Json::Str(s) => write_escaped(out, s),
            Json::Arr(items) => {
                let items: Vec<&Json> = items.iter().collect();
                write_list(out, indent, '[', ']', &items, |out, item, ind| {
                    item.write(out, ind)
                })
            }
            Json::Obj(members) => {
                let members: Vec<&(String, Json)> = members.iter().collect();
                write_list(out, indent, '{', '}', &members, |out, (k, v), ind| {
                    write_escaped(out, k)?;
                    out.push_str(" : ");
                    v.write(out, ind)
                })
            }
        }
    }
}

/// Writes `open`, the items one per line indented, then `close`.
fn write_list<T>(
    out: &mut String,
    indent: usize,
    open: char,
    close: char,
    items: &[T],
    mut item: impl FnMut(&mut String, &T, usize) -> fmt::Result,
) -> fmt::Result {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, it) in items.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str(&"  ".repeat(indent + 1));
        item(out, it, indent + 1)?;
    }
    out.push('\n');
    out.push_str(&"  ".repeat(indent));
    out.push(close);
    Ok(())
}

/// Writes `s` as a JSON string literal: quotes, backslashes and control characters escaped.
pub fn write_escaped(out: &mut String, s: &str) -> fmt::Result {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
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
}
