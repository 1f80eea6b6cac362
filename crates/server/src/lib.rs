//! skiff-server: a Skiff member. One event loop per member owns the consensus core
//! (`skiff-raft`); the log is written on its own thread with group commit; committed entries are
//! applied to `skiff-kv` off the event loop; peers talk over gRPC streams; clients speak etcd's
//! v3 gRPC API. This is the only crate that does network I/O.

pub mod api;
pub mod backend;
pub mod bootstrap;
pub mod client_server;
pub mod config;
pub mod http;
pub mod ids;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod node;
pub mod server;
pub mod transport;

pub use api::{client_router, ApiLimits};
pub use backend::{Backend, MemberInfo, NodeStatus, ServerError};
pub use client_server::ClientService;
pub use config::{ClusterState, InitialMember, ServerConfig};
pub use node::{Node, NodeHandle, NodeOptions};
pub use server::{run, RunError};
