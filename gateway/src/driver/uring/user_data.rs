//! The user data of the ring's operations: what a completion is for (its [`Kind`]), and the
//! slot and generation of the connection or listener it belongs to.

/// What a completion is for: the top byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Event = 4,
    Tick = 5,
    AcceptRetry = 6,
    Cancel = 7,
}

use crate::driver::tag::{pack, unpack};

/// The user data of an operation of `kind` for `slot` (24 bits) in its generation `gen`.
pub(super) fn user_data(kind: Kind, slot: usize, gen: u32) -> u64 {
    pack(kind as u8, slot, gen)
}

/// The kind, slot and generation a completion's user data names (no kind: none the driver set).
pub(super) fn decode(data: u64) -> (Option<Kind>, usize, u32) {
    let (kind, slot, gen) = unpack(data);
    let kind = match kind {
        1 => Some(Kind::Accept),
        2 => Some(Kind::Recv),
        3 => Some(Kind::Send),
        4 => Some(Kind::Event),
        5 => Some(Kind::Tick),
        6 => Some(Kind::AcceptRetry),
        7 => Some(Kind::Cancel),
        _ => None,
    };
    (kind, slot, gen)
}
