//! The field-by-field comparison of `nvmectl` (through VFIO) with Debian's nvme-cli 2.3
//! (through the kernel's nvme driver) on the same controller, from the guest's console.
//!
//! The guest prints each tool's output of each subcommand as a block:
//! `CLI-OUT <tool> <name>`, the output's lines each prefixed `CLI|`, then
//! `CLI-END <tool> <name> rc=<exit status>`; `<tool>` is `nvme-cli` or `nvmectl`, `<name>`
//! the subcommand (`id-ctrl`, `id-ns-2`, `get-feature-0x07`, ...) with `.json` for `-o json`.
//!
//! Text output is split into fields: `name : value` lines (the name trimmed, its layout, the
//! spaces and tabs around it, compared too), power state lines into their `key:value`
//! tokens, error log entries by their `Entry[N]` heading, hex dumps by row, the title line
//! with the device name left out (the kernel's `nvme0` against a PCI address). JSON output
//! is flattened to its leaves (`psds[0].max_power`); the top-level key of `fw-log`'s JSON
//! (the device name) is left out the same way. Every field nvme-cli prints must be in
//! nvmectl's output with the same value, and nvmectl must print no field nvme-cli does not.
//!
//! Fields whose values change between the two runs (the controller served the suite, fio
//! and the kernel in between) are compared by name only: [`VOLATILE`].

use std::collections::BTreeMap;

/// The tool whose output is the reference.
pub const REFERENCE: &str = "nvme-cli";
/// The tool checked against it.
pub const CHECKED: &str = "nvmectl";

/// Fields compared by name only, per subcommand (the name without `-N` / `.json`): the
/// counters and readings that move while the suite, fio and the kernel use the controller
/// between the two runs (temperature, data units, command counts, busy time, power-on
/// hours, power cycles, shutdowns, error counts), the host-set Async Event Configuration
/// (the kernel driver enables other notices than this driver) and the timestamp.
pub const VOLATILE: &[(&str, &[&str])] = &[
    (
        "smart-log",
        &[
            "temperature",
            "Data Units Read",
            "Data Units Written",
            "data_units_read",
            "data_units_written",
            "host_read_commands",
            "host_write_commands",
            "controller_busy_time",
            "power_on_hours",
            "power_cycles",
            "unsafe_shutdowns",
            "num_err_log_entries",
        ],
    ),
    ("error-log", &["error_count"]),
    (
        "get-feature-0x0b",
        &["get-feature:0x0b (Async Event Configuration), Current"],
    ),
    (
        "get-feature-0x0e",
        &["get-feature:0x0e (Timestamp), Current", "dump 0000"],
    ),
];

/// One tool's output of one subcommand.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// The lines, without the `CLI|` prefix.
    pub lines: Vec<String>,
    /// The exit status (`None` when the block did not end).
    pub rc: Option<i32>,
}

/// The blocks of the console log: (tool, name) to output.
pub fn blocks(log: &str) -> BTreeMap<(String, String), Output> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for l in log.lines() {
        let l = l.trim_end_matches('\r');
        if let Some(rest) = l.strip_prefix("CLI-OUT ") {
            let mut w = rest.split_whitespace();
            if let (Some(t), Some(n)) = (w.next(), w.next()) {
                let key = (t.to_string(), n.to_string());
                out.insert(key.clone(), Output::default());
                cur = Some(key);
            }
        } else if let Some(rest) = l.strip_prefix("CLI-END ") {
            if let Some(key) = cur.take() {
                let rc = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("rc="))
                    .and_then(|v| v.parse().ok());
                if let Some(o) = out.get_mut(&key) {
                    o.rc = rc;
                }
            }
        } else if let Some(line) = l.strip_prefix("CLI|") {
            if let Some(o) = cur.as_ref().and_then(|k| out.get_mut(k)) {
                o.lines.push(line.to_string());
            }
        }
    }
    out
}

/// A field: its key, its value, and the layout of its name (the text before the value).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue {
    /// The value as printed.
    pub value: String,
    /// The name as printed with its padding and separator (text fields), empty otherwise.
    pub layout: String,
}

/// Collapses runs of white space to one space and trims.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `device:nvme0` / `device:0000:00:04.0` → `device:<dev>`.
fn without_device(title: &str) -> String {
    match title.find("device:") {
        Some(i) => {
            let rest = &title[i + 7..];
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            format!("{}device:<dev>{}", &title[..i], &rest[end..])
        }
        None => title.to_string(),
    }
}

/// The `key:value` tokens of a power state line (`mp:25.00W operational enlat:16 ...`);
/// a token without `:` (`operational`) is the state; `active_power_workload:` takes the
/// rest of the line.
fn ps_tokens(prefix: &str, s: &str, fields: &mut Vec<(String, FieldValue)>) {
    let s = s.trim();
    if let Some(w) = s.strip_prefix("active_power_workload:") {
        fields.push((
            format!("{prefix}.active_power_workload"),
            FieldValue {
                value: w.to_string(),
                layout: String::new(),
            },
        ));
        return;
    }
    for tok in s.split_whitespace() {
        let (k, v) = tok.split_once(':').unwrap_or(("state", tok));
        fields.push((
            format!("{prefix}.{k}"),
            FieldValue {
                value: v.to_string(),
                layout: String::new(),
            },
        ));
    }
}

/// The fields of a text output, in order; a key seen twice gets `#2`, `#3`.
pub fn text_fields(lines: &[String]) -> Vec<(String, FieldValue)> {
    let mut fields: Vec<(String, FieldValue)> = Vec::new();
    let mut section = String::new();
    let mut ps: Option<String> = None;
    for (i, l) in lines.iter().enumerate() {
        let plain = |v: String| FieldValue {
            value: v,
            layout: String::new(),
        };
        if l.trim().is_empty() || l.trim().chars().all(|c| c == '.') {
            continue;
        }
        if i == 0 && !l.starts_with("get-feature:") {
            fields.push(("title".into(), plain(without_device(l))));
            continue;
        }
        let t = l.trim();
        if t.starts_with("Entry[") {
            section = format!("{} ", squash(t));
            continue;
        }
        if let Some(rest) = l.strip_prefix("get-feature:") {
            let (k, v) = rest.rsplit_once(" value:").unwrap_or((rest, ""));
            fields.push((format!("get-feature:{k}"), plain(v.to_string())));
            continue;
        }
        if t.starts_with("0  1  2") {
            fields.push(("dump header".into(), plain(l.clone())));
            continue;
        }
        if l.len() > 5 && l.as_bytes()[4] == b':' && l[..4].chars().all(|c| c.is_ascii_hexdigit()) {
            fields.push((format!("dump {}", &l[..4]), plain(l[5..].to_string())));
            continue;
        }
        if l.starts_with(' ') && ps.is_some() && !l.contains(" : ") {
            ps_tokens(ps.as_deref().unwrap_or(""), l, &mut fields);
            continue;
        }
        let Some((name, value)) = l.split_once(':') else {
            fields.push((format!("{section}line {i}"), plain(l.clone())));
            continue;
        };
        let key = format!("{section}{}", squash(name));
        let value = value.strip_prefix(' ').unwrap_or(value);
        if key.starts_with("ps ") {
            ps = Some(key.clone());
            ps_tokens(&key, value, &mut fields);
            continue;
        }
        ps = None;
        fields.push((
            key,
            FieldValue {
                value: value.to_string(),
                layout: name.to_string(),
            },
        ));
    }
    dedup(fields)
}

fn dedup(fields: Vec<(String, FieldValue)>) -> Vec<(String, FieldValue)> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    fields
        .into_iter()
        .map(|(k, v)| {
            let n = seen.entry(k.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                (k, v)
            } else {
                (format!("{k}#{n}"), v)
            }
        })
        .collect()
}

/// The leaves of a JSON document: `psds[0].max_power` to its value (strings unquoted,
/// numbers as written). `drop_top_key`: leave out the single top-level key (a device name).
pub fn json_fields(
    lines: &[String],
    drop_top_key: bool,
) -> Result<Vec<(String, FieldValue)>, String> {
    let text = lines.join("\n");
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))?;
    if drop_top_key {
        if let Some(inner) = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.values().next())
        {
            v = inner.clone();
        }
    }
    let mut out = Vec::new();
    flatten("", &v, &mut out);
    Ok(out)
}

fn flatten(path: &str, v: &serde_json::Value, out: &mut Vec<(String, FieldValue)>) {
    let leaf = |s: String| FieldValue {
        value: s,
        layout: String::new(),
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        serde_json::Value::Array(a) => {
            if a.is_empty() {
                out.push((format!("{path}[]"), leaf("empty".into())));
            }
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), x, out);
            }
        }
        serde_json::Value::String(s) => out.push((path.to_string(), leaf(format!("{s:?}")))),
        other => out.push((path.to_string(), leaf(other.to_string()))),
    }
}

/// The subcommand a block name belongs to: `id-ns-2.json` → `id-ns`, `get-feature-0x07`
/// stays (the features differ in what changes).
pub fn subcommand(name: &str) -> &str {
    let base = name.strip_suffix(".json").unwrap_or(name);
    if base.starts_with("get-feature") {
        return base;
    }
    match base.rsplit_once('-') {
        Some((head, n)) if n.chars().all(|c| c.is_ascii_digit()) => head,
        _ => base,
    }
}

/// Is `key` of `name`'s output compared by name only?
pub fn volatile(name: &str, key: &str) -> bool {
    let sub = subcommand(name);
    // An error log key is `Entry[ N] error_count`, a JSON one `errors[N].error_count`.
    let last = key
        .rsplit(['.', ' '])
        .next()
        .unwrap_or(key)
        .trim_end_matches(|c: char| c == '#' || c.is_ascii_digit());
    VOLATILE
        .iter()
        .filter(|(s, _)| *s == sub)
        .any(|(_, keys)| keys.iter().any(|k| *k == key || *k == last))
}

/// A value as compared: an error log entry's status keeps the status code and its name
/// (`0x4080(LBA Out of Range)`) and drops the sentence libnvme adds after the name
/// (`: The command references an LBA ...`): the names are the specification's, the
/// sentences libnvme's prose, which nvmectl does not copy.
pub fn comparable(key: &str, value: &str) -> String {
    if key.ends_with("status_field") {
        if let Some((head, _)) = value.split_once(": ") {
            if head.contains('(') && value.ends_with(')') {
                return format!("{head})");
            }
        }
    }
    value.to_string()
}

/// The comparison of one subcommand's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Comparison {
    /// Fields nvme-cli prints.
    pub fields: usize,
    /// Of those, the ones nvmectl prints the same (by name only for volatile ones).
    pub matching: usize,
    /// Of those, the ones compared by name only.
    pub by_name: usize,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// Compares nvmectl's output of `name` with nvme-cli's.
pub fn compare(name: &str, reference: &Output, checked: Option<&Output>) -> Comparison {
    let mut c = Comparison::default();
    let json = name.ends_with(".json");
    let parse = |o: &Output| {
        if json {
            json_fields(&o.lines, subcommand(name) == "fw-log")
        } else {
            Ok(text_fields(&o.lines))
        }
    };
    let want = match parse(reference) {
        Ok(f) => f,
        Err(e) => {
            c.problems.push(format!("{name}: nvme-cli's output is {e}"));
            return c;
        }
    };
    c.fields = want.len();
    if reference.rc != Some(0) {
        c.problems.push(format!(
            "{name}: nvme-cli exited with {:?}: {}",
            reference.rc,
            reference.lines.join(" | ")
        ));
    }
    let Some(checked) = checked else {
        c.problems
            .push(format!("{name}: nvmectl's output is missing from the log"));
        return c;
    };
    if checked.rc != Some(0) {
        c.problems.push(format!(
            "{name}: nvmectl exited with {:?}: {}",
            checked.rc,
            checked.lines.join(" | ")
        ));
    }
    let got = match parse(checked) {
        Ok(f) => f,
        Err(e) => {
            c.problems.push(format!("{name}: nvmectl's output is {e}"));
            return c;
        }
    };
    let got_map: BTreeMap<&str, &FieldValue> = got.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let want_keys: std::collections::BTreeSet<&str> =
        want.iter().map(|(k, _)| k.as_str()).collect();
    for (k, w) in &want {
        let Some(g) = got_map.get(k.as_str()) else {
            c.problems.push(format!(
                "{name}: missing field '{k}' (nvme-cli: {:?})",
                w.value
            ));
            continue;
        };
        if volatile(name, k) {
            c.by_name += 1;
            c.matching += 1;
        } else if comparable(k, &g.value) != comparable(k, &w.value) {
            c.problems.push(format!(
                "{name}: field '{k}' differs: nvme-cli {:?}, nvmectl {:?}",
                w.value, g.value
            ));
        } else if g.layout != w.layout {
            c.problems.push(format!(
                "{name}: field '{k}' is laid out differently: nvme-cli {:?}, nvmectl {:?}",
                w.layout, g.layout
            ));
        } else {
            c.matching += 1;
        }
    }
    for (k, g) in &got {
        if !want_keys.contains(k.as_str()) {
            c.problems.push(format!(
                "{name}: extra field '{k}' that nvme-cli does not print ({:?})",
                g.value
            ));
        }
    }
    c
}

/// Compares every block nvme-cli printed: `Ok(summary)` with the counts per subcommand, or
/// every missing, extra or different field.
pub fn check(log: &str) -> Result<String, String> {
    let b = blocks(log);
    let names: Vec<&String> = b
        .keys()
        .filter(|(t, _)| t == REFERENCE)
        .map(|(_, n)| n)
        .collect();
    if names.is_empty() {
        return Err("no nvme-cli output in the console log (CLI-OUT nvme-cli blocks)".into());
    }
    let mut per_sub: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in names {
        let r = &b[&(REFERENCE.to_string(), name.clone())];
        let c = compare(name, r, b.get(&(CHECKED.to_string(), name.clone())));
        let kind = if name.ends_with(".json") { " json" } else { "" };
        let key = format!("{}{kind}", family(name));
        let e = per_sub.entry(key).or_default();
        e.0 += c.matching;
        e.1 += c.fields;
        e.2 += c.by_name;
        problems.extend(c.problems);
    }
    let (m, n) = per_sub
        .values()
        .fold((0, 0), |(m, n), v| (m + v.0, n + v.1));
    let summary = per_sub
        .iter()
        .map(|(k, (m, n, v))| format!("{k} {m}/{n} ({v} by name)"))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = format!("nvmectl matches nvme-cli in {m} of {n} fields: {summary}");
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{summary}; {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

/// The subcommand family for the summary (`get-feature-0x07` → `get-feature`).
fn family(name: &str) -> &str {
    let s = subcommand(name);
    if s.starts_with("get-feature") {
        "get-feature"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(tool: &str, name: &str, text: &str, rc: i32) -> String {
        let mut s = format!("CLI-OUT {tool} {name}\r\n");
        for l in text.lines() {
            s.push_str(&format!("CLI|{l}\r\n"));
        }
        s.push_str(&format!("CLI-END {tool} {name} rc={rc}\r\n"));
        s
    }

    const CTRL: &str = "NVME Identify Controller:\nvid       : 0x1b36\nsn        : deadbeef            \nnsattr\t: 0\nps      0 : mp:25.00W operational enlat:16 exlat:4 rrt:0 rrl:0\n            rwt:0 rwl:0 idle_power:- active_power:-\n            active_power_workload:-\n";

    #[test]
    fn text_fields_split_names_values_and_power_states() {
        let lines: Vec<String> = CTRL.lines().map(String::from).collect();
        let f = text_fields(&lines);
        let get = |k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.value.clone());
        assert_eq!(get("title").as_deref(), Some("NVME Identify Controller:"));
        assert_eq!(get("sn").as_deref(), Some("deadbeef            "));
        assert_eq!(get("ps 0.mp").as_deref(), Some("25.00W"));
        assert_eq!(get("ps 0.state").as_deref(), Some("operational"));
        assert_eq!(get("ps 0.rwl").as_deref(), Some("0"));
        assert_eq!(get("ps 0.active_power_workload").as_deref(), Some("-"));
        assert_eq!(
            f.iter().find(|(k, _)| k == "nsattr").unwrap().1.layout,
            "nsattr\t"
        );
        assert_eq!(f.len(), 4 + 6 + 4 + 1);
    }

    #[test]
    fn identical_outputs_match_and_differences_are_listed() {
        let mut log = block("nvme-cli", "id-ctrl", CTRL, 0);
        log.push_str("[   12.3] some kernel line\r\n");
        log.push_str(&block("nvmectl", "id-ctrl", CTRL, 0));
        let s = check(&log).expect("identical");
        assert!(s.contains("15 of 15 fields"), "{s}");

        let worse = CTRL
            .replace("sn        : deadbeef            \n", "")
            .replace("nsattr\t: 0", "nsattr  : 0")
            .replace("rrl:0", "rrl:0 extra:1")
            .replace("0x1b36", "0x1b37");
        let mut log = block("nvme-cli", "id-ctrl", CTRL, 0);
        log.push_str(&block("nvmectl", "id-ctrl", &worse, 0));
        let e = check(&log).unwrap_err();
        assert!(e.contains("12 of 15 fields"), "{e}");
        assert!(e.contains("missing field 'sn'"), "{e}");
        assert!(
            e.contains("field 'vid' differs: nvme-cli \"0x1b36\", nvmectl \"0x1b37\""),
            "{e}"
        );
        assert!(e.contains("'nsattr' is laid out differently"), "{e}");
        assert!(e.contains("extra field 'ps 0.extra'"), "{e}");
    }

    #[test]
    fn json_leaves_device_names_and_volatile_fields() {
        let cli = "{\n  \"nvme0\":{\n    \"Active Firmware Slot (afi)\":1,\n    \"Firmware Rev Slot 1\":\"1 (7.2)\"\n  }\n}";
        let ours = cli.replace("nvme0", "0000:00:04.0");
        let mut log = block("nvme-cli", "fw-log.json", cli, 0);
        log.push_str(&block("nvmectl", "fw-log.json", &ours, 0));
        let smart = "{\"critical_warning\":0,\"temperature\":323,\"host_read_commands\":\"12\",\"psds\":[{\"a\":1}]}";
        log.push_str(&block("nvme-cli", "smart-log.json", smart, 0));
        let moved = smart.replace("323", "324").replace("\"12\"", "\"99\"");
        log.push_str(&block("nvmectl", "smart-log.json", &moved, 0));
        let title = "Smart Log for NVME device:nvme0 namespace-id:ffffffff\ntemperature\t\t\t\t: 50°C (323 Kelvin)\ncritical_warning\t\t\t: 0";
        log.push_str(&block("nvme-cli", "smart-log", title, 0));
        let ours = title
            .replace("nvme0", "0000:00:04.0")
            .replace("50°C (323", "51°C (324");
        log.push_str(&block("nvmectl", "smart-log", &ours, 0));
        let s = check(&log).expect("device names and volatile fields");
        assert!(s.contains("fw-log json 2/2"), "{s}");
        assert!(s.contains("smart-log json 4/4 (2 by name)"), "{s}");
        assert!(s.contains("smart-log 3/3 (1 by name)"), "{s}");

        let bad = smart.replace("\"critical_warning\":0", "\"critical_warning\":\"0\"");
        let mut log = block("nvme-cli", "smart-log.json", smart, 0);
        log.push_str(&block("nvmectl", "smart-log.json", &bad, 0));
        assert!(check(&log)
            .unwrap_err()
            .contains("'critical_warning' differs"));
    }

    #[test]
    fn error_log_entries_and_missing_blocks() {
        let e = "Error Log Entries for device:nvme0 entries:2\n.................\n Entry[ 0]   \n.................\nerror_count\t: 3\nsqid\t\t: 0\n.................\n Entry[ 1]   \n.................\nerror_count\t: 0\nsqid\t\t: 0\n.................";
        let lines: Vec<String> = e.lines().map(String::from).collect();
        let f = text_fields(&lines);
        let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "title",
                "Entry[ 0] error_count",
                "Entry[ 0] sqid",
                "Entry[ 1] error_count",
                "Entry[ 1] sqid"
            ]
        );
        assert!(volatile("error-log", "Entry[ 1] error_count"));
        assert!(volatile("error-log.json", "errors[3].error_count"));
        assert!(!volatile("error-log", "Entry[ 1] sqid"));
        assert!(!volatile("id-ctrl", "temperature"));
        assert!(volatile("get-feature-0x0e", "dump 0000"));
        assert!(!volatile("get-feature-0x07", "dump 0000"));

        let log = block("nvme-cli", "error-log", e, 0);
        assert!(check(&log)
            .unwrap_err()
            .contains("nvmectl's output is missing"));
        assert!(check("nothing").unwrap_err().contains("no nvme-cli output"));
        let mut log = block(
            "nvme-cli",
            "id-ns-1",
            "NVME Identify Namespace 1:\nnsze    : 0x1",
            0,
        );
        log.push_str(&block(
            "nvmectl",
            "id-ns-1",
            "nvmectl: namespace 1 not found",
            1,
        ));
        let err = check(&log).unwrap_err();
        assert!(err.contains("nvmectl exited with Some(1)"), "{err}");
        assert_eq!(subcommand("id-ns-12.json"), "id-ns");
        assert_eq!(
            comparable(
                "Entry[ 0] status_field",
                "0(Successful Completion: The command completed without error)"
            ),
            "0(Successful Completion)"
        );
        assert_eq!(comparable("Entry[ 0] sqid", "a: b)"), "a: b)");
        assert_eq!(subcommand("get-feature-0x07"), "get-feature-0x07");
    }
}
