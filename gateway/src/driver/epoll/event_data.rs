//! The data of the epoll registrations: what an event is for (its [`Kind`]), and the slot and
//! generation of the connection, lingering socket or listener it belongs to.

/// What an event is for: the top byte of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A connection; its slot is the shard's key.
    Conn = 1,
    /// A socket we closed, waiting for the peer's close; its slot is in the driver's `lingering`.
    Linger = 2,
    Listener = 3,
    /// The inbox's eventfd.
    Inbox = 4,
}

pub(super) use crate::driver::tag::MAX_SLOTS;
use crate::driver::tag::{pack, unpack};

/// The data of a registration of `kind` for `slot` (24 bits) in its generation `gen`.
pub(super) fn event_data(kind: Kind, slot: usize, gen: u32) -> u64 {
    pack(kind as u8, slot, gen)
}

/// The kind, slot and generation an event's data names (no kind: none the driver set).
pub(super) fn decode(data: u64) -> (Option<Kind>, usize, u32) {
    let (kind, slot, gen) = unpack(data);
    let kind = match kind {
        1 => Some(Kind::Conn),
        2 => Some(Kind::Linger),
        3 => Some(Kind::Listener),
        4 => Some(Kind::Inbox),
        _ => None,
    };
    (kind, slot, gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (kind, slot, gen) in [
            (Kind::Conn, 0, 0),
            (Kind::Linger, MAX_SLOTS - 1, u32::MAX),
            (Kind::Listener, 3, 7),
            (Kind::Inbox, 0, 1),
        ] {
            assert_eq!(decode(event_data(kind, slot, gen)), (Some(kind), slot, gen));
        }
        assert_eq!(decode(0).0, None);
    }
}
