//! A connection's pending output: references to shared frame buffers, bounded in bytes.
//! Empty until a write comes back short, so an idle connection holds no write buffer.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// References to up to `max` pending frames, the first one past what was written: for a
    /// driver whose writes complete later and must keep their buffers alive until then.
    pub fn pending_frames(&self, max: usize) -> Vec<Bytes> {
        self.frames
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, f)| if i == 0 { f.slice(self.offset..) } else { f.clone() })
            .collect()
    }

    /// Fills `iov` with what is pending; returns how many slices were filled.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, frame) in self.frames.iter().enumerate().take(iov.len()) {
            let start = if i == 0 { self.offset } else { 0 };
            iov[i] = IoSlice::new(&frame[start..]);
            n += 1;
        }
        n
    }

    /// Records that `n` bytes were written.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.frames.front().expect("advance within pending bytes").len() - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 4 {
            self.frames = VecDeque::new();
        }
    }

    /// Drops everything pending and frees the queue.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_keep_order() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        assert_eq!(q.bytes(), 7);
        q.advance(2);
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        let pending: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(pending, b"cdefg");
        q.advance(3);
        assert_eq!(q.bytes(), 2);
        q.advance(2);
        assert!(q.is_empty());
    }
}
