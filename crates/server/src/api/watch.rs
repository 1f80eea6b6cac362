//! The `Watch` service: one bidirectional stream per client carrying many watchers.
//!
//! Each stream is served by one task that owns its watchers. It wakes when a request arrives, when
//! the applied revision changes ([`Backend::revisions`]), or when the progress-notify interval
//! passes, and then brings every watcher up to date by fetching `Store::events_since` under a
//! short [`Backend::read`] (never across an await). One task per stream keeps the order etcd
//! promises: a watcher's `created` response comes before its events, its events come in revision
//! order, and nothing follows its `canceled` response.

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::watch_server::Watch;
use skiff_etcd_proto::mvccpb;
use skiff_etcd_proto::prost::Message;
use skiff_kv::{EventType, WatchEvents};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{convert, header, ApiLimits};
use crate::backend::{Backend, ServerError};

/// etcd's `InvalidWatchID`: the watch ID of failed creates and of progress responses.
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's `mvcc.ErrWatcherDuplicateID` text.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's `mvcc.ErrEmptyWatcherRange` text.
const EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";
/// The metadata key of etcd's `rpctypes.MetadataRequireLeaderKey`.
const HAS_LEADER_KEY: &str = "hasleader";
/// Responses queued per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 128;

/// etcd's `Watch` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct WatchService<B> {
    backend: B,
    limits: ApiLimits,
}

impl<B: Backend> WatchService<B> {
    /// The service over `backend`.
    pub fn new(backend: B, limits: ApiLimits) -> Self {
        WatchService { backend, limits }
    }
}

/// The stream of watch responses.
pub type WatchResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Watch for WatchService<B> {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // etcd's interceptor: a client that requires a leader (etcdctl and clientv3 send
        // `hasleader: true` on watch streams) is refused while the member knows none.
        let requires_leader = request
            .metadata()
            .get(HAS_LEADER_KEY)
            .is_some_and(|value| value.as_bytes() == b"true");
        if requires_leader && self.backend.status().leader == 0 {
            return Err(ServerError::NoLeader.into());
        }
        let inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let stream = WatchStream {
            backend: self.backend.clone(),
            limits: self.limits.clone(),
            sender,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// One watcher of a stream.
#[derive(Debug)]
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    /// The first revision not yet delivered.
    next_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

/// The client went away: the stream task ends.
struct Closed;

/// The state of one watch stream, owned by its task.
struct WatchStream<B> {
    backend: B,
    limits: ApiLimits,
    sender: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    /// The next ID to try when the client lets the server pick (etcd starts at 0).
    next_id: i64,
}

impl<B: Backend> WatchStream<B> {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let mut revisions = self.backend.revisions();
        let period = self.limits.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A client that half-closes its side keeps its watchers, as in etcd.
        let mut inbound_open = true;
        loop {
            let sender = self.sender.clone();
            let outcome = tokio::select! {
                request = inbound.next(), if inbound_open => match request {
                    Some(Ok(request)) => {
                        let known = *revisions.borrow_and_update();
                        self.handle(request, known).await
                    }
                    Some(Err(status)) => {
                        let _ = self.sender.send(Err(super::go_status(status))).await;
                        Err(Closed)
                    }
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => {
                        // The backend is gone: the member is stopping.
                        let _ = self.sender.send(Err(ServerError::Stopped.into())).await;
                        Err(Closed)
                    }
                },
                _ = ticker.tick() => {
                    let known = *revisions.borrow_and_update();
                    self.progress_notify(known).await
                }
                _ = sender.closed() => Err(Closed),
            };
            if outcome.is_err() {
                return;
            }
            let known = *revisions.borrow_and_update();
            if self.sync_all(known).await.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.sender.send(Ok(response)).await.map_err(|_| Closed)
    }

    fn current_revision(&self) -> i64 {
        self.backend.read(|store| store.current_revision())
    }

    async fn handle(&mut self, request: pb::WatchRequest, known: i64) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let revision = self.current_revision();
                    self.send(pb::WatchResponse {
                        header: header(&self.backend, revision),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await
                } else {
                    // etcd ignores a cancel of an unknown watcher.
                    Ok(())
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Deliver everything first, so the progress revision is a true bookmark.
                self.sync_all(known).await?;
                let current = self.current_revision();
                let revision = self
                    .watchers
                    .values()
                    .map(|watcher| watcher.next_revision - 1)
                    .min()
                    .unwrap_or(current)
                    .min(current);
                self.send(pb::WatchResponse {
                    header: header(&self.backend, revision),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        use pb::watch_create_request::FilterType;
        let current = self.current_revision();
        let refuse = |reason: &str| pb::WatchResponse {
            header: header(&self.backend, current),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        let whole_tail = create.range_end.as_ref() == b"\0";
        if !create.range_end.is_empty() && !whole_tail && create.key >= create.range_end {
            return self.send(refuse(EMPTY_WATCHER_RANGE)).await;
        }
        if self.watchers.len() >= self.limits.max_watchers_per_stream {
            let reason = format!(
                "skiff: too many watchers on this stream (at most {})",
                self.limits.max_watchers_per_stream
            );
            return self.send(refuse(&reason)).await;
        }
        let id = if create.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&create.watch_id) {
            return self.send(refuse(DUPLICATE_WATCH_ID)).await;
        } else {
            create.watch_id
        };
        let filter = |kind: FilterType| create.filters.contains(&(kind as i32));
        let watcher = Watcher {
            no_put: filter(FilterType::Noput),
            no_delete: filter(FilterType::Nodelete),
            key: create.key,
            range_end: create.range_end,
            next_revision: if create.start_revision > 0 {
                create.start_revision
            } else {
                current + 1
            },
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
        };
        // The created response goes out before the watcher is registered, so its events follow it.
        self.send(pb::WatchResponse {
            header: header(&self.backend, current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, watcher);
        Ok(())
    }

    /// Sends each watcher the events up to the current revision, and cancels watchers whose next
    /// revision was compacted. `known` is the applied revision last seen on the revision channel:
    /// a watcher already past it has nothing to fetch.
    async fn sync_all(&mut self, known: i64) -> Result<(), Closed> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.next_revision <= known)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.sync_one(id).await?;
        }
        Ok(())
    }

    async fn sync_one(&mut self, id: i64) -> Result<(), Closed> {
        loop {
            let Some(watcher) = self.watchers.get(&id) else {
                return Ok(());
            };
            let (fetched, current) = self.backend.read(|store| {
                (
                    store.events_since(&watcher.key, &watcher.range_end, watcher.next_revision, 0),
                    store.current_revision(),
                )
            });
            match fetched {
                WatchEvents::Compacted { compact_revision } => {
                    self.watchers.remove(&id);
                    return self
                        .send(pb::WatchResponse {
                            header: header(&self.backend, current),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            ..Default::default()
                        })
                        .await;
                }
                WatchEvents::Events {
                    events,
                    next_revision,
                } => {
                    let events: Vec<mvccpb::Event> = events
                        .into_iter()
                        .filter(|event| match event.kind {
                            EventType::Put => !watcher.no_put,
                            EventType::Delete => !watcher.no_delete,
                        })
                        .map(|event| convert::event(event, watcher.prev_kv))
                        .collect();
                    let fragment = watcher.fragment;
                    let done = next_revision > current;
                    if let Some(watcher) = self.watchers.get_mut(&id) {
                        watcher.next_revision = next_revision;
                    }
                    if !events.is_empty() {
                        let response = pb::WatchResponse {
                            header: header(&self.backend, current),
                            watch_id: id,
                            events,
                            ..Default::default()
                        };
                        if fragment {
                            for part in fragments(response, self.limits.max_request_bytes) {
                                self.send(part).await?;
                            }
                        } else {
                            self.send(response).await?;
                        }
                    }
                    if done {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends an empty response to every watcher created with `progress_notify`, at the revision it
    /// has been brought up to (everything at or below it was delivered).
    async fn progress_notify(&mut self, known: i64) -> Result<(), Closed> {
        if !self
            .watchers
            .values()
            .any(|watcher| watcher.progress_notify)
        {
            return Ok(());
        }
        self.sync_all(known).await?;
        let current = self.current_revision();
        let notices: Vec<(i64, i64)> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.progress_notify)
            .map(|(id, watcher)| (*id, (watcher.next_revision - 1).min(current)))
            .collect();
        for (id, revision) in notices {
            self.send(pb::WatchResponse {
                header: header(&self.backend, revision),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

/// Splits a response whose encoding exceeds `max_bytes` into several, each with as many events as
/// fit (at least one), all but the last marked `fragment`, as etcd does for watchers created with
/// `fragment`.
pub fn fragments(response: pb::WatchResponse, max_bytes: usize) -> Vec<pb::WatchResponse> {
    if response.events.len() < 2 || response.encoded_len() <= max_bytes {
        return vec![response];
    }
    let base = pb::WatchResponse {
        events: Vec::new(),
        ..response.clone()
    };
    let base_len = base.encoded_len();
    let mut parts = Vec::new();
    let mut current = base.clone();
    let mut current_len = base_len;
    for event in response.events {
        let event_len = event.encoded_len() + 8;
        if !current.events.is_empty() && current_len + event_len > max_bytes {
            let mut full = std::mem::replace(&mut current, base.clone());
            full.fragment = true;
            parts.push(full);
            current_len = base_len;
        }
        current_len += event_len;
        current.events.push(event);
    }
    parts.push(current);
    parts
}
