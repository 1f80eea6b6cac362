//! Property tests: encodings round-trip, decoders never panic on arbitrary bytes, a store made
//! of arbitrary bytes opens or reports an error (never panics), and the durable store behaves
//! like the in-memory one under arbitrary operation sequences, across reopen.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;
use skiff_raft::{Entry, EntryKind, HardState, Membership, SnapshotMeta};
use skiff_storage::format::{
    check_payload, decode_record_header, decode_segment_header, decode_snapshot_header,
    decode_snapshot_trailer, decode_write, encode_record, encode_segment_header,
    encode_snapshot_header, encode_snapshot_trailer, encode_write, segment_file_name,
    snapshot_header_length, RecordType, SegmentHeader, RECORD_HEADER_BYTES,
};
use skiff_storage::{MemoryStorage, SimulatedFileSystem, SimulatedStorage, Storage, StorageConfig};

fn hard_state_strategy() -> impl Strategy<Value = HardState> {
    (
        any::<u64>(),
        proptest::option::of(1..u64::MAX),
        any::<u64>(),
    )
        .prop_map(|(term, vote, commit)| HardState { term, vote, commit })
}

fn entries_strategy() -> impl Strategy<Value = (u64, Vec<Entry>)> {
    (
        1..u64::MAX / 2,
        proptest::collection::vec(
            (
                any::<u64>(),
                0u8..3,
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..20,
        ),
    )
        .prop_map(|(first, items)| {
            let entries = items
                .into_iter()
                .enumerate()
                .map(|(position, (term, kind, data))| Entry {
                    term,
                    index: first + position as u64,
                    kind: EntryKind::from_code(kind).unwrap(),
                    data: Bytes::from(data),
                })
                .collect();
            (first, entries)
        })
}

fn membership_strategy() -> impl Strategy<Value = Membership> {
    let set = || proptest::collection::btree_set(1..u64::MAX, 0..6);
    (set(), set(), set()).prop_map(|(voters, voters_outgoing, learners)| Membership {
        voters,
        voters_outgoing,
        learners,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn write_payload_round_trips(hard_state in proptest::option::of(hard_state_strategy()), (first, entries) in entries_strategy()) {
        let payload = Bytes::from(encode_write(hard_state.as_ref(), first, &entries));
        let write = decode_write(&payload).unwrap();
        prop_assert_eq!(write.hard_state, hard_state);
        prop_assert_eq!(write.first_index, first);
        // Each entry's data is its own copy: an entry kept in memory (or a value the state
        // machine slices out of it) never holds the whole segment buffer alive.
        let range = payload.as_ptr_range();
        for entry in &write.entries {
            prop_assert!(entry.data.is_empty() || !range.contains(&entry.data.as_ptr()));
        }
        prop_assert_eq!(write.entries, entries);
    }

    #[test]
    fn record_round_trips(sequence in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, RecordType::Write, sequence, &payload);
        let header = decode_record_header(&bytes, 1 << 20).unwrap();
        prop_assert_eq!(header.sequence, sequence);
        prop_assert_eq!(header.record_type, RecordType::Write);
        prop_assert!(check_payload(&header, &bytes[RECORD_HEADER_BYTES..]).is_ok());
    }

    #[test]
    fn any_single_bit_flip_in_a_record_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..300), bit in any::<usize>()) {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, RecordType::Write, 7, &payload);
        let position = bit % (bytes.len() * 8);
        bytes[position / 8] ^= 1 << (position % 8);
        let valid = decode_record_header(&bytes, 1 << 20)
            .map(|header| {
                bytes.len() >= RECORD_HEADER_BYTES + header.payload_length as usize
                    && check_payload(&header, &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.payload_length as usize]).is_ok()
            })
            .unwrap_or(false);
        prop_assert!(!valid);
    }

    #[test]
    fn segment_header_round_trips(segment_sequence in any::<u64>(), hard_state in hard_state_strategy()) {
        let header = SegmentHeader { segment_sequence, hard_state };
        prop_assert_eq!(decode_segment_header(&encode_segment_header(&header)).unwrap(), header);
    }

    #[test]
    fn snapshot_header_and_trailer_round_trip(index in any::<u64>(), term in any::<u64>(), membership in membership_strategy(), length in any::<u64>(), crc in any::<u32>()) {
        let meta = SnapshotMeta { index, term, membership };
        let header = encode_snapshot_header(&meta);
        prop_assert_eq!(snapshot_header_length(&header).unwrap(), header.len());
        prop_assert_eq!(decode_snapshot_header(&header).unwrap(), meta);
        prop_assert_eq!(decode_snapshot_trailer(&encode_snapshot_trailer(length, crc)).unwrap(), (length, crc));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let shared = Bytes::from(bytes.clone());
        let _ = decode_write(&shared);
        let _ = decode_record_header(&bytes, 1 << 20);
        let _ = decode_segment_header(&bytes);
        let _ = snapshot_header_length(&bytes);
        let _ = decode_snapshot_header(&bytes);
        let _ = decode_snapshot_trailer(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_payloads(hard_state in proptest::option::of(hard_state_strategy()), (first, entries) in entries_strategy(), mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let mut payload = encode_write(hard_state.as_ref(), first, &entries);
        for (position, value) in mutations {
            let length = payload.len();
            payload[position % length] = value;
        }
        let keep = cut % (payload.len() + 1);
        payload.truncate(keep);
        let _ = decode_write(&Bytes::from(payload));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A directory whose segment files hold arbitrary bytes (or a valid prefix followed by
    /// arbitrary bytes) opens or fails with an error; it never panics.
    #[test]
    fn recovery_never_panics_on_arbitrary_snapshot_files(garbage in proptest::collection::vec(any::<u8>(), 0..512), offset in 0usize..200) {
        use std::io::Read;
        let config = StorageConfig::small_for_tests();
        let file_system = SimulatedFileSystem::new();
        let name = {
            let (mut storage, _) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
            let mut writer = storage.begin_snapshot(SnapshotMeta { index: 3, term: 1, membership: Membership::new([1, 2]) }).unwrap();
            std::io::Write::write_all(&mut writer, &[7u8; 100]).unwrap();
            storage.finish_snapshot(writer).unwrap();
            skiff_storage::format::snapshot_file_name(3, 1)
        };
        file_system.overwrite(&name, offset as u64, &garbage);
        if let Ok((storage, _)) = SimulatedStorage::open(file_system, config) {
            if let Ok(Some((_, mut reader))) = storage.open_snapshot() {
                let _ = reader.read_to_end(&mut Vec::new());
            }
        }
    }

    #[test]
    fn recovery_never_panics_on_arbitrary_segments(prefix_records in 0usize..40, garbage in proptest::collection::vec(any::<u8>(), 0..2048), offset in 0usize..4096, second in any::<bool>()) {
        let config = StorageConfig::small_for_tests();
        let file_system = SimulatedFileSystem::new();
        {
            let (mut storage, _) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
            for batch in 0..prefix_records as u64 {
                storage.append(&common::entries(1 + batch * 3, 3, 1, batch, 40)).unwrap();
                storage.sync().unwrap();
            }
        }
        file_system.overwrite(&segment_file_name(1), offset as u64, &garbage);
        if second && file_system.read_file(&segment_file_name(2)).is_some() {
            file_system.overwrite(&segment_file_name(2), 0, &garbage);
        }
        let _ = SimulatedStorage::open(file_system, config);
    }
}

#[derive(Clone, Debug)]
enum Operation {
    Append {
        back: u64,
        count: u64,
        length: usize,
    },
    Truncate {
        back: u64,
    },
    HardState {
        term: u64,
        commit: u64,
    },
    Sync,
    SnapshotAndCompact {
        back: u64,
    },
    Read {
        back: u64,
        count: u64,
        max_bytes: u64,
    },
    Reopen,
}

fn operation_strategy() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => (0u64..4, 1u64..30, 0usize..200).prop_map(|(back, count, length)| Operation::Append { back, count, length }),
        1 => (0u64..10).prop_map(|back| Operation::Truncate { back }),
        2 => (0u64..50, 0u64..500).prop_map(|(term, commit)| Operation::HardState { term, commit }),
        3 => Just(Operation::Sync),
        1 => (0u64..40).prop_map(|back| Operation::SnapshotAndCompact { back }),
        3 => (0u64..400, 0u64..100, 1u64..5000).prop_map(|(back, count, max_bytes)| Operation::Read { back, count, max_bytes }),
        1 => Just(Operation::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The durable store and the in-memory store agree on every answer, including after a
    /// reopen (which keeps only synced writes in both).
    #[test]
    fn durable_store_matches_memory_store(operations in proptest::collection::vec(operation_strategy(), 1..120)) {
        let config = StorageConfig::small_for_tests();
        let file_system = SimulatedFileSystem::new();
        let (mut durable, _) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
        let mut memory = MemoryStorage::new(config.clone()).unwrap();
        let mut term = 1;
        for (step, operation) in operations.into_iter().enumerate() {
            match operation {
                Operation::Append { back, count, length } => {
                    let first = (memory.last_index() + 1).saturating_sub(back).max(memory.first_index());
                    if back > 0 {
                        term += 1;
                    }
                    let batch = common::entries(first, count, term, step as u64, length);
                    prop_assert_eq!(durable.append(&batch).is_ok(), memory.append(&batch).is_ok());
                }
                Operation::Truncate { back } => {
                    let from = (memory.last_index() + 1).saturating_sub(back).max(memory.first_index());
                    prop_assert_eq!(durable.truncate(from).is_ok(), memory.truncate(from).is_ok());
                }
                Operation::HardState { term: hard_term, commit } => {
                    let hard_state = HardState { term: hard_term, vote: Some(2), commit };
                    durable.set_hard_state(hard_state).unwrap();
                    memory.set_hard_state(hard_state).unwrap();
                }
                Operation::Sync => {
                    prop_assert_eq!(durable.sync().unwrap(), memory.sync().unwrap());
                }
                Operation::SnapshotAndCompact { back } => {
                    durable.sync().unwrap();
                    memory.sync().unwrap();
                    let index = memory.last_index().saturating_sub(back).max(memory.first_index() - 1);
                    let meta = SnapshotMeta { index, term, membership: Membership { voters: BTreeSet::from([1]), ..Membership::default() } };
                    let writer = durable.begin_snapshot(meta.clone()).unwrap();
                    durable.finish_snapshot(writer).unwrap();
                    let writer = memory.begin_snapshot(meta).unwrap();
                    memory.finish_snapshot(writer).unwrap();
                    durable.compact(index).unwrap();
                    memory.compact(index).unwrap();
                }
                Operation::Read { back, count, max_bytes } => {
                    let low = memory.last_index().saturating_sub(back).max(memory.first_index());
                    let high = (low + count).min(memory.last_index() + 1);
                    let from_durable = durable.entries(low, high, max_bytes).unwrap();
                    prop_assert_eq!(&from_durable, &memory.entries(low, high, max_bytes).unwrap());
                }
                Operation::Reopen => {
                    drop(durable);
                    let (reopened, recovered) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
                    let (restarted, expected) = memory.restart();
                    prop_assert_eq!(recovered, expected);
                    durable = reopened;
                    memory = restarted;
                }
            }
            prop_assert_eq!(durable.last_index(), memory.last_index());
            prop_assert_eq!(durable.first_index(), memory.first_index());
            prop_assert_eq!(durable.durable_index(), memory.durable_index());
            prop_assert_eq!(durable.hard_state(), memory.hard_state());
        }
    }
}
