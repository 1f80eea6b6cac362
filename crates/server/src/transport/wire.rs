//! The message stream's framing on plain TCP.
//!
//! Raft messages travel on a TCP connection of their own rather than on a gRPC stream: a
//! batch then costs one write and one read, with no HTTP/2 framing and no hand-offs between
//! the tasks of an HTTP/2 connection, which is most of a message's latency on one machine.
//! The connection shares the peer port with the gRPC service; the listener tells the two
//! apart by the first bytes ([`MAGIC`], which an HTTP/2 client's preface never starts with).
//!
//! A stream is the [`MAGIC`], then frames. A frame is a 4-byte big-endian length followed
//! by that many bytes of a protobuf `PeerFrame`: a hello first, then message batches (the
//! same frames as on the gRPC stream, checked the same way). The receiver never answers a
//! stream it accepts; one it refuses gets a single frame holding the reason as text, and is
//! closed.

use bytes::{Buf, BufMut, BytesMut};
use skiff_etcd_proto::prost::encoding::{encode_varint, encoded_len_varint};
use skiff_etcd_proto::prost::Message as _;
use skiff_etcd_proto::skiffpb::PeerFrame;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec;

/// The first bytes of a message stream.
pub const MAGIC: &[u8; 8] = b"SKIFFMS1";

/// Bytes of a frame's length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Appends `frame` to `buf`, length first.
pub fn put_frame(buf: &mut BytesMut, frame: &PeerFrame) {
    let len = frame.encoded_len();
    buf.reserve(LENGTH_BYTES + len);
    buf.put_u32(len as u32);
    frame
        .encode(buf)
        .expect("the buffer was reserved for the whole frame");
}

/// Appends a frame holding a batch of `messages` to `buf`: the bytes of a `PeerFrame` whose
/// `MessageBatch` holds each message's [`codec`] encoding, written straight into place.
pub fn put_batch<'a>(
    buf: &mut BytesMut,
    messages: impl Iterator<Item = &'a skiff_raft::Message> + Clone,
) {
    // PeerFrame.batch is field 2 and MessageBatch.messages field 1, both length-delimited.
    const BATCH_KEY: u8 = 2 << 3 | 2;
    const MESSAGE_KEY: u8 = 1 << 3 | 2;
    let batch_len: usize = messages
        .clone()
        .map(|message| {
            let len = codec::encoded_len(message);
            1 + encoded_len_varint(len as u64) + len
        })
        .sum();
    let frame_len = 1 + encoded_len_varint(batch_len as u64) + batch_len;
    buf.reserve(LENGTH_BYTES + frame_len);
    buf.put_u32(frame_len as u32);
    buf.put_u8(BATCH_KEY);
    encode_varint(batch_len as u64, buf);
    for message in messages {
        buf.put_u8(MESSAGE_KEY);
        encode_varint(codec::encoded_len(message) as u64, buf);
        codec::encode_into(message, buf);
    }
}

/// Appends a refusal frame holding `reason` to `buf`.
pub fn put_refusal(buf: &mut BytesMut, reason: &str) {
    buf.put_u32(reason.len() as u32);
    buf.put_slice(reason.as_bytes());
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The other side closed the connection between frames.
    #[error("closed by the other side")]
    Closed,
    /// The other side closed the connection inside a frame.
    #[error("closed inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame announced.
        want: usize,
    },
    /// A frame announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Reads length-prefixed frames from one connection, several per read when they are there.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `reader`, refusing any larger than `max_frame_bytes`; `buffered` are bytes
    /// already read from it.
    pub fn new(reader: R, buffered: BytesMut, max_frame_bytes: usize) -> FrameReader<R> {
        FrameReader {
            reader,
            buf: buffered,
            max_frame_bytes,
        }
    }

    /// The length the buffered frame announces, once its prefix is in.
    fn announced(&self) -> Option<usize> {
        let prefix = self.buf.get(..LENGTH_BYTES)?;
        Some(u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize)
    }

    /// The next frame's bytes (without the length).
    pub async fn next(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            match self.announced() {
                Some(len) if len > self.max_frame_bytes => {
                    return Err(ReadError::TooLarge {
                        len,
                        limit: self.max_frame_bytes,
                    });
                }
                Some(len) if self.buf.len() >= LENGTH_BYTES + len => {
                    self.buf.advance(LENGTH_BYTES);
                    return Ok(self.buf.split_to(len));
                }
                Some(len) => self.buf.reserve(LENGTH_BYTES + len - self.buf.len()),
                None => self.buf.reserve(64 << 10),
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Truncated {
                        got: self.buf.len().saturating_sub(LENGTH_BYTES),
                        want: self.announced().unwrap_or(LENGTH_BYTES),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_etcd_proto::skiffpb::{peer_frame, MessageBatch};

    fn batch(messages: &[&[u8]]) -> PeerFrame {
        PeerFrame {
            frame: Some(peer_frame::Frame::Batch(MessageBatch {
                messages: messages
                    .iter()
                    .map(|m| bytes::Bytes::copy_from_slice(m))
                    .collect(),
            })),
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_come_back_whole_and_in_order() {
        let frames = [batch(&[b"a"]), batch(&[b"bb", b"ccc"]), batch(&[])];
        let mut wire = BytesMut::new();
        for frame in &frames {
            put_frame(&mut wire, frame);
        }
        // Delivered one byte per read: every split point is crossed.
        let (mut tx, rx) = tokio::io::duplex(1);
        let bytes = wire.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&bytes).await.unwrap();
        });
        let mut reader = FrameReader::new(rx, BytesMut::new(), 1 << 20);
        for frame in &frames {
            let got = PeerFrame::decode(reader.next().await.unwrap().freeze()).unwrap();
            assert_eq!(&got, frame);
        }
        writer.await.unwrap();
        assert!(matches!(reader.next().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn an_oversized_or_cut_frame_is_an_error() {
        let mut wire = BytesMut::new();
        wire.put_u32(1025);
        let mut reader = FrameReader::new(&wire[..], BytesMut::new(), 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::TooLarge {
                len: 1025,
                limit: 1024
            })
        ));

        let mut wire = BytesMut::new();
        put_frame(&mut wire, &batch(&[b"hello"]));
        let cut = &wire[..wire.len() - 2];
        let mut reader = FrameReader::new(cut, BytesMut::new(), 1024);
        match reader.next().await {
            Err(ReadError::Truncated { got, want }) => assert_eq!(got + 2, want),
            other => panic!("expected a truncated frame, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_written_in_place_is_the_peer_frame_of_its_encoded_messages() {
        use skiff_raft::{Entry, EntryKind, Message, MessageBody};
        let entry = |index: u64, len: usize| Entry {
            index,
            term: 3,
            kind: EntryKind::Normal,
            data: bytes::Bytes::from(vec![7u8; len]),
        };
        let messages = [
            Message {
                from: 1,
                to: 2,
                term: 3,
                body: MessageBody::Heartbeat {
                    commit: 9,
                    sequence: 4,
                },
            },
            Message {
                from: 1,
                to: 2,
                term: 3,
                // Large enough for multi-byte lengths at every level.
                body: MessageBody::AppendEntries {
                    prev_log_index: 9,
                    prev_log_term: 3,
                    entries: vec![entry(10, 300), entry(11, 70_000)],
                    commit: 9,
                },
            },
        ];
        let mut wire = BytesMut::new();
        put_batch(&mut wire, messages.iter());
        let expected = PeerFrame {
            frame: Some(peer_frame::Frame::Batch(MessageBatch {
                messages: messages.iter().map(codec::encode).collect(),
            })),
        };
        let mut want = BytesMut::new();
        put_frame(&mut want, &expected);
        assert_eq!(wire, want);
    }

    #[test]
    fn an_http2_preface_is_not_the_magic() {
        assert_ne!(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..MAGIC.len()], MAGIC);
    }
}
