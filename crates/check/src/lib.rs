//! Linearizability checker (being built).
#![deny(missing_docs)]
