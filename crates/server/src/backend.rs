//! The contract between the etcd API layer (`api`) and whatever holds the replicated state.
//!
//! The API layer converts protobuf requests to `skiff_kv` types, calls a [`Backend`], and converts
//! the answers back. The networked member (`node::NodeHandle`) implements it; tests of the API
//! layer may implement it over a single in-process `Store`.

use std::future::Future;

use skiff_kv::{KvError, Operation, Response, Store};
use tokio::sync::watch;

/// One member as `MemberList` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member ID (also its Raft node ID).
    pub id: u64,
    /// `--name`; empty while the member has never been heard from.
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`; empty while the member has never been heard from.
    pub client_urls: Vec<String>,
    /// A non-voting member.
    pub is_learner: bool,
}

/// What `Status` and response headers need to know about this member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The cluster ID (same on every member).
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    /// The leader this member knows of, 0 if none.
    pub leader: u64,
    /// This member's current Raft term.
    pub raft_term: u64,
    /// This member's commit index.
    pub raft_index: u64,
    /// This member's applied index.
    pub raft_applied_index: u64,
    /// This member is a learner.
    pub is_learner: bool,
}

/// Why a request could not be served. `Kv` errors come from the state machine; the others are
/// the member's, with etcd's strings (see [`ServerError::to_status`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The state machine refused the request.
    #[error("{0}")]
    Kv(#[from] KvError),
    /// No leader is known, and the request was **not** proposed (Unavailable).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Leadership changed while the request was pending and its entry was replaced: it was
    /// not applied.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The request was proposed but no answer came in time; it may still be applied.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Too many requests are pending (not proposed).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// MoveLeader to a member that is not a voter of this cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader sent to a member that is not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The member's own storage failed; it will stop.
    #[error("etcdserver: {0}")]
    Internal(String),
    /// A membership request names a member that is not in the cluster.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberAdd whose new ID (derived from its peer URLs and the second, as etcd's) is
    /// taken: the same URLs were added within the same second.
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    /// MemberAdd or MemberUpdate with peer URLs another member uses.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// MemberAdd or MemberUpdate with malformed peer URLs.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// The change would leave too few started voters for a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// Some voters have not been heard from lately: a change now could cost the quorum.
    #[error("etcdserver: unhealthy cluster")]
    UnhealthyCluster,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner whose log is still far behind the leader's.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a learner while the cluster has one already (etcd allows one).
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// Another membership change is not finished yet (retried until the deadline, never
    /// shown to clients).
    #[error("etcdserver: a membership change is in progress")]
    ConfigChangePending,
    /// A request a learner does not serve.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
}

impl ServerError {
    /// The gRPC status etcd would answer: its code and exact message.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            ServerError::Kv(error) => match error.grpc_code() {
                skiff_kv::GrpcCode::InvalidArgument => Code::InvalidArgument,
                skiff_kv::GrpcCode::NotFound => Code::NotFound,
                skiff_kv::GrpcCode::FailedPrecondition => Code::FailedPrecondition,
                skiff_kv::GrpcCode::OutOfRange => Code::OutOfRange,
            },
            // Unavailable invites clients to retry elsewhere, so it is kept for requests that
            // surely did not take effect (etcd-io/etcd#14890). A timed-out request may still
            // be applied: etcd's message (Go clients map errors by text) with DeadlineExceeded.
            ServerError::Timeout => Code::DeadlineExceeded,
            ServerError::NoLeader | ServerError::LeaderChanged | ServerError::Stopped => {
                Code::Unavailable
            }
            ServerError::TooManyRequests => Code::ResourceExhausted,
            ServerError::BadLeaderTransferee
            | ServerError::NotLeader
            | ServerError::PeerUrlExists
            | ServerError::MemberIdExists
            | ServerError::NotEnoughStartedMembers
            | ServerError::MemberNotLearner
            | ServerError::LearnerNotReady
            | ServerError::TooManyLearners => Code::FailedPrecondition,
            ServerError::MemberNotFound => Code::NotFound,
            ServerError::MemberBadUrls => Code::InvalidArgument,
            ServerError::UnhealthyCluster
            | ServerError::NotSupportedForLearner
            | ServerError::ConfigChangePending => Code::Unavailable,
            ServerError::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, self.to_string())
    }
}

impl From<ServerError> for tonic::Status {
    fn from(error: ServerError) -> tonic::Status {
        error.to_status()
    }
}

/// The replicated store as the API layer sees it. Cheap to clone (a handle).
pub trait Backend: Clone + Send + Sync + 'static {
    /// Replicates `operation` through the log and answers once **this member** has applied it.
    /// Lease operations carry `now_ms`: the backend overwrites it with the leader's clock, and
    /// fills a zero `LeaseGrant` id with a fresh one. `Range` is not proposed this way (see
    /// [`Backend::read_barrier`]).
    fn propose(
        &self,
        operation: Operation,
    ) -> impl Future<Output = Result<Response, ServerError>> + Send;

    /// A linearizable read barrier (ReadIndex): resolves once this member has applied
    /// everything committed at the moment of the call, so a read that follows sees every write
    /// acknowledged before the call.
    fn read_barrier(&self) -> impl Future<Output = Result<(), ServerError>> + Send;

    /// Runs `read` on the applied state (a shared lock: keep it short, never await inside).
    fn read<R>(&self, read: impl FnOnce(&Store) -> R) -> R;

    /// A directory for scratch files that are unlinked as soon as they are made (a client's
    /// snapshot is written to one before it is sent). A member's is the one its value log is
    /// in, on the data directory's file system.
    fn scratch_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
    }

    /// The applied revision, updated after every applied batch that changed it or the compact
    /// revision. Watchers wait on it and then fetch `Store::events_since`.
    fn revisions(&self) -> watch::Receiver<i64>;

    /// This member's view of the cluster.
    fn status(&self) -> NodeStatus;

    /// The members of the cluster.
    fn members(&self) -> Vec<MemberInfo>;

    /// The leader's clock in milliseconds as this member estimates it (for lease TTLs).
    fn now_ms(&self) -> i64;

    /// A membership change (etcd's Cluster API), answered once this member has applied it:
    /// the member it concerns (the new one for an add) and the members afterwards.
    fn change_members(
        &self,
        request: crate::members::MemberRequest,
    ) -> impl Future<Output = Result<(u64, Vec<MemberInfo>), ServerError>> + Send {
        let _ = request;
        async {
            Err(ServerError::Internal(
                "membership changes are not supported by this backend".into(),
            ))
        }
    }

    /// Leadership transfer to `target` (this member must be the leader); resolves once the
    /// target leads or the attempt failed.
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<(), ServerError>> + Send;

    /// Size of the store in bytes, as `Status.dbSize` reports it: the store's estimate of its
    /// data plus a fixed header, so that like etcd's it is never zero (clients print it and
    /// JSON encoders drop zero fields).
    fn db_size(&self) -> i64 {
        const HEADER_BYTES: i64 = 4096;
        self.read(|store| store.approximate_size_bytes() as i64) + HEADER_BYTES
    }
}
