//! Revisions and their on-disk encoding, as etcd's `revision`: a main
//! revision (one per write request) and a sub revision (one per change
//! within it). Encoded big-endian so that byte order is revision order; a
//! tombstone's key carries a trailing `t`.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

pub const REV_BYTES: usize = 17;
const TOMBSTONE: u8 = b't';

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    pub fn to_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(REV_BYTES + 1);
        b.extend_from_slice(&(self.main as u64).to_be_bytes());
        b.push(b'_');
        b.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            b.push(TOMBSTONE);
        }
        b
    }

    /// The smallest key of main revision `main` (for range bounds).
    pub fn start_of(main: i64) -> Vec<u8> {
        Revision::new(main, 0).to_bytes(false)
    }

    /// Decodes a key written by `to_bytes`; `None` if it is not one.
    pub fn from_bytes(b: &[u8]) -> Option<(Revision, bool)> {
        if b.len() < REV_BYTES || b.len() > REV_BYTES + 1 || b[8] != b'_' {
            return None;
        }
        let main = u64::from_be_bytes(b[0..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(b[9..17].try_into().ok()?) as i64;
        let tombstone = b.len() == REV_BYTES + 1;
        if tombstone && b[REV_BYTES] != TOMBSTONE {
            return None;
        }
        Some((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_orders_like_revisions() {
        let a = Revision::new(2, 0);
        let b = Revision::new(2, 1);
        let c = Revision::new(300, 0);
        assert!(a.to_bytes(false) < b.to_bytes(true));
        assert!(b.to_bytes(true) < c.to_bytes(false));
        assert_eq!(Revision::from_bytes(&b.to_bytes(true)), Some((b, true)));
        assert_eq!(Revision::from_bytes(&c.to_bytes(false)), Some((c, false)));
        assert_eq!(Revision::from_bytes(b"garbage"), None);
    }
}
