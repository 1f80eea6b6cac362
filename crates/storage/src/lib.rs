//! Durable log store (being built).
#![deny(missing_docs)]
