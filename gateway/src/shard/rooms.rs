//! Which connections are in which rooms, and which are a user's: member lists with O(1) joins
//! and removals. A connection's first room and its place there live in the connection itself;
//! only a connection in several rooms has an entry here for the others, so the common case
//! costs nothing beyond the member list.

use std::collections::HashMap;

use slab::Slab;

/// Member lists keyed by room or user, with O(1) removal through positions the members keep.
#[derive(Default)]
pub(super) struct Index(HashMap<u64, Vec<u32>>);

impl Index {
    /// Appends `key`; returns its position.
    pub(super) fn insert(&mut self, id: u64, key: u32) -> u32 {
        let list = self.0.entry(id).or_default();
        list.push(key);
        (list.len() - 1) as u32
    }

    /// Removes the member at `pos`; returns the key moved into `pos`, if any.
    pub(super) fn remove(&mut self, id: u64, pos: u32) -> Option<u32> {
        let list = self.0.get_mut(&id)?;
        list.swap_remove(pos as usize);
        let moved = list.get(pos as usize).copied();
        if list.is_empty() {
            self.0.remove(&id);
        }
        moved
    }

    pub(super) fn members(&self, id: u64) -> &[u32] {
        self.0.get(&id).map_or(&[], Vec::as_slice)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every member of every id.
    pub(super) fn all(&self) -> impl Iterator<Item = &u32> {
        self.0.values().flatten()
    }
}

/// Where a connection's first room is kept (in the connection).
pub(super) trait Member {
    fn first_room(&mut self) -> (&mut u64, &mut u32);
}

/// Room memberships of a shard's connections.
#[derive(Default)]
pub(super) struct Rooms {
    index: Index,
    /// The rooms after the first of connections in several: (room, position).
    more: HashMap<u32, Vec<(u64, u32)>>,
}

impl Rooms {
    pub(super) fn members(&self, room_id: u64) -> &[u32] {
        self.index.members(room_id)
    }

    /// Rooms with a member here.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// The rooms `key` is in, its first room first.
    pub(super) fn of<M: Member>(&self, conn: &mut M, key: u32) -> Vec<u64> {
        let first = *conn.first_room().0;
        let more = self.more.get(&key).into_iter().flatten().map(|(room, _)| *room);
        (first != 0).then_some(first).into_iter().chain(more).collect()
    }

    pub(super) fn contains<M: Member>(&self, conn: &mut M, key: u32, room_id: u64) -> bool {
        room_id != 0
            && (*conn.first_room().0 == room_id
                || self.more.get(&key).is_some_and(|m| m.iter().any(|(r, _)| *r == room_id)))
    }

    /// How many rooms `key` is in.
    pub(super) fn count<M: Member>(&self, conn: &mut M, key: u32) -> usize {
        (*conn.first_room().0 != 0) as usize + self.more.get(&key).map_or(0, Vec::len)
    }

    /// Adds `key` to `room_id`; false when it was in it already.
    pub(super) fn join<M: Member>(&mut self, conns: &mut Slab<M>, key: u32, room_id: u64) -> bool {
        let conn = &mut conns[key as usize];
        if room_id == 0 || self.contains(conn, key, room_id) {
            return false;
        }
        let pos = self.index.insert(room_id, key);
        let (first, first_pos) = conn.first_room();
        if *first == 0 {
            (*first, *first_pos) = (room_id, pos);
        } else {
            self.more.entry(key).or_default().push((room_id, pos));
        }
        true
    }

    /// Takes `key` out of `room_id`; false when it was not in it.
    pub(super) fn leave<M: Member>(&mut self, conns: &mut Slab<M>, key: u32, room_id: u64) -> bool {
        let (first, first_pos) = conns[key as usize].first_room();
        let pos = if room_id != 0 && *first == room_id {
            let pos = *first_pos;
            (*first, *first_pos) = (0, 0);
            pos
        } else {
            let Some(more) = self.more.get_mut(&key) else { return false };
            let Some(i) = more.iter().position(|(r, _)| *r == room_id) else { return false };
            let (_, pos) = more.swap_remove(i);
            if more.is_empty() {
                self.more.remove(&key);
            }
            pos
        };
        if let Some(moved) = self.index.remove(room_id, pos) {
            self.set_pos(&mut conns[moved as usize], moved, room_id, pos);
        }
        true
    }

    /// Takes `key` out of every room; returns them.
    pub(super) fn leave_all<M: Member>(&mut self, conns: &mut Slab<M>, key: u32) -> Vec<u64> {
        let rooms = self.of(&mut conns[key as usize], key);
        for &room in &rooms {
            self.leave(conns, key, room);
        }
        rooms
    }

    /// Records that `key` now sits at `pos` in `room_id`'s list.
    fn set_pos<M: Member>(&mut self, conn: &mut M, key: u32, room_id: u64, pos: u32) {
        let (first, first_pos) = conn.first_room();
        if *first == room_id {
            *first_pos = pos;
        } else if let Some(slot) =
            self.more.get_mut(&key).and_then(|m| m.iter_mut().find(|(r, _)| *r == room_id))
        {
            slot.1 = pos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct C(u64, u32);

    impl Member for C {
        fn first_room(&mut self) -> (&mut u64, &mut u32) {
            (&mut self.0, &mut self.1)
        }
    }

    /// Every member list agrees with what its members say of their place in it.
    fn consistent(rooms: &Rooms, conns: &mut Slab<C>) {
        for (room, list) in &rooms.index.0 {
            for (pos, &key) in list.iter().enumerate() {
                let c = &conns[key as usize];
                let at = if c.0 == *room {
                    c.1
                } else {
                    rooms.more[&key].iter().find(|(r, _)| r == room).expect("listed room is known").1
                };
                assert_eq!(at as usize, pos, "key {key} in room {room}");
            }
        }
    }

    #[test]
    fn several_rooms_per_connection_with_removals_anywhere() {
        let mut conns = Slab::new();
        let keys: Vec<u32> = (0..6).map(|_| conns.insert(C::default()) as u32).collect();
        let mut rooms = Rooms::default();
        for &k in &keys {
            assert!(rooms.join(&mut conns, k, 1));
            assert!(rooms.join(&mut conns, k, 2 + u64::from(k % 2)));
        }
        assert!(!rooms.join(&mut conns, keys[0], 1), "joining twice is a no-op");
        assert!(!rooms.join(&mut conns, keys[0], 0), "room 0 is no room");
        assert_eq!(rooms.members(1).len(), 6);
        assert_eq!((rooms.members(2).len(), rooms.members(3).len()), (3, 3));
        consistent(&rooms, &mut conns);
        assert!(rooms.leave(&mut conns, keys[0], 1), "a first room");
        assert!(!rooms.leave(&mut conns, keys[0], 1));
        assert_eq!(rooms.of(&mut conns[keys[0] as usize], keys[0]), [2]);
        assert!(rooms.join(&mut conns, keys[0], 9), "the freed first slot takes the next room");
        assert_eq!(rooms.of(&mut conns[keys[0] as usize], keys[0]), [9, 2]);
        consistent(&rooms, &mut conns);
        assert!(rooms.leave(&mut conns, keys[3], 3), "a later room");
        consistent(&rooms, &mut conns);
        let left = rooms.leave_all(&mut conns, keys[1]);
        assert_eq!(left, [1, 3]);
        consistent(&rooms, &mut conns);
        for &k in &keys {
            rooms.leave_all(&mut conns, k);
        }
        assert_eq!(rooms.len(), 0);
        assert!(rooms.more.is_empty(), "nothing left for connections in one room");
    }
}
