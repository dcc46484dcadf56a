//! Messages framed once per transport, for every member to get a reference to.

use std::sync::Arc;

use bytes::Bytes;

use fastwebsockets::OpCode;

use crate::protocol::{self, deflate, ws, Wire};

/// A batch of JSON bodies framed once per wire format; every member gets a reference. Shared
/// by the shards a batch goes to (a clone is a reference count).
#[derive(Debug, Clone)]
pub struct Framed(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    ws: Bytes,
    tcp: Bytes,
    /// In the binary protocol: made when the gateway has a client that chose it.
    bin: Option<Bytes>,
    /// WebSocket JSON with the messages deflated (those over the size threshold): made when the
    /// gateway has a client that agreed to `permessage-deflate`.
    deflated: Option<Bytes>,
    /// Room messages with a number in the room's history: where each message ends in each
    /// buffer, so a connection that recovered some of them can be sent the rest alone. None
    /// when no message has a number.
    marks: Option<Box<[Mark]>>,
}

/// One message of a batch: its number in the room (0: none) and where it ends in each buffer
/// (WebSocket JSON, TCP, binary, deflated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: u64,
    ends: [u32; 4],
}

fn slot(wire: Wire) -> usize {
    match wire {
        Wire::WsJson => 0,
        Wire::Tcp => 1,
        Wire::WsBinary => 2,
        Wire::WsDeflate => 3,
    }
}

/// The framings a batch is made in beside gochat's JSON (WebSocket and TCP): the ones some
/// client of the gateway uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framings {
    /// The binary protocol.
    pub binary: bool,
    /// WebSocket JSON deflated, for clients that agreed to `permessage-deflate`.
    pub deflate: Option<deflate::Settings>,
}

impl Framed {
    /// Frames `bodies` back to back, once for WebSocket and once for TCP.
    pub fn encode<B: AsRef<[u8]>>(bodies: &[B]) -> Self {
        Self::encode_numbered(bodies, &[], Framings::default())
    }

    /// As [`Framed::encode`], for room messages numbered `seqs` (same order; empty or 0: none),
    /// and in the other `framings` too.
    pub fn encode_numbered<B: AsRef<[u8]>>(bodies: &[B], seqs: &[u64], framings: Framings) -> Self {
        let size: usize = bodies.iter().map(|b| b.as_ref().len() + 10).sum();
        let (mut ws, mut tcp) = (Vec::with_capacity(size), Vec::with_capacity(size));
        let mut bin = Vec::with_capacity(if framings.binary { size } else { 0 });
        let mut deflated = Vec::with_capacity(if framings.deflate.is_some() { size / 2 } else { 0 });
        let numbered = seqs.len() == bodies.len() && seqs.iter().any(|&s| s != 0);
        let mut marks = Vec::with_capacity(if numbered { bodies.len() } else { 0 });
        for (i, body) in bodies.iter().enumerate() {
            let body = body.as_ref();
            protocol::append_frame(Wire::WsJson, body, &mut ws);
            protocol::append_frame(Wire::Tcp, body, &mut tcp);
            if framings.binary {
                protocol::append_frame(Wire::WsBinary, body, &mut bin);
            }
            if let Some(settings) = framings.deflate {
                let bits = deflate::MAX_WINDOW_BITS;
                ws::encode_for(OpCode::Text, body, bits, Some(settings), &mut deflated);
            }
            if numbered {
                let ends = [ws.len() as u32, tcp.len() as u32, bin.len() as u32, deflated.len() as u32];
                marks.push(Mark { seq: seqs[i], ends });
            }
        }
        Self(Arc::new(Encoded {
            ws: ws.into(),
            tcp: tcp.into(),
            bin: framings.binary.then(|| bin.into()),
            deflated: framings.deflate.is_some().then(|| deflated.into()),
            marks: numbered.then(|| marks.into()),
        }))
    }

    /// The same batch in buffers of its own: for another shard, so that shards handing out
    /// references to one batch at once do not contend for one reference count.
    pub fn copy(&self) -> Self {
        let e = &self.0;
        Self(Arc::new(Encoded {
            ws: Bytes::copy_from_slice(&e.ws),
            tcp: Bytes::copy_from_slice(&e.tcp),
            bin: e.bin.as_deref().map(Bytes::copy_from_slice),
            deflated: e.deflated.as_deref().map(Bytes::copy_from_slice),
            marks: e.marks.clone(),
        }))
    }

    /// The batch in WebSocket text frames (gochat's JSON).
    pub fn ws(&self) -> &Bytes {
        &self.0.ws
    }

    /// The batch for `wire`. A batch framed before the gateway had a binary client is turned
    /// into the binary protocol here, for the one connection; one framed before it had a
    /// compressing client goes to it plain (a client that agreed to compression still takes
    /// uncompressed messages).
    #[inline]
    pub fn for_wire(&self, wire: Wire) -> Bytes {
        let e = &self.0;
        match wire {
            Wire::WsJson => e.ws.clone(),
            Wire::Tcp => e.tcp.clone(),
            Wire::WsDeflate => e.deflated.as_ref().unwrap_or(&e.ws).clone(),
            Wire::WsBinary => match &e.bin {
                Some(bin) => bin.clone(),
                None => self.binary_from_ws().0,
            },
        }
    }

    /// The framing a connection on `wire` gets from this batch.
    fn made(&self, wire: Wire) -> Wire {
        match wire {
            Wire::WsDeflate if self.0.deflated.is_none() => Wire::WsJson,
            wire => wire,
        }
    }

    /// The binary protocol of a batch framed without it, from its WebSocket text frames, with
    /// where each message ends.
    fn binary_from_ws(&self) -> (Bytes, Vec<u32>) {
        let (mut bin, mut ends, mut at) = (Vec::with_capacity(self.0.ws.len()), Vec::new(), 0);
        while let Some((payload, len)) = ws::server_frame_payload(&self.0.ws[at..]) {
            protocol::append_frame(Wire::WsBinary, payload, &mut bin);
            ends.push(bin.len() as u32);
            at += len;
        }
        (bin.into(), ends)
    }

    /// The highest message number in the batch (0: none).
    pub fn last_seq(&self) -> u64 {
        self.0.marks.as_ref().map_or(0, |m| m.iter().map(|m| m.seq).max().unwrap_or(0))
    }

    /// The parts of the batch for `wire` without the numbered messages up to `through` (a
    /// client got those another way): references into the shared buffer, in order. Messages
    /// without a number are kept.
    pub fn after(&self, wire: Wire, through: u64) -> Vec<Bytes> {
        let Some(marks) = &self.0.marks else { return vec![self.for_wire(wire)] };
        let wire = self.made(wire);
        let (buf, converted) = match (wire, &self.0.bin) {
            (Wire::WsBinary, None) => {
                let (bin, ends) = self.binary_from_ws();
                (bin, Some(ends))
            }
            _ => (self.for_wire(wire), None),
        };
        let mut parts = Vec::new();
        let (mut start, mut run) = (0usize, None::<usize>);
        for (i, m) in marks.iter().enumerate() {
            let end = converted.as_ref().map_or(m.ends[slot(wire)], |ends| ends[i]) as usize;
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

    fn all() -> Framings {
        Framings { binary: true, deflate: Some(deflate::Settings { min_bytes: 10, level: 1 }) }
    }

    #[test]
    fn numbered_batches_are_cut_at_message_boundaries() {
        let bodies = [
            &br#"{"op":3,"msg":"a"}"#[..],
            br#"{"op":4,"count":2}"#,
            br#"{"op":3,"msg":"c"}"#,
            br#"{"op":3}"#,
        ];
        let framed = Framed::encode_numbered(&bodies, &[5, 0, 6, 7], all());
        assert_eq!(framed.last_seq(), 7);
        let whole = Framed::encode(&bodies);
        assert_eq!(framed.ws(), whole.ws(), "the same bytes as an unnumbered batch");
        assert_eq!(whole.last_seq(), 0);
        let late = Framed::encode_numbered(&bodies, &[5, 0, 6, 7], Framings::default());
        assert_eq!(late.for_wire(Wire::WsBinary), framed.for_wire(Wire::WsBinary), "made later, the same");
        for wire in [Wire::WsJson, Wire::Tcp, Wire::WsBinary, Wire::WsDeflate] {
            // A batch made without deflate goes plain to a compressing client.
            for (f, framings) in [(&framed, all()), (&late, Framings::default())] {
                let one = |i: usize| Framed::encode_numbered(&[bodies[i]], &[], framings).for_wire(wire);
                assert_eq!(f.after(wire, 0), [f.for_wire(wire)]);
                assert_eq!(f.after(wire, 5), [[one(1), one(2), one(3)].concat()]);
                assert_eq!(f.after(wire, 6), [one(1), one(3)], "the unnumbered message stays");
                assert_eq!(f.after(wire, 9), [one(1)]);
            }
        }
        let copy = framed.copy();
        assert_ne!(copy.ws().as_ptr(), framed.ws().as_ptr(), "buffers of its own");
        for wire in [Wire::WsJson, Wire::Tcp, Wire::WsBinary, Wire::WsDeflate] {
            assert_eq!(copy.for_wire(wire), framed.for_wire(wire));
            assert_eq!(copy.after(wire, 6), framed.after(wire, 6));
        }
        let shared = framed.after(Wire::WsJson, 5);
        let first = bodies[0].len() + 2;
        assert_eq!(shared[0].as_ptr(), framed.ws()[first..].as_ptr(), "a reference, not a copy");
        let bin = framed.for_wire(Wire::WsBinary);
        assert_eq!(bin[0], 0x82, "a binary frame");
    }

    #[test]
    fn deflated_batches_compress_long_messages_only() {
        let long = format!(r#"{{"op":3,"msg":"{}"}}"#, "a lot of words, ".repeat(20));
        let bodies = [long.as_bytes(), br#"{"op":4}"#];
        let framed = Framed::encode_numbered(&bodies, &[], all());
        let deflated = framed.for_wire(Wire::WsDeflate);
        assert_eq!(deflated[0], 0xc1, "RSV1 and text: compressed");
        let (payload, len) = ws::server_frame_payload(&deflated).unwrap();
        let mut back = Vec::new();
        deflate::inflate(payload, 1 << 20, &mut back).unwrap();
        assert_eq!(back, long.as_bytes());
        assert_eq!(&deflated[len..], b"\x81\x08{\"op\":4}", "under the threshold: plain");
        assert!(deflated.len() < framed.ws().len() / 3);
        let plain = Framed::encode(&bodies);
        assert_eq!(plain.for_wire(Wire::WsDeflate), plain.ws(), "framed before any client compressed");
    }
}
