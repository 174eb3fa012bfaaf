//! The read half's frame parser (RFC 6455 §5.2), with a read buffer that an idle socket
//! does not hold.
//!
//! fastwebsockets' reader keeps an 8 KiB buffer per socket from the handshake on, which was
//! the largest part of an idle connection's memory. This parser reads frame headers (and
//! small payloads) through a buffer on the stack of one `poll_read` call, and keeps bytes
//! on the heap only while a frame is incomplete or more frames are already read: between
//! frames of an idle socket it holds no buffer at all. A payload whose length is known is
//! read straight into a buffer of its size.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The stack buffer of one read: frame headers and small frames arrive through it.
const STACK_READ: usize = 2048;

/// WebSocket opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Op {
    fn parse(bits: u8) -> Option<Op> {
        Some(match bits {
            0x0 => Op::Continuation,
            0x1 => Op::Text,
            0x2 => Op::Binary,
            0x8 => Op::Close,
            0x9 => Op::Ping,
            0xA => Op::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Op::Close | Op::Ping | Op::Pong)
    }
}

/// One frame, unmasked.
#[derive(Debug)]
pub(super) struct RawFrame {
    pub fin: bool,
    pub op: Op,
    pub payload: Bytes,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The socket ended or failed.
    Io(std::io::Error),
    /// A frame over the message bound.
    TooLarge,
    /// Reserved bits, an unknown opcode, a fragmented or over-long control frame.
    Protocol,
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads frames from `io`; payloads over `max` bytes are refused before they are read.
pub(super) struct FrameReader<R> {
    io: R,
    /// Bytes read and not yet parsed; empty (unallocated) between frames of an idle socket.
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max,
        }
    }

    /// Reads until at least `need` bytes are buffered.
    async fn fill(&mut self, need: usize) -> Result<(), ReadError> {
        while self.buf.len() < need {
            let missing = need - self.buf.len();
            let n = if missing > STACK_READ {
                // A large payload of known length: read straight into its own buffer.
                self.buf.reserve(missing);
                self.io.read_buf(&mut self.buf).await?
            } else {
                let (io, buf) = (&mut self.io, &mut self.buf);
                poll_fn(|cx| {
                    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
                    let mut rb = ReadBuf::uninit(&mut stack);
                    ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
                    buf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok::<_, std::io::Error>(rb.filled().len()))
                })
                .await?
            };
            if n == 0 {
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(())
    }

    /// The next frame.
    pub async fn next(&mut self) -> Result<RawFrame, ReadError> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol);
        }
        let fin = b0 & 0x80 != 0;
        let op = Op::parse(b0 & 0x0F).ok_or(ReadError::Protocol)?;
        let masked = b1 & 0x80 != 0;
        let extra = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extra + if masked { 4 } else { 0 };
        if op.is_control() && !fin {
            return Err(ReadError::Protocol);
        }
        self.fill(header).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.buf[2..10]);
                u64::from_be_bytes(be)
            }
        };
        if op.is_control() && len > 125 {
            return Err(ReadError::Protocol);
        }
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.max => len,
            _ => return Err(ReadError::TooLarge),
        };
        let mask = masked.then(|| {
            let at = 2 + extra;
            [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]
        });
        self.fill(header + len).await?;
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        if let Some(mask) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i & 3];
            }
        }
        if self.buf.is_empty() {
            // Nothing more read ahead: hold no buffer until the next frame arrives.
            self.buf = BytesMut::new();
        }
        Ok(RawFrame {
            fin,
            op,
            payload: payload.freeze(),
        })
    }

    /// Bytes held in the read buffer (for tests).
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Whether a close frame's code may be sent by a peer (RFC 6455 §7.4).
pub(super) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![b0];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[tokio::test]
    async fn frames_of_every_length_class_parse_and_unmask() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let lens = [0usize, 125, 126, 65535, 65536];
        let mut wire = Vec::new();
        for len in lens {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            wire.extend(client_frame(0x82, &payload));
        }
        wire.extend(client_frame(0x89, b"hi"));
        wire.extend(client_frame(0x01, b"fragm"));
        wire.extend(client_frame(0x80, b"ent"));
        client.write_all(&wire).await.expect("write");
        let mut r = FrameReader::new(server, 1 << 20);
        for len in lens {
            let f = r.next().await.expect("frame");
            assert_eq!((f.fin, f.op, f.payload.len()), (true, Op::Binary, len));
            assert!(
                f.payload
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i % 251) as u8)
            );
        }
        let f = r.next().await.expect("ping");
        assert_eq!((f.fin, f.op, &f.payload[..]), (true, Op::Ping, &b"hi"[..]));
        let f = r.next().await.expect("first fragment");
        assert_eq!(
            (f.fin, f.op, &f.payload[..]),
            (false, Op::Text, &b"fragm"[..])
        );
        let f = r.next().await.expect("continuation");
        assert_eq!(
            (f.fin, f.op, &f.payload[..]),
            (true, Op::Continuation, &b"ent"[..])
        );
        // Everything read was parsed: the idle reader holds no buffer.
        assert_eq!(r.buffered_capacity(), 0);
        drop(client);
        assert!(matches!(r.next().await, Err(ReadError::Io(_))));
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_reassembled() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let wire = client_frame(0x81, &[b'q'; 3000]);
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(7) {
                client.write_all(chunk).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let mut r = FrameReader::new(server, 4096);
        let f = r.next().await.expect("frame");
        assert_eq!((f.op, f.payload.len()), (Op::Text, 3000));
        assert!(f.payload.iter().all(|&b| b == b'q'));
        drop(writer.await);
    }

    #[tokio::test]
    async fn bounds_and_rfc_violations_are_refused_before_the_payload() {
        async fn first(wire: Vec<u8>, max: usize) -> Result<RawFrame, ReadError> {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            client.write_all(&wire).await.expect("write");
            // Keep the client open: a refusal must not wait for the (absent) payload.
            let r = FrameReader::new(server, max).next().await;
            drop(client);
            r
        }
        // Announces 1 MiB but sends none of it: refused on the header alone.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 20).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(matches!(first(huge, 1000).await, Err(ReadError::TooLarge)));
        assert!(matches!(
            first(client_frame(0x81, &[b'x'; 11]), 10).await,
            Err(ReadError::TooLarge)
        ));
        assert!(first(client_frame(0x81, &[b'x'; 10]), 10).await.is_ok());
        for bad in [
            client_frame(0xC1, b"rsv1"),
            client_frame(0x83, b"opcode 3"),
            client_frame(0x09, b"fragmented ping"),
            client_frame(0x89, &[0; 126]),
        ] {
            assert!(matches!(first(bad, 1000).await, Err(ReadError::Protocol)));
        }
    }

    #[test]
    fn close_codes_a_peer_may_send() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }
}
