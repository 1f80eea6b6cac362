//! Checking history files, and the `skiff-sim check` command built on it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::kv::check_kv;
use crate::model::Verdict;
use crate::parse::{parse_jepsen, parse_kv, ParseError};
use crate::search::Budget;

/// A history file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A Jepsen etcd register log; the register starts absent (`nil`).
    Jepsen,
    /// EDN-like key-value maps, one per line; every key starts as the empty string.
    Kv,
}

impl Format {
    /// Every key's value before the history starts.
    pub fn initial_value(self) -> Option<String> {
        match self {
            Format::Jepsen => None,
            Format::Kv => Some(String::new()),
        }
    }

    /// Parse a whole file's text.
    pub fn parse(
        self,
        text: &str,
    ) -> Result<Vec<crate::Operation<crate::KvInput, crate::KvOutput>>, ParseError> {
        match self {
            Format::Jepsen => parse_jepsen(text),
            Format::Kv => parse_kv(text),
        }
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(name: &str) -> Result<Format, Error> {
        match name {
            "jepsen" => Ok(Format::Jepsen),
            "kv" => Ok(Format::Kv),
            _ => Err(Error::UnknownFormat(name.to_owned())),
        }
    }
}

/// A history file could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The format name is neither `jepsen` nor `kv`.
    #[error("unknown format `{0}` (expected `jepsen` or `kv`)")]
    UnknownFormat(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's contents are not a valid history.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: ParseError,
    },
}

/// Read, parse and check one history file with the default [`Budget`].
pub fn check_file(format: Format, path: &Path) -> Result<Verdict, Error> {
    check_file_with_budget(format, path, Budget::default())
}

/// [`check_file`] with an explicit budget.
pub fn check_file_with_budget(
    format: Format,
    path: &Path,
    budget: Budget,
) -> Result<Verdict, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let operations = format.parse(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(check_kv(&operations, format.initial_value(), budget))
}

/// Exit code: every file got a definite verdict.
pub const EXIT_CHECKED: i32 = 0;
/// Exit code: some file could not be read or parsed, or its search ran out of budget.
pub const EXIT_INCOMPLETE: i32 = 1;
/// Exit code: the command line is wrong (unknown format).
pub const EXIT_USAGE: i32 = 2;

/// `skiff-sim check --format jepsen|kv FILE...`: print one line per file to standard output and
/// return the process exit code. See [`run_check_command_to`].
pub fn run_check_command(format: &str, files: &[PathBuf]) -> i32 {
    let stdout = std::io::stdout();
    run_check_command_to(format, files, Budget::default(), &mut stdout.lock())
}

/// Check each file and write `<file>: linearizable`, `<file>: not linearizable`,
/// `<file>: unknown (budget exhausted)` or `<file>: error: ...` to `out`, one line per file.
///
/// The verdict is the output, not the exit code: the result is [`EXIT_CHECKED`] when every file got
/// a definite verdict (either one), [`EXIT_INCOMPLETE`] when some file failed to read or parse or
/// ran out of budget, and [`EXIT_USAGE`] for an unknown format (reported on `out` too).
pub fn run_check_command_to(
    format: &str,
    files: &[PathBuf],
    budget: Budget,
    out: &mut dyn Write,
) -> i32 {
    let format = match Format::from_str(format) {
        Ok(format) => format,
        Err(error) => {
            // Nothing useful can be done if the output itself is broken.
            let _ = writeln!(out, "error: {error}");
            return EXIT_USAGE;
        }
    };
    let mut exit_code = EXIT_CHECKED;
    for file in files {
        let line = match check_file_with_budget(format, file, budget) {
            Ok(verdict) => {
                if verdict == Verdict::Unknown {
                    exit_code = EXIT_INCOMPLETE;
                }
                format!("{}: {verdict}", file.display())
            }
            Err(error) => {
                exit_code = EXIT_INCOMPLETE;
                // Parse errors already name the file; say it once.
                match error {
                    Error::Parse { source, .. } => format!("{}: error: {source}", file.display()),
                    other => format!("{}: error: {other}", file.display()),
                }
            }
        };
        let _ = writeln!(out, "{line}");
    }
    exit_code
}
