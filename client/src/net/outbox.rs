//! The connection's outgoing bytes: one bounded buffer that callers encode frames straight
//! into and that the writer task takes whole, to hand to QUIC without copying.
//!
//! [`OutBuffer`] is the plain state machine (no locks, no tasks, no I/O), tested here;
//! [`super::RelayConnection`] wraps it in a mutex with two `Notify`s (one wakes the writer
//! task, one wakes callers waiting for room).
//!
//! Per frame this costs one encode into the shared buffer under the lock, and nothing
//! else: no allocation, no channel, no copy. Per batch (everything encoded while the
//! writer was busy) it costs one wake of the writer at most and one `write_chunk`.

use sealpost_protocol::wire::{encode_frame_into, Frame};
use sealpost_protocol::EncodeError;

/// Bytes of encoded frames a connection holds for its writer task before callers wait.
/// A caller is let in while the buffer holds less than this, so it can reach this plus one
/// frame (at most [`FRAME_PREFIX_LEN`](sealpost_protocol::wire::FRAME_PREFIX_LEN) +
/// [`MAX_FRAME_LEN`](sealpost_protocol::wire::MAX_FRAME_LEN), or one `send_raw` payload).
pub const OUTBOX_BYTES: usize = 1024 * 1024;

/// Smallest capacity a fresh batch buffer gets.
const MIN_BATCH_CAPACITY: usize = 4 * 1024;

/// What became of an append.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Append {
    /// Appended; `wake_writer` if the writer task waits for bytes and must be woken.
    Done { wake_writer: bool },
    /// The buffer is full: wait for the writer to take it, then try again.
    Full,
    /// The connection's writer is gone: nothing more will be sent.
    Closed,
}

/// What the writer task found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// Everything buffered, in order; `wake_senders` if callers wait for room.
    Batch { bytes: Vec<u8>, wake_senders: bool },
    /// Nothing buffered: the writer waits to be woken (the next append says so).
    Empty,
    /// Closed and nothing left to write: the writer finishes the stream.
    Closed,
}

/// The buffer behind [`Append`] and [`Take`].
#[derive(Debug)]
pub(super) struct OutBuffer {
    buf: Vec<u8>,
    limit: usize,
    /// Capacity a fresh buffer reserves on its first append (from the last batch's size).
    next_capacity: usize,
    /// The writer found nothing to take and waits to be woken.
    writer_idle: bool,
    /// A caller found the buffer full and waits for the writer to take it.
    senders_waiting: bool,
    closed: bool,
}

impl OutBuffer {
    /// An empty buffer that lets callers in while it holds less than `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            next_capacity: MIN_BATCH_CAPACITY.min(limit.max(1)),
            writer_idle: false,
            senders_waiting: false,
            closed: false,
        }
    }

    /// Bytes buffered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    fn admit(&mut self) -> Option<Append> {
        if self.closed {
            return Some(Append::Closed);
        }
        if self.buf.len() >= self.limit {
            self.senders_waiting = true;
            return Some(Append::Full);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.next_capacity);
        }
        None
    }

    fn appended(&mut self) -> Append {
        Append::Done {
            wake_writer: std::mem::take(&mut self.writer_idle),
        }
    }

    /// Encode `frame` (length prefix and CBOR) at the end of the buffer. A frame that
    /// does not encode leaves the buffer as it was.
    pub(super) fn append_frame(&mut self, frame: &Frame) -> Result<Append, EncodeError> {
        if let Some(refused) = self.admit() {
            return Ok(refused);
        }
        encode_frame_into(frame, &mut self.buf)?;
        Ok(self.appended())
    }

    /// Append bytes as they are (adversarial tests send malformed frames this way).
    pub(super) fn append_raw(&mut self, bytes: &[u8]) -> Append {
        if let Some(refused) = self.admit() {
            return refused;
        }
        self.buf.extend_from_slice(bytes);
        self.appended()
    }

    /// Take everything buffered (the writer task). Buffered bytes are still handed out
    /// after [`OutBuffer::close`], then `Closed`.
    pub(super) fn take(&mut self) -> Take {
        if self.buf.is_empty() {
            if self.closed {
                return Take::Closed;
            }
            self.writer_idle = true;
            return Take::Empty;
        }
        let bytes = std::mem::take(&mut self.buf);
        // The next batch starts with room for one like this one (rounded up), so a
        // steady stream of batches does not grow each buffer from scratch.
        self.next_capacity = bytes
            .len()
            .checked_next_power_of_two()
            .unwrap_or(self.limit)
            .clamp(MIN_BATCH_CAPACITY.min(self.limit.max(1)), self.limit.max(1));
        Take::Batch {
            bytes,
            wake_senders: std::mem::take(&mut self.senders_waiting),
        }
    }

    /// Refuse further appends (the writer failed, or the connection was dropped).
    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    /// Drop what is buffered (the writer failed: it can never be sent).
    pub(super) fn discard(&mut self) {
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_protocol::envelope::MessageId;
    use sealpost_protocol::wire::{self, FrameBody, FrameReader, FRAME_PREFIX_LEN, MAX_FRAME_LEN};

    fn ack(n: u8) -> Frame {
        Frame::new(
            0,
            FrameBody::Ack {
                message_id: MessageId([n; 16]),
            },
        )
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut reader = FrameReader::new();
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = reader.push(rest).unwrap();
            rest = &rest[n..];
            while let Some(f) = reader.next_frame().unwrap() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn encodes_the_same_bytes_as_encode_frame() {
        let frames = [
            ack(7),
            Frame::new(42, FrameBody::Ping),
            Frame::new(u64::MAX, FrameBody::error(wire::ErrorCode::Internal, "x")),
        ];
        let mut out = b"before".to_vec();
        for f in &frames {
            let start = out.len();
            encode_frame_into(f, &mut out).unwrap();
            assert_eq!(&out[start..], wire::encode_frame(f).unwrap().as_slice());
        }
        assert!(out.starts_with(b"before"));
    }

    #[test]
    fn an_oversized_frame_is_refused_and_leaves_the_buffer_as_it_was() {
        let chunk = |len: usize| Frame::new(0, FrameBody::BlobChunk { data: vec![7; len] });
        // Encoding does not check field bounds, so a chunk this long makes a frame over
        // MAX_FRAME_LEN; the public encoder refuses it the same way.
        let huge = chunk(MAX_FRAME_LEN);
        assert!(matches!(
            wire::encode_frame(&huge),
            Err(EncodeError::TooLarge { .. })
        ));
        let mut b = OutBuffer::new(OUTBOX_BYTES);
        assert!(matches!(
            b.append_frame(&ack(1)).unwrap(),
            Append::Done { .. }
        ));
        let before = b.len();
        assert!(matches!(
            b.append_frame(&huge),
            Err(EncodeError::TooLarge { got, max: MAX_FRAME_LEN, .. }) if got > MAX_FRAME_LEN
        ));
        assert_eq!(b.len(), before);
        // The largest frame that fits is taken, and decodes.
        let overhead = wire::encode_frame(&chunk(0)).unwrap().len() - FRAME_PREFIX_LEN;
        let fits = chunk(MAX_FRAME_LEN - overhead - 8);
        assert!(matches!(
            b.append_frame(&fits).unwrap(),
            Append::Done { .. }
        ));
        let Take::Batch { bytes, .. } = b.take() else {
            panic!("expected a batch");
        };
        assert_eq!(decode_all(&bytes), vec![ack(1), fits]);
    }

    #[test]
    fn many_frames_come_out_as_one_batch_in_order() {
        let mut b = OutBuffer::new(OUTBOX_BYTES);
        // The writer looked first and went idle: the first append wakes it, later ones
        // do not (it has not taken anything yet).
        assert_eq!(b.take(), Take::Empty);
        assert_eq!(
            b.append_frame(&ack(0)).unwrap(),
            Append::Done { wake_writer: true }
        );
        for n in 1..100u8 {
            assert_eq!(
                b.append_frame(&ack(n)).unwrap(),
                Append::Done { wake_writer: false }
            );
        }
        let Take::Batch {
            bytes,
            wake_senders,
        } = b.take()
        else {
            panic!("expected a batch");
        };
        assert!(!wake_senders);
        let frames = decode_all(&bytes);
        assert_eq!(frames.len(), 100);
        for (n, f) in frames.iter().enumerate() {
            assert_eq!(f, &ack(n as u8));
        }
        // Busy writer (it took a batch and has not come back): appends do not wake it.
        assert_eq!(
            b.append_frame(&ack(1)).unwrap(),
            Append::Done { wake_writer: false }
        );
        assert!(matches!(b.take(), Take::Batch { .. }));
        assert_eq!(b.take(), Take::Empty);
    }

    #[test]
    fn a_full_buffer_makes_callers_wait_until_the_writer_takes_it() {
        let frame_len = wire::encode_frame(&ack(0)).unwrap().len();
        // Room for three frames before the limit is reached.
        let limit = 3 * frame_len;
        let mut b = OutBuffer::new(limit);
        for n in 0..3 {
            assert!(matches!(
                b.append_frame(&ack(n)).unwrap(),
                Append::Done { .. }
            ));
        }
        assert_eq!(b.append_frame(&ack(9)).unwrap(), Append::Full);
        assert_eq!(b.append_raw(b"raw"), Append::Full);
        assert_eq!(
            b.len(),
            limit,
            "a refused append leaves the buffer as it was"
        );
        let Take::Batch {
            bytes,
            wake_senders,
        } = b.take()
        else {
            panic!("expected a batch");
        };
        assert!(wake_senders, "the writer must wake the waiting callers");
        assert_eq!(decode_all(&bytes).len(), 3);
        assert!(matches!(
            b.append_frame(&ack(9)).unwrap(),
            Append::Done { .. }
        ));
        // The waiters were woken once; the next take has nobody to wake.
        assert!(matches!(
            b.take(),
            Take::Batch {
                wake_senders: false,
                ..
            }
        ));
    }

    #[test]
    fn below_the_limit_one_more_frame_is_let_in() {
        let frame_len = wire::encode_frame(&ack(0)).unwrap().len();
        let mut b = OutBuffer::new(frame_len + 1);
        assert!(matches!(
            b.append_frame(&ack(0)).unwrap(),
            Append::Done { .. }
        ));
        // One byte under the limit: let in, and the buffer may exceed it by this frame.
        assert!(matches!(
            b.append_frame(&ack(1)).unwrap(),
            Append::Done { .. }
        ));
        assert_eq!(b.len(), 2 * frame_len);
        assert_eq!(b.append_frame(&ack(2)).unwrap(), Append::Full);
    }

    #[test]
    fn closed_refuses_appends_but_hands_out_what_is_buffered() {
        let mut b = OutBuffer::new(OUTBOX_BYTES);
        assert!(matches!(b.append_raw(b"abcd"), Append::Done { .. }));
        b.close();
        assert_eq!(b.append_raw(b"more"), Append::Closed);
        assert_eq!(b.append_frame(&ack(1)).unwrap(), Append::Closed);
        assert_eq!(
            b.take(),
            Take::Batch {
                bytes: b"abcd".to_vec(),
                wake_senders: false
            }
        );
        assert_eq!(b.take(), Take::Closed);

        let mut b = OutBuffer::new(OUTBOX_BYTES);
        assert!(matches!(b.append_raw(b"abcd"), Append::Done { .. }));
        b.close();
        b.discard();
        assert_eq!(b.take(), Take::Closed);
    }
}
