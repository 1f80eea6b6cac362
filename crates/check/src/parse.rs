//! Readers for recorded histories: Jepsen etcd logs and EDN-like key-value histories.
//!
//! Both formats list events one per line; an operation is an `:invoke` line followed later by
//! the completion line of the same process. The line number of an event is its time, which keeps
//! the real-time order and makes a verdict easy to trace back to the file.
//!
//! Completion types map onto the checker's notion of outcome:
//! - `:ok` — the operation took effect with the recorded output.
//! - `:fail` — it did not take effect (or, for a read, its result is unusable): it is dropped.
//! - `:info`, or no completion before the end of the file — unknown outcome: the operation keeps
//!   an unknown output and may take effect at any instant after its invoke, or never.

use std::collections::BTreeMap;

use crate::kv::{KvInput, KvOutput};
use crate::model::Operation;

/// A history file could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The 1-based line where the problem is.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl ParseError {
    fn new(line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

/// The key a Jepsen register history is stored under: those histories have one register only.
pub const JEPSEN_KEY: &str = "register";

/// How an operation ended, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Completion {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl Completion {
    fn parse(keyword: &str) -> Option<Completion> {
        match keyword {
            "invoke" => Some(Completion::Invoke),
            "ok" => Some(Completion::Ok),
            "fail" => Some(Completion::Fail),
            "info" => Some(Completion::Info),
            _ => None,
        }
    }
}

/// Pairs invoke lines with completion lines per process and builds the operations.
#[derive(Debug, Default)]
struct HistoryBuilder {
    /// Operations in invoke order; `None` once dropped (a `:fail`).
    operations: Vec<Option<Operation<KvInput, KvOutput>>>,
    /// The outstanding operation of each process, as an index into `operations`.
    outstanding: BTreeMap<u64, usize>,
}

impl HistoryBuilder {
    fn invoke(&mut self, line: usize, process: u64, input: KvInput) -> Result<(), ParseError> {
        if let Some(&index) = self.outstanding.get(&process) {
            let earlier = self.operations[index].as_ref().map_or(0, |op| op.invoke);
            return Err(ParseError::new(
                line,
                format!("process {process} invokes while its operation from line {earlier} is outstanding"),
            ));
        }
        self.outstanding.insert(process, self.operations.len());
        self.operations.push(Some(Operation {
            client: process,
            input,
            output: None,
            invoke: line as u64,
            ret: None,
        }));
        Ok(())
    }

    /// The input of `process`'s outstanding operation, checking it is of the named function.
    fn outstanding_input(
        &self,
        line: usize,
        process: u64,
        function: &str,
    ) -> Result<&KvInput, ParseError> {
        let index = *self.outstanding.get(&process).ok_or_else(|| {
            ParseError::new(
                line,
                format!("process {process} completes an operation it never invoked"),
            )
        })?;
        let input = &self.operations[index]
            .as_ref()
            .expect("outstanding operations are never dropped")
            .input;
        if function_name(input) != function {
            return Err(ParseError::new(
                line,
                format!(
                    "process {process} completes :{function} but its outstanding operation is :{}",
                    function_name(input)
                ),
            ));
        }
        Ok(input)
    }

    fn complete(
        &mut self,
        line: usize,
        process: u64,
        completion: Completion,
        output: Option<KvOutput>,
    ) {
        let index = self
            .outstanding
            .remove(&process)
            .expect("checked by outstanding_input");
        match completion {
            Completion::Ok => {
                let operation = self.operations[index].as_mut().expect("outstanding");
                operation.output = output;
                operation.ret = Some(line as u64);
            }
            Completion::Fail => self.operations[index] = None,
            // Unknown outcome: leave the output unknown and the return at +infinity.
            Completion::Info | Completion::Invoke => {}
        }
    }

    fn finish(self) -> Vec<Operation<KvInput, KvOutput>> {
        self.operations.into_iter().flatten().collect()
    }
}

fn function_name(input: &KvInput) -> &'static str {
    match input {
        KvInput::Get { .. } => "get",
        KvInput::Put { .. } => "put",
        KvInput::Append { .. } => "append",
        KvInput::Cas { .. } => "cas",
    }
}

/// Parse a Jepsen etcd register log (see `shared/data/README.md`).
///
/// Relevant lines look like `INFO  jepsen.util - P :TYPE :F VALUE`; lines of any other form
/// (nemesis, setup), including those whose process is not a number, are skipped. All operations
/// are on the single key [`JEPSEN_KEY`]; `:read` becomes a get, `:write` a put and `:cas` a
/// compare-and-set. Values are kept as text and `nil` means absent.
pub fn parse_jepsen(text: &str) -> Result<Vec<Operation<KvInput, KvOutput>>, ParseError> {
    let mut builder = HistoryBuilder::default();
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(start) = tokens
            .windows(2)
            .position(|pair| pair == ["jepsen.util", "-"])
        else {
            continue;
        };
        let fields = &tokens[start + 2..];
        let Some(process) = fields.first().and_then(|field| field.parse::<u64>().ok()) else {
            continue;
        };
        let (Some(kind), Some(function)) = (fields.get(1), fields.get(2)) else {
            return Err(ParseError::new(line_number, "expected `P :TYPE :F VALUE`"));
        };
        let completion = keyword(kind)
            .and_then(Completion::parse)
            .ok_or_else(|| ParseError::new(line_number, format!("unknown event type `{kind}`")))?;
        let function = match keyword(function) {
            Some("read") => "get",
            Some("write") => "put",
            Some("cas") => "cas",
            _ => {
                return Err(ParseError::new(
                    line_number,
                    format!("unknown function `{function}`"),
                ))
            }
        };
        let value = fields[3..].join(" ");
        if completion == Completion::Invoke {
            let input = jepsen_input(function, &value)
                .map_err(|message| ParseError::new(line_number, message))?;
            builder.invoke(line_number, process, input)?;
            continue;
        }
        let input = builder.outstanding_input(line_number, process, function)?;
        let output = match (completion, input) {
            (Completion::Ok, KvInput::Get { .. }) => Some(KvOutput::Value(
                jepsen_atom(&value).map_err(|message| ParseError::new(line_number, message))?,
            )),
            (Completion::Ok, KvInput::Cas { .. }) => Some(KvOutput::CasResult(true)),
            (Completion::Ok, _) => Some(KvOutput::Ok),
            _ => None,
        };
        builder.complete(line_number, process, completion, output);
    }
    Ok(builder.finish())
}

/// `:name` → `name`.
fn keyword(token: &str) -> Option<&str> {
    token.strip_prefix(':').filter(|name| !name.is_empty())
}

/// A single Jepsen value: `nil` is absent, anything else is kept as text.
fn jepsen_atom(value: &str) -> Result<Option<String>, String> {
    match value {
        "" => Err("missing value".to_owned()),
        "nil" => Ok(None),
        _ if value.contains(char::is_whitespace) => {
            Err(format!("expected one value, got `{value}`"))
        }
        _ => Ok(Some(value.to_owned())),
    }
}

fn jepsen_input(function: &str, value: &str) -> Result<KvInput, String> {
    let key = JEPSEN_KEY.to_owned();
    match function {
        "get" => Ok(KvInput::Get { key }),
        "put" => match jepsen_atom(value)? {
            Some(value) => Ok(KvInput::Put { key, value }),
            None => Err("cannot write nil".to_owned()),
        },
        _ => {
            let pair = value
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .ok_or_else(|| format!("expected `[FROM TO]`, got `{value}`"))?;
            let parts: Vec<&str> = pair.split_whitespace().collect();
            let [from, to] = parts[..] else {
                return Err(format!("expected `[FROM TO]`, got `{value}`"));
            };
            let to = jepsen_atom(to)?.ok_or_else(|| "cannot compare-and-set to nil".to_owned())?;
            Ok(KvInput::Cas {
                key,
                from: jepsen_atom(from)?,
                to,
            })
        }
    }
}

/// A value in an EDN-like map.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EdnValue {
    Keyword(String),
    Text(String),
    Integer(i64),
    Nil,
}

/// Parse one `{:name value, ...}` line into its fields, in order.
fn parse_edn_map(line: &str) -> Result<Vec<(String, EdnValue)>, String> {
    let mut reader = EdnReader {
        chars: line.chars().collect(),
        position: 0,
    };
    reader.skip_blank();
    reader.expect('{')?;
    let mut fields = Vec::new();
    loop {
        reader.skip_blank();
        match reader.peek() {
            Some('}') => {
                reader.position += 1;
                break;
            }
            Some(':') => {
                let EdnValue::Keyword(name) = reader.value()? else {
                    unreachable!("a value starting with ':' is a keyword");
                };
                reader.skip_blank();
                let value = reader.value()?;
                fields.push((name, value));
            }
            Some(other) => return Err(format!("expected `:name` or `}}`, found `{other}`")),
            None => return Err("unterminated map: missing `}`".to_owned()),
        }
    }
    reader.skip_blank();
    if let Some(extra) = reader.peek() {
        return Err(format!("unexpected `{extra}` after the map"));
    }
    Ok(fields)
}

struct EdnReader {
    chars: Vec<char>,
    position: usize,
}

impl EdnReader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    /// Skip whitespace and commas (commas are whitespace in EDN).
    fn skip_blank(&mut self) {
        while self.peek().is_some_and(|c| c.is_whitespace() || c == ',') {
            self.position += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        match self.peek() {
            Some(found) if found == wanted => {
                self.position += 1;
                Ok(())
            }
            Some(found) => Err(format!("expected `{wanted}`, found `{found}`")),
            None => Err(format!("expected `{wanted}`, found the end of the line")),
        }
    }

    /// A bare word: up to whitespace, a comma or a closing brace.
    fn word(&mut self) -> String {
        let start = self.position;
        while self
            .peek()
            .is_some_and(|c| !(c.is_whitespace() || c == ',' || c == '}' || c == '{'))
        {
            self.position += 1;
        }
        self.chars[start..self.position].iter().collect()
    }

    fn value(&mut self) -> Result<EdnValue, String> {
        match self.peek() {
            None => Err("expected a value, found the end of the line".to_owned()),
            Some('"') => self.text().map(EdnValue::Text),
            Some(':') => {
                self.position += 1;
                let name = self.word();
                if name.is_empty() {
                    return Err("empty keyword".to_owned());
                }
                Ok(EdnValue::Keyword(name))
            }
            Some(_) => {
                let word = self.word();
                if word == "nil" {
                    return Ok(EdnValue::Nil);
                }
                word.parse::<i64>()
                    .map(EdnValue::Integer)
                    .map_err(|_| format!("unsupported value `{word}`"))
            }
        }
    }

    /// A double-quoted string with `\"`, `\\`, `\n` and `\t` escapes.
    fn text(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut text = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".to_owned());
            };
            self.position += 1;
            match c {
                '"' => return Ok(text),
                '\\' => {
                    let escaped = self.peek().ok_or("unterminated string")?;
                    self.position += 1;
                    text.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        '"' | '\\' => escaped,
                        other => return Err(format!("unsupported escape `\\{other}`")),
                    });
                }
                _ => text.push(c),
            }
        }
    }
}

/// The fields of one key-value history line.
struct KvLine {
    process: u64,
    completion: Completion,
    function: String,
    key: String,
    value: Option<String>,
}

fn kv_line(fields: Vec<(String, EdnValue)>) -> Result<KvLine, String> {
    let mut process = None;
    let mut completion = None;
    let mut function = None;
    let mut key = None;
    let mut value = None;
    for (name, field) in fields {
        match (name.as_str(), field) {
            ("process", EdnValue::Integer(number)) if number >= 0 => process = Some(number as u64),
            ("type", EdnValue::Keyword(kind)) => {
                completion =
                    Some(Completion::parse(&kind).ok_or_else(|| format!("unknown :type :{kind}"))?)
            }
            ("f", EdnValue::Keyword(name)) => function = Some(name),
            ("key", EdnValue::Text(text)) => key = Some(text),
            ("key", EdnValue::Integer(number)) => key = Some(number.to_string()),
            ("value", EdnValue::Text(text)) => value = Some(Some(text)),
            ("value", EdnValue::Integer(number)) => value = Some(Some(number.to_string())),
            ("value", EdnValue::Nil) => value = Some(None),
            ("process" | "type" | "f" | "key" | "value", other) => {
                return Err(format!("unexpected value {other:?} for :{name}"))
            }
            // Extra fields (:time, :index, ...) carry nothing the checker needs.
            _ => {}
        }
    }
    Ok(KvLine {
        process: process.ok_or("missing :process")?,
        completion: completion.ok_or("missing :type")?,
        function: function.ok_or("missing :f")?,
        key: key.ok_or("missing :key")?,
        value: value.ok_or("missing :value")?,
    })
}

/// Parse a key-value history: one `{:process P, :type T, :f F, :key "K", :value V}` map per
/// line (see `shared/data/README.md`). Blank lines are skipped; any other malformed line is an
/// error. `:f` is `:get`, `:put` or `:append`; `:type` is `:invoke`, `:ok`, `:fail` or `:info`.
pub fn parse_kv(text: &str) -> Result<Vec<Operation<KvInput, KvOutput>>, ParseError> {
    let mut builder = HistoryBuilder::default();
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields =
            parse_edn_map(line).map_err(|message| ParseError::new(line_number, message))?;
        let event = kv_line(fields).map_err(|message| ParseError::new(line_number, message))?;
        if event.completion == Completion::Invoke {
            let key = event.key;
            let input = match (event.function.as_str(), event.value) {
                ("get", _) => KvInput::Get { key },
                ("put", Some(value)) => KvInput::Put { key, value },
                ("append", Some(value)) => KvInput::Append { key, value },
                (function @ ("put" | "append"), None) => {
                    return Err(ParseError::new(
                        line_number,
                        format!(":{function} needs a string :value"),
                    ))
                }
                (function, _) => {
                    return Err(ParseError::new(
                        line_number,
                        format!("unknown :f :{function} (expected :get, :put or :append)"),
                    ))
                }
            };
            builder.invoke(line_number, event.process, input)?;
            continue;
        }
        let input = builder.outstanding_input(line_number, event.process, &event.function)?;
        if input.key() != event.key {
            return Err(ParseError::new(
                line_number,
                format!(
                    "process {} completes key {:?} but invoked key {:?}",
                    event.process,
                    event.key,
                    input.key()
                ),
            ));
        }
        let output = match (event.completion, input) {
            (Completion::Ok, KvInput::Get { .. }) => Some(KvOutput::Value(event.value)),
            (Completion::Ok, _) => Some(KvOutput::Ok),
            _ => None,
        };
        builder.complete(line_number, event.process, event.completion, output);
    }
    Ok(builder.finish())
}
