//! Messages framed once per transport, for every member to get a reference to.

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::{self, Transport};

/// A batch of JSON bodies framed once per transport; every member gets a reference.
#[derive(Debug, Clone)]
pub struct Framed {
    pub ws: Bytes,
    pub tcp: Bytes,
    /// Room messages with a number in the room's history: where each message ends in each
    /// buffer, so a connection that recovered some of them can be sent the rest alone. None
    /// when no message has a number.
    marks: Option<Arc<[Mark]>>,
}

/// One message of a batch: its number in the room (0: none) and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    ws_end: u32,
    tcp_end: u32,
}

impl Framed {
    /// Frames `bodies` back to back, once for WebSocket and once for TCP.
    pub fn encode<B: AsRef<[u8]>>(bodies: &[B]) -> Self {
        Self::encode_numbered(bodies, &[])
    }

    /// As [`Framed::encode`], for room messages numbered `seqs` (same order; empty or 0: none).
    pub fn encode_numbered<B: AsRef<[u8]>>(bodies: &[B], seqs: &[u64]) -> Self {
        let size: usize = bodies.iter().map(|b| b.as_ref().len() + 10).sum();
        let (mut ws, mut tcp) = (Vec::with_capacity(size), Vec::with_capacity(size));
        let numbered = seqs.len() == bodies.len() && seqs.iter().any(|&s| s != 0);
        let mut marks = Vec::with_capacity(if numbered { bodies.len() } else { 0 });
        for (i, body) in bodies.iter().enumerate() {
            protocol::append_frame(Transport::WebSocket, body.as_ref(), &mut ws);
            protocol::append_frame(Transport::Tcp, body.as_ref(), &mut tcp);
            if numbered {
                marks.push(Mark { seq: seqs[i], ws_end: ws.len() as u32, tcp_end: tcp.len() as u32 });
            }
        }
        Self { ws: ws.into(), tcp: tcp.into(), marks: numbered.then(|| marks.into()) }
    }

    /// One frame already framed (the same bytes for either transport).
    pub fn raw(bytes: Bytes) -> Self {
        Self { ws: bytes.clone(), tcp: bytes, marks: None }
    }

    pub fn for_transport(&self, t: Transport) -> &Bytes {
        match t {
            Transport::WebSocket => &self.ws,
            Transport::Tcp => &self.tcp,
        }
    }

    /// The highest message number in the batch (0: none).
    pub fn last_seq(&self) -> u64 {
        self.marks.as_ref().map_or(0, |m| m.iter().map(|m| m.seq).max().unwrap_or(0))
    }

    /// The parts of the batch for `t` without the numbered messages up to `through` (a client
    /// got those another way): references into the shared buffer, in order. Messages without
    /// a number are kept.
    pub fn after(&self, t: Transport, through: u64) -> Vec<Bytes> {
        let buf = self.for_transport(t);
        let Some(marks) = &self.marks else { return vec![buf.clone()] };
        let mut parts = Vec::new();
        let (mut start, mut run) = (0usize, None::<usize>);
        for m in marks.iter() {
            let end = match t {
                Transport::WebSocket => m.ws_end,
                Transport::Tcp => m.tcp_end,
            } as usize;
            let keep = m.seq == 0 || m.seq > through;
            match (keep, run) {
                (true, None) => run = Some(start),
                (false, Some(from)) => {
                    parts.push(buf.slice(from..start));
                    run = None;
                }
                _ => {}
            }
            start = end;
        }
        if let Some(from) = run {
            parts.push(buf.slice(from..start));
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_batches_are_cut_at_message_boundaries() {
        let bodies = [&b"a"[..], b"bb", b"ccc", b"dddd"];
        let framed = Framed::encode_numbered(&bodies, &[5, 0, 6, 7]);
        assert_eq!(framed.last_seq(), 7);
        let whole = Framed::encode(&bodies);
        assert_eq!(framed.ws, whole.ws, "the same bytes as an unnumbered batch");
        assert_eq!(whole.last_seq(), 0);
        for t in [Transport::WebSocket, Transport::Tcp] {
            let one = |body: &[u8]| Framed::encode(&[body]).for_transport(t).clone();
            assert_eq!(framed.after(t, 0), [framed.for_transport(t).clone()]);
            assert_eq!(framed.after(t, 5), [[one(b"bb"), one(b"ccc"), one(b"dddd")].concat()]);
            assert_eq!(framed.after(t, 6), [one(b"bb"), one(b"dddd")], "the unnumbered message stays");
            assert_eq!(framed.after(t, 9), [one(b"bb")]);
        }
        let shared = framed.after(Transport::WebSocket, 5);
        assert_eq!(shared[0].as_ptr(), framed.ws[3..].as_ptr(), "a reference, not a copy");
    }
}
