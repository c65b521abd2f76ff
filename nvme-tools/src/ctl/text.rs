//! Text helpers shared by the formatters: C `printf` conventions that nvme-cli's output
//! relies on, number suffixes, hex dumps.

use std::fmt::Write;

/// A field value, printed the way nvme-cli prints it and carried as a number or string in
/// JSON the way nvme-cli 2.3 carries it: fields of 32 bits or less go through json-c's
/// `json_object_new_int` (a signed 32-bit number, so 0x80000000 and up come out negative),
/// 64-bit ones as unsigned numbers, 128-bit ones as decimal strings.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Decimal (`%d`, `%u`) of a field of 32 bits or less.
    Dec(u32),
    /// Hexadecimal in C's `%#x` (`0` for zero, `0x1f` otherwise) of a field of 32 bits or less.
    Hex(u32),
    /// Decimal of a 64-bit field.
    Dec64(u64),
    /// `%#x` of a 64-bit field.
    Hex64(u64),
    /// Decimal of a 128-bit field (a string in JSON).
    Big(u128),
    /// Text, printed as is.
    Text(String),
}

impl Value {
    /// The value as nvme-cli prints it.
    pub fn human(&self) -> String {
        match self {
            Value::Dec(v) => v.to_string(),
            Value::Hex(v) => alt_hex(*v as u64),
            Value::Dec64(v) => v.to_string(),
            Value::Hex64(v) => alt_hex(*v),
            Value::Big(v) => v.to_string(),
            Value::Text(s) => s.clone(),
        }
    }

    /// The value as JSON: numbers stay numbers.
    pub fn json(&self) -> crate::json::Json {
        use crate::json::Json;
        match self {
            Value::Dec(v) | Value::Hex(v) => json_int(*v),
            Value::Dec64(v) | Value::Hex64(v) => Json::Uint(*v as u128),
            Value::Big(v) => Json::Str(v.to_string()),
            Value::Text(s) => Json::Str(s.clone()),
        }
    }
}

/// One named field of an identify structure or log page.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// nvme-cli's name for it (also the JSON key).
    pub name: &'static str,
    /// Its value.
    pub value: Value,
}

/// A number as nvme-cli 2.3 puts a field of 32 bits or less in JSON: json-c's
/// `json_object_new_int` takes an `int32_t`, so values from 2^31 up wrap to negative.
pub fn json_int(v: u32) -> crate::json::Json {
    crate::json::Json::Int(v as i32 as i64)
}

/// A field of 32 bits or less printed in decimal.
pub fn dec(name: &'static str, v: impl Into<u32>) -> Field {
    Field {
        name,
        value: Value::Dec(v.into()),
    }
}

/// A field of 32 bits or less printed as `%#x`.
pub fn hex(name: &'static str, v: impl Into<u32>) -> Field {
    Field {
        name,
        value: Value::Hex(v.into()),
    }
}

/// A 64-bit field printed as `%#x`.
pub fn hex64(name: &'static str, v: u64) -> Field {
    Field {
        name,
        value: Value::Hex64(v),
    }
}

/// A 128-bit little-endian field printed in decimal (a string in JSON).
pub fn big(name: &'static str, le: [u8; 16]) -> Field {
    Field {
        name,
        value: Value::Big(u128::from_le_bytes(le)),
    }
}

/// A text field.
pub fn text(name: &'static str, v: impl Into<String>) -> Field {
    Field {
        name,
        value: Value::Text(v.into()),
    }
}

/// `name` padded to `width`, then ` : value` (nvme-cli's `vid       : 0x1b36`).
pub fn kv_line(name: &str, width: usize, value: &str) -> String {
    format!("{name:<width$}: {value}\n")
}

/// A JSON object of `fields`.
pub fn fields_json(fields: &[Field]) -> crate::json::Json {
    let mut o = crate::json::Json::object();
    for f in fields {
        o.push(f.name, f.value.json());
    }
    o
}

/// C's `%#x`: no prefix for zero.
pub fn alt_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// A fixed-size ASCII identify field as nvme-cli prints it (`%-.*s`: every byte up to the
/// first NUL, padding kept); bytes that are not printable ASCII become `.`.
pub fn raw_ascii(field: &[u8]) -> String {
    field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// Lowercase hex of `bytes`, no separators (NGUID, EUI64).
pub fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `bytes` (16) as a UUID: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    nvme_host_linux::regs::identify::Uuid(*bytes).to_string()
}

/// `label` followed by tabs up to column 40 (8-column tabs), as nvme-cli aligns the SMART
/// log; a label of 40 characters or more gets none.
pub fn tab_label(label: &str) -> String {
    let tabs = 5usize.saturating_sub(label.len() / 8);
    format!("{label}{}", "\t".repeat(tabs))
}

/// Scales `v` by 1000 until it is below 1000: `(scaled, "k" | "M" | "G" | ...)`.
pub fn si_scale(v: f64) -> (f64, &'static str) {
    scale(v, 1000.0, &["", "k", "M", "G", "T", "P", "E"])
}

/// Scales `v` by 1024: `(scaled, "Ki" | "Mi" | ...)`.
pub fn binary_scale(v: f64) -> (f64, &'static str) {
    scale(v, 1024.0, &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
}

fn scale(mut v: f64, base: f64, suffixes: &[&'static str]) -> (f64, &'static str) {
    let mut i = 0;
    while v >= base && i + 1 < suffixes.len() {
        v /= base;
        i += 1;
    }
    (v, suffixes[i])
}

/// Bytes with a binary suffix for summaries: `16.00 MiB`, `512 B`.
pub fn human_bytes(bytes: u128) -> String {
    let (v, s) = binary_scale(bytes as f64);
    if s.is_empty() {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {s}B")
    }
}

/// Kelvin to Celsius (nvme-cli subtracts 273).
pub fn celsius(kelvin: u16) -> i64 {
    kelvin as i64 - 273
}

/// nvme-cli's hex dump (`d()`): a column header, then `oooo: xx xx ... "ascii"` rows.
pub fn nvme_cli_dump(data: &[u8]) -> String {
    let mut out = String::from("     ");
    for i in 0..16 {
        let _ = write!(out, "{i:3x}");
    }
    out.push('\n');
    for (row, chunk) in data.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", row * 16);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        out.push_str(&"   ".repeat(16 - chunk.len()));
        let ascii: String = chunk.iter().map(|&b| printable(b)).collect();
        let _ = writeln!(out, " \"{ascii}\"");
    }
    out
}

/// SPDK identify's hex dump (`-x`): `OFFSET: XX XX ... XX-XX ...  ascii`.
pub fn spdk_dump(data: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in data.chunks(16).enumerate() {
        let _ = write!(out, "{:08X}:", row * 16);
        for i in 0..16 {
            out.push(if i == 8 { '-' } else { ' ' });
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02X}");
                }
                None => out.push_str("  "),
            }
        }
        out.push_str("  ");
        out.extend(
            chunk
                .iter()
                .map(|&b| if b > 0x20 && b < 0x7f { b as char } else { '.' }),
        );
        out.push('\n');
    }
    out
}

fn printable(b: u8) -> char {
    if (0x20..0x7f).contains(&b) {
        b as char
    } else {
        '.'
    }
}

/// Parses a number in decimal or, with a `0x` prefix, hexadecimal (as nvme-cli accepts).
pub fn parse_number<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse::<u64>(),
    }
    .map_err(|_| format!("'{s}' is not a number (decimal or 0x-prefixed hex)"))?;
    T::try_from(v).map_err(|_| format!("{s} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_conventions() {
        assert_eq!(alt_hex(0), "0");
        assert_eq!(alt_hex(0x66), "0x66");
        assert_eq!(raw_ascii(b"CTL123  \0xx"), "CTL123  ");
        assert_eq!(raw_ascii(b"a\x01b"), "a.b");
        assert_eq!(kv_line("sn", 10, "X"), "sn        : X\n");
        assert_eq!(tab_label("critical_warning"), "critical_warning\t\t\t");
        assert_eq!(tab_label("temperature"), "temperature\t\t\t\t");
        assert_eq!(
            tab_label("endurance group critical warning summary").len(),
            40
        );
        assert_eq!(
            uuid_string(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
        assert_eq!(celsius(308), 35);
    }

    #[test]
    fn suffixes_and_numbers() {
        let (v, s) = si_scale(1_073_741_824.0);
        assert_eq!((format!("{v:.2}"), s), ("1.07".into(), "G"));
        assert_eq!(binary_scale(4096.0), (4.0, "Ki"));
        assert_eq!(human_bytes(16 << 20), "16.00 MiB");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(parse_number::<u8>("0x07"), Ok(7));
        assert_eq!(parse_number::<u32>("4096"), Ok(4096));
        assert!(parse_number::<u8>("256")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_number::<u8>("seven")
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn hex_dumps() {
        let d = nvme_cli_dump(b"ABCDEFGHIJKLMNOPQ");
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(
            lines[0].trim_start(),
            "0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f"
        );
        assert_eq!(
            lines[1],
            "0000: 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 \"ABCDEFGHIJKLMNOP\""
        );
        assert!(lines[2].starts_with("0010: 51   "), "{}", lines[2]);
        let s = spdk_dump(&[0x41; 17]);
        assert_eq!(
            s.lines().next().unwrap(),
            "00000000: 41 41 41 41 41 41 41 41-41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA"
        );
        assert!(s.lines().nth(1).unwrap().ends_with("  A"));
    }
}
