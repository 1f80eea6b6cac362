//! Every decoder of untrusted bytes must return an error, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use skiff_storage::format::{
    check_payload, decode_record_header, decode_segment_header, decode_snapshot_header,
    decode_snapshot_trailer, decode_write, snapshot_header_length, RECORD_HEADER_BYTES,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = decode_record_header(data, 1 << 20) {
        let end = RECORD_HEADER_BYTES.saturating_add(header.payload_length as usize);
        if let Some(payload) = data.get(RECORD_HEADER_BYTES..end) {
            let _ = check_payload(&header, payload);
        }
    }
    let _ = decode_write(&Bytes::copy_from_slice(data));
    let _ = decode_segment_header(data);
    let _ = snapshot_header_length(data);
    let _ = decode_snapshot_header(data);
    let _ = decode_snapshot_trailer(data);
});
