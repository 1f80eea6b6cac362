//! Linearizability checker for client histories.
//!
//! A history is a list of [`Operation`]s: what each client asked for, what it was told, and when it
//! invoked and received the answer. The history is linearizable if every operation can be given a
//! single instant between its invoke and its return such that applying the operations one by one in
//! that order to a sequential [`Model`] reproduces every observed output.
//!
//! Why this crate exists: a Raft cluster that passes every unit test can still hand a client a stale
//! read or lose an acknowledged write. The simulator records what its clients observed and asks this
//! crate whether a correct single-copy store could have produced it.
//!
//! The search is the one described by Wing & Gong and refined by Lowe (and used by Porcupine): walk
//! the call/return events in time order, linearize any pending call whose model step accepts its
//! output, back up when a return is reached whose call is not yet linearized, and remember every
//! (set of linearized operations, model state) pair already explored so no configuration is searched
//! twice. Key-value histories are first split per key, because keys are independent registers and
//! the search cost grows exponentially with concurrency, not with length.
//!
//! Operations whose outcome is unknown (the client gave up, or the history ended first) may have
//! taken effect at any instant after their invoke, or never. The search therefore lets them be
//! linearized anywhere after their invoke and finishes as soon as every operation with a known
//! outcome is placed.
//!
//! Module map:
//! - [`model`]: the [`Model`] trait and the history types.
//! - [`search`]: the search itself, [`check_operations`] and its [`Budget`].
//! - [`kv`]: the ready-made key-value register model and [`check_kv`].
//! - [`parse`]: readers for Jepsen etcd logs and EDN-like key-value histories.
//! - [`command`]: [`check_file`] and [`run_check_command`], used by `skiff-sim check`.
#![deny(missing_docs)]

pub mod command;
pub mod kv;
mod memo;
pub mod model;
pub mod parse;
pub mod search;

pub use command::{
    check_file, check_file_with_budget, run_check_command, run_check_command_to, Error, Format,
};
pub use kv::{check_kv, check_kv_by_key, KvInput, KvModel, KvOutput};
pub use model::{Model, Operation, Verdict};
pub use parse::{parse_jepsen, parse_kv, ParseError};
pub use search::{check_operations, Budget};
