//! Library behind the `skiff` command. The binary only parses flags and calls in here,
//! so integration tests drive the same code in-process.

#![deny(missing_docs)]

pub mod allocator;
pub mod bench;
pub mod demo;
pub mod serve;
