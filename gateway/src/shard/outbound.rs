//! A connection's pending output: references to shared frame buffers, bounded in bytes.
//! It allocates nothing for the one frame most connections have pending at a time; what it
//! allocated for more is kept while the connection is busy and freed by [`OutQueue::idle`].

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct OutQueue {
    /// The frame written next, in place.
    front: Option<Bytes>,
    /// The frames behind it, in order.
    rest: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: u32,
    /// Bytes queued and not yet written.
    bytes: u32,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len() as u32;
        match self.front {
            None => self.front = Some(frame),
            Some(_) => self.rest.push_back(frame),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The pending frames in order, the first one past what was written.
    fn frames(&self) -> impl Iterator<Item = Bytes> + '_ {
        let front = self.front.iter().map(|f| f.slice(self.offset as usize..));
        front.chain(self.rest.iter().cloned())
    }

    /// References to up to `max` pending frames, the first one past what was written, appended
    /// to `into`: for a driver whose writes complete later and must keep their buffers alive
    /// until then.
    pub fn pending_frames(&self, max: usize, into: &mut Vec<Bytes>) {
        into.extend(self.frames().take(max));
    }

    /// Fills `iov` with what is pending; returns how many slices were filled.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let front = self.front.iter().map(|f| &f[self.offset as usize..]);
        let frames = front.chain(self.rest.iter().map(|f| &f[..]));
        let mut n = 0;
        for (slot, frame) in iov.iter_mut().zip(frames) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }

    /// Records that `n` bytes were written.
    pub fn advance(&mut self, n: usize) {
        let mut n = n as u32;
        self.bytes -= n;
        while n > 0 {
            let front = self.front.as_ref().expect("advance within pending bytes").len() as u32 - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                self.front = self.rest.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.rest.is_empty() && self.rest.capacity() > 4 {
            self.rest = VecDeque::new();
        }
    }

    /// Frees what it holds for frames behind the first when nothing is pending: for the
    /// connection's keep-alive timer, so a connection that had a burst once holds nothing idle.
    pub fn idle(&mut self) {
        if self.is_empty() {
            self.rest = VecDeque::new();
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

    fn pending(q: &OutQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        let mut frames = Vec::new();
        q.pending_frames(8, &mut frames);
        let gathered: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let sliced: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(gathered, sliced, "both views agree");
        sliced
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        q.push(Bytes::from_static(b"h"));
        assert_eq!(q.bytes(), 8);
        q.advance(2);
        assert_eq!(pending(&q), b"cdefgh");
        q.advance(3);
        assert_eq!(q.bytes(), 3);
        assert_eq!(pending(&q), b"fgh");
        q.push(Bytes::from_static(b"ij"));
        q.advance(4);
        assert_eq!(pending(&q), b"j");
        q.advance(1);
        assert!(q.is_empty());
        assert_eq!(pending(&q), b"");
    }

    #[test]
    fn one_pending_frame_allocates_nothing_and_an_idle_queue_frees_what_it_had() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        assert_eq!(q.rest.capacity(), 0, "one frame is held in place");
        q.push(Bytes::from_static(b"de"));
        q.idle();
        assert!(q.rest.capacity() > 0, "nothing freed while frames are pending");
        q.advance(5);
        assert!(q.is_empty() && q.rest.capacity() > 0, "kept for the next burst");
        q.idle();
        assert_eq!(q.rest.capacity(), 0, "an idle connection holds no buffer");
    }
}
