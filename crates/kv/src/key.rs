//! The store's own copy of a key: short keys inside the value itself, longer ones shared.
//!
//! The key map is searched on every write and read. With `Bytes` keys each comparison on the
//! way down reads the key through a pointer, a cache miss per step on a large store. A key of
//! up to [`INLINE_BYTES`] bytes is held inline, so the search compares what is already in the
//! map's node; a longer key is a `Bytes` shared with the revision index, as before.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// The longest key held inline.
pub(crate) const INLINE_BYTES: usize = 22;

#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Shared(Bytes),
}

impl Key {
    /// The store's copy of `key`: inline if short, else sharing `key`'s bytes.
    pub(crate) fn new(key: &Bytes) -> Key {
        if key.len() <= INLINE_BYTES {
            let mut bytes = [0u8; INLINE_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(key.clone())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Shared(bytes) => bytes,
        }
    }

    /// The key as a `Bytes` for a response or an event (a copy of an inline key).
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            Key::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Key::Shared(bytes) => bytes.clone(),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The order of the bytes, as `[u8]`'s (required by `Borrow<[u8]>` lookups).
impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_slice()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_shared() {
        let short = Bytes::from(vec![7u8; INLINE_BYTES]);
        assert!(matches!(Key::new(&short), Key::Inline { .. }));
        let long = Bytes::from(vec![7u8; INLINE_BYTES + 1]);
        match Key::new(&long) {
            Key::Shared(bytes) => assert_eq!(bytes.as_ptr(), long.as_ptr()),
            Key::Inline { .. } => panic!("a long key is shared"),
        }
        assert!(matches!(
            Key::new(&Bytes::new()),
            Key::Inline { len: 0, .. }
        ));
        assert!(std::mem::size_of::<Key>() <= 40);
    }

    proptest! {
        #[test]
        fn keys_order_and_compare_as_their_bytes(
            a in prop::collection::vec(any::<u8>(), 0..40),
            b in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let (ka, kb) = (Key::new(&Bytes::from(a.clone())), Key::new(&Bytes::from(b.clone())));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(ka.as_slice(), &a[..]);
            prop_assert_eq!(&ka.to_bytes()[..], &a[..]);
            let borrowed: &[u8] = ka.borrow();
            prop_assert_eq!(borrowed, &a[..]);
        }
    }
}
