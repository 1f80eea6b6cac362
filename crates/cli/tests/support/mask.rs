//! Masking of etcdctl output: what legitimately differs between two servers (or two runs)
//! becomes a placeholder, everything else is kept. Revisions are never masked.

use super::json::Value;

/// Replaces known literals (ids, URLs, paths) and volatile JSON fields.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    /// (text, placeholder); applied longest text first.
    literals: Vec<(String, String)>,
    leases: usize,
}

/// JSON fields whose values differ between servers or runs, and their placeholders.
/// `member_id` in a header depends on which endpoint etcdctl's round-robin balancer picked.
const VOLATILE_FIELDS: &[(&str, &str)] = &[
    ("cluster_id", "<cluster>"),
    ("member_id", "<member>"),
    ("raft_term", "<term>"),
    ("raftTerm", "<term>"),
    ("raftIndex", "<index>"),
    ("raftAppliedIndex", "<index>"),
    ("dbSize", "<size>"),
    ("dbSizeInUse", "<size>"),
    ("leader", "<leader>"),
    ("hash", "<hash>"),
    ("took", "<took>"),
];

impl Masker {
    pub fn new() -> Masker {
        Masker::default()
    }

    /// Masks `text` everywhere as `placeholder`.
    pub fn literal(&mut self, text: impl Into<String>, placeholder: impl Into<String>) {
        let text = text.into();
        if !text.is_empty() && !self.literals.iter().any(|(known, _)| *known == text) {
            self.literals.push((text, placeholder.into()));
            self.literals
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        }
    }

    /// A member's id (hex as etcdctl prints it, and decimal as in JSON) and URLs.
    pub fn member(&mut self, index: usize, id: u64, client_url: &str, peer_url: &str) {
        let label = format!("<member-{index}>");
        self.literal(format!("{id:016x}"), label.clone());
        self.literal(format!("{id:x}"), label.clone());
        self.literal(id.to_string(), label);
        self.literal(client_url, format!("<client-{index}>"));
        self.literal(
            client_url.trim_start_matches("http://"),
            format!("<client-{index}>"),
        );
        self.literal(peer_url, format!("<peer-{index}>"));
        self.literal(
            peer_url.trim_start_matches("http://"),
            format!("<peer-{index}>"),
        );
    }

    pub fn cluster(&mut self, id: u64) {
        self.literal(format!("{id:x}"), "<cluster>");
        self.literal(id.to_string(), "<cluster>");
    }

    /// Registers a lease id (numbered in the order seen) and returns its placeholder.
    pub fn lease(&mut self, id: i64) -> String {
        let hex = format!("{id:016x}");
        if let Some((_, label)) = self.literals.iter().find(|(text, _)| *text == hex) {
            return label.clone();
        }
        self.leases += 1;
        let label = format!("<lease-{}>", self.leases);
        self.literal(hex, label.clone());
        self.literal(format!("{id:x}"), label.clone());
        self.literal(id.to_string(), label.clone());
        label
    }

    /// Replaces the registered literals and the volatile text patterns.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (literal, placeholder) in &self.literals {
            out = out.replace(literal.as_str(), placeholder);
        }
        out = replace_between(&out, "took = ", "\n", "<took>");
        out = replace_between(&out, "remaining(", ")", "<ttl>");
        out
    }

    /// Parses `text` as JSON (or one JSON document per line), masks volatile fields, writes
    /// it back compactly, then applies [`Masker::text`]. Arrays named in `sort` are sorted
    /// (after masking) because their order is not defined.
    pub fn json(&self, text: &str, sort: &[&str]) -> String {
        let documents: Vec<&str> = match super::json::parse(text) {
            Ok(_) => vec![text],
            Err(_) => text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .collect(),
        };
        let mut out = String::new();
        for document in documents {
            match super::json::parse(document) {
                Ok(mut value) => {
                    mask_value(&mut value, sort, self);
                    if sort.contains(&"") {
                        sort_array(&mut value);
                    }
                    out.push_str(&value.to_text());
                }
                Err(error) => out.push_str(&format!("<not json: {error}> {}", self.text(document))),
            }
            out.push('\n');
        }
        out
    }
}

/// Masks volatile fields and, in every other leaf, the registered literals (ids printed as
/// numbers, URLs as strings); a masked number becomes a string. Sorting comes last, so that
/// it orders masked values.
fn mask_value(value: &mut Value, sort: &[&str], masker: &Masker) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if let Some((_, placeholder)) = VOLATILE_FIELDS.iter().find(|(name, _)| name == key)
                {
                    *field = Value::String(placeholder.to_string());
                    continue;
                }
                // etcd's own version string (Status.version); a key's "version" is a number.
                if key == "version" && matches!(field, Value::String(_)) {
                    *field = Value::String("<version>".to_string());
                    continue;
                }
                mask_value(field, sort, masker);
                if sort.contains(&key.as_str()) {
                    sort_array(field);
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                mask_value(item, sort, masker);
            }
        }
        Value::Number(text) => {
            let masked = masker.text(text);
            if masked != *text {
                *value = Value::String(masked);
            }
        }
        Value::String(text) => *text = masker.text(text),
        Value::Null | Value::Bool(_) => {}
    }
}

fn sort_array(value: &mut Value) {
    if let Value::Array(items) = value {
        items.sort_by_key(Value::to_text);
    }
}

/// Replaces every text between `start` and the next `end` (or the end of the text) with
/// `placeholder`.
pub fn replace_between(text: &str, start: &str, end: &str, placeholder: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(start) {
        out.push_str(&rest[..at + start.len()]);
        out.push_str(placeholder);
        rest = &rest[at + start.len()..];
        rest = match rest.find(end) {
            Some(stop) => &rest[stop..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Turns etcdctl's `-w table` output into rows of cells joined by ", " (like the simple
/// format): borders dropped and cells trimmed, so column widths do not matter.
pub fn table_rows(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('+') || line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        out.push_str(&cells.join(", "));
        out.push('\n');
    }
    out
}

/// Masks the comma-separated fields at `indexes` of each line with `<masked>`.
pub fn mask_fields(text: &str, indexes: &[usize]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let fields: Vec<String> = line
            .split(", ")
            .enumerate()
            .map(|(index, field)| {
                if indexes.contains(&index) {
                    "<masked>".to_string()
                } else {
                    field.to_string()
                }
            })
            .collect();
        out.push_str(&fields.join(", "));
        out.push('\n');
    }
    out
}

/// Sorts the lines of `text`, keeping the first `keep` lines (e.g. a table header) in place.
pub fn sort_lines(text: &str, keep: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let split = keep.min(lines.len());
    let (head, tail) = lines.split_at(split);
    let mut tail = tail.to_vec();
    tail.sort_unstable();
    let mut out = String::new();
    for line in head.iter().chain(tail.iter()) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The stderr lines worth comparing: etcdctl's own messages (not the zap JSON log lines),
/// plus the gRPC status of the first logged RPC failure, which shows the code.
pub fn stderr_lines(stderr: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut grpc = None;
    for line in stderr.lines() {
        if line.starts_with("{\"level\"") {
            if grpc.is_none() {
                if let Some(at) = line.find("\"error\":\"rpc error: ") {
                    let rest = &line[at + "\"error\":\"".len()..];
                    grpc = Some(rest[..rest.find('"').unwrap_or(rest.len())].to_string());
                }
            }
        } else if !line.trim().is_empty() {
            lines.push(line.to_string());
        }
    }
    if let Some(grpc) = grpc {
        lines.push(format!("(log) {grpc}"));
    }
    lines
}

/// A readable diff of two transcripts made of `### ` sections: every section that differs,
/// with the etcd lines marked `-` and the other server's lines marked `+`.
pub fn diff(expected: &str, actual: &str) -> String {
    fn sections(text: &str) -> Vec<Vec<&str>> {
        let mut sections: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            if line.starts_with("### ") || sections.is_empty() {
                sections.push(Vec::new());
            }
            sections.last_mut().expect("a section").push(line);
        }
        sections
    }
    let expected = sections(expected);
    let actual = sections(actual);
    let mut out = String::new();
    for index in 0..expected.len().max(actual.len()) {
        let left = expected.get(index).cloned().unwrap_or_default();
        let right = actual.get(index).cloned().unwrap_or_default();
        if left == right {
            continue;
        }
        let title = left.first().or(right.first()).copied().unwrap_or("");
        out.push_str(&format!("{title}\n"));
        for line in left.iter().skip(1) {
            let marker = if right.contains(line) { ' ' } else { '-' };
            out.push_str(&format!("  {marker} {line}\n"));
        }
        for line in right.iter().skip(1) {
            if !left.contains(line) {
                out.push_str(&format!("  + {line}\n"));
            }
        }
    }
    out
}
