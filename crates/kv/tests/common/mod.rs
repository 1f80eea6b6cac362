//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use skiff_kv::*;

pub fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    }
}

pub fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: b(range_end),
        ..RangeRequest::default()
    }
}

pub fn delete(key: &str, range_end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: b(range_end),
        prev_kv: false,
    }
}

pub fn compare(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: b(key),
        range_end: Bytes::new(),
    }
}

/// A store with its own Raft index counter.
pub struct Harness {
    pub store: Store,
    pub index: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(KvConfig::default())
    }

    pub fn with_config(config: KvConfig) -> Self {
        Harness {
            store: Store::new(config).unwrap(),
            index: 0,
        }
    }

    pub fn command(&mut self, command: &Command) -> Applied {
        self.index += 1;
        let applied = self.store.apply(self.index, command);
        self.store.check_invariants();
        applied
    }

    pub fn apply(&mut self, operation: Operation) -> Applied {
        self.command(&Command::new(operation))
    }

    /// Applies and expects success: (header revision, body).
    pub fn ok(&mut self, operation: Operation) -> (i64, ResponseBody) {
        let applied = self.apply(operation);
        let body = applied
            .response
            .result
            .unwrap_or_else(|error| panic!("unexpected error {error}"));
        (applied.response.revision, body)
    }

    /// Applies and expects an error; checks that nothing changed.
    pub fn err(&mut self, operation: Operation) -> KvError {
        let before = self.store.hash_kv(0).unwrap();
        let revision = self.store.current_revision();
        let applied = self.apply(operation);
        assert!(applied.events.is_empty());
        assert_eq!(self.store.current_revision(), revision);
        assert_eq!(self.store.hash_kv(0).unwrap(), before);
        applied.response.result.expect_err("expected an error")
    }

    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        self.ok(Operation::Put(put(key, value))).0
    }

    pub fn put_lease(&mut self, key: &str, value: &str, lease: i64) -> i64 {
        self.ok(Operation::Put(PutRequest {
            lease,
            ..put(key, value)
        }))
        .0
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        let response = self.store.range(&range(key, "")).unwrap();
        assert!(response.kvs.len() <= 1);
        response.kvs.into_iter().next()
    }

    pub fn keys(&self, request: &RangeRequest) -> Vec<String> {
        let response = self.store.range(request).unwrap();
        response
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect()
    }

    pub fn txn(&mut self, txn: TxnRequest) -> (i64, TxnResponse) {
        match self.ok(Operation::Txn(txn)) {
            (revision, ResponseBody::Txn(response)) => (revision, response),
            other => panic!("not a txn response: {other:?}"),
        }
    }

    pub fn grant(&mut self, id: i64, ttl_seconds: i64, now_ms: i64) -> LeaseGrantResponse {
        match self
            .ok(Operation::LeaseGrant {
                id,
                ttl_seconds,
                now_ms,
            })
            .1
        {
            ResponseBody::LeaseGrant(response) => response,
            other => panic!("not a grant response: {other:?}"),
        }
    }
}
