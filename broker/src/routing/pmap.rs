//! `PMap`: the persistent map used inside trie nodes, for children and subscription sets alike.
//!
//! Snapshots share nodes, so every map in a node must be cheap to clone (O(1)) and cheap to
//! change without touching the copy the published snapshot still holds. `imbl` maps do that,
//! but even an empty or one-entry `imbl` map allocates a full node (an `OrdMap` node holds 64
//! keys, about 1.5 KiB), and most trie nodes hold one child or one subscription. So a map starts
//! as a sorted `Arc<[(K, V)]>` that is copied on change (at most [`SMALL_MAX`] entries, so a copy
//! is bounded) and turns into a large persistent map once bigger, which gives O(log n) changes
//! with structural sharing. It turns back into a slice when it shrinks to half that size (the
//! gap avoids flapping between the two forms). The empty map allocates nothing.
//!
//! The large form is chosen per use ([`Large`]): the module's own [`HashTrie`] for trie
//! children and subscription sets, where large maps live and every insert copies a path (see
//! `hamt` for why not a B-tree), and an `imbl::OrdMap` for the queue names of one pattern,
//! which are few and whose sorted order keeps match results tidy.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::mem;
use std::sync::Arc;

use imbl::OrdMap;

use super::hamt::HashTrie;

/// Largest map kept as a sorted slice.
pub(super) const SMALL_MAX: usize = 16;
/// A large map shrinking to this many entries turns back into a slice.
const SHRINK_TO_SMALL: usize = SMALL_MAX / 2;

/// A large persistent map: the operations `PMap` needs from its large form.
pub(super) trait Large<K, V>: Clone + FromIterator<(K, V)> {
    /// Number of entries.
    fn len(&self) -> usize;
    /// The value for `key`.
    fn get<Q: Ord + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>;
    /// Mutable access to the value for `key`, copying shared structure on the way.
    fn get_mut<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>;
    /// Inserts or replaces; returns the previous value.
    fn insert(&mut self, key: K, value: V) -> Option<V>;
    /// Removes `key`; returns its value if it was present.
    fn remove<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>;
    /// Calls `f` on every entry (in key order for ordered maps).
    fn for_each(&self, f: impl FnMut(&K, &V));
    /// Mutable access to the value for `key`, inserting `make()` first if it is absent.
    fn get_or_insert_with<Q: Ord + Hash + ?Sized>(
        &mut self,
        key: &Q,
        make: impl FnOnce() -> (K, V),
    ) -> &mut V
    where
        K: Borrow<Q>,
    {
        if self.get(key).is_none() {
            let (k, v) = make();
            self.insert(k, v);
        }
        self.get_mut(key)
            .expect("the key is present: it was found or just inserted")
    }
}

impl<K: Ord + Clone, V: Clone> Large<K, V> for OrdMap<K, V> {
    fn len(&self) -> usize {
        OrdMap::len(self)
    }
    fn get<Q: Ord + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        OrdMap::get(self, key)
    }
    fn get_mut<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        OrdMap::get_mut(self, key)
    }
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        OrdMap::insert(self, key, value)
    }
    fn remove<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        OrdMap::remove(self, key)
    }
    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        self.iter().for_each(|(k, v)| f(k, v));
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Large<K, V> for HashTrie<K, V> {
    fn len(&self) -> usize {
        HashTrie::len(self)
    }
    fn get<Q: Ord + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        HashTrie::get(self, key)
    }
    fn get_mut<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        HashTrie::get_mut(self, key)
    }
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        HashTrie::insert(self, key, value)
    }
    fn remove<Q: Ord + Hash + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        HashTrie::remove(self, key)
    }
    fn for_each(&self, f: impl FnMut(&K, &V)) {
        HashTrie::for_each(self, f);
    }
    fn get_or_insert_with<Q: Ord + Hash + ?Sized>(
        &mut self,
        key: &Q,
        make: impl FnOnce() -> (K, V),
    ) -> &mut V
    where
        K: Borrow<Q>,
    {
        HashTrie::get_or_insert_with(self, key, make)
    }
}

/// A persistent map, sorted while small. Invariant: `Small` holds 1..=[`SMALL_MAX`] entries
/// sorted by key; `Large` holds more than [`SHRINK_TO_SMALL`] entries.
///
/// `L` is the large form: an ordered `OrdMap` by default, or a `HashTrie`, which iterates in
/// an order fixed by the content and the process's hash key.
#[derive(Clone, Default)]
pub(super) enum PMap<K, V, L = OrdMap<K, V>> {
    /// No entries.
    #[default]
    Empty,
    /// Few entries, sorted by key, copied on change.
    Small(Arc<[(K, V)]>),
    /// Many entries: a persistent map.
    Large(L),
}

impl<K, V, L> fmt::Debug for PMap<K, V, L>
where
    K: Ord + Clone + fmt::Debug,
    V: Clone + fmt::Debug,
    L: Large<K, V>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        self.for_each(|k, v| {
            map.entry(k, v);
        });
        map.finish()
    }
}

/// Position of `key` in a sorted slice of entries.
fn search<K, V, Q>(items: &[(K, V)], key: &Q) -> Result<usize, usize>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    items.binary_search_by(|(k, _)| k.borrow().cmp(key))
}

/// Mutable access to a shared slice, copying it first if another snapshot still holds it.
fn make_unique<T: Clone>(items: &mut Arc<[T]>) -> &mut [T] {
    if Arc::get_mut(items).is_none() {
        *items = items.iter().cloned().collect();
    }
    Arc::get_mut(items).expect("a freshly collected Arc has no other owner")
}

impl<K: Ord + Clone, V: Clone, L: Large<K, V>> PMap<K, V, L> {
    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        match self {
            PMap::Empty => 0,
            PMap::Small(items) => items.len(),
            PMap::Large(map) => map.len(),
        }
    }

    /// Whether the map has no entries.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, PMap::Empty)
    }

    /// The value for `key`.
    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        match self {
            PMap::Empty => None,
            PMap::Small(items) => search(items, key).ok().map(|i| &items[i].1),
            PMap::Large(map) => map.get(key),
        }
    }

    /// Whether `key` is present.
    pub(super) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Mutable access to the value for `key`, copying shared structure on the way.
    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        match self {
            PMap::Empty => None,
            PMap::Small(items) => {
                let i = search(items, key).ok()?;
                Some(&mut make_unique(items)[i].1)
            }
            PMap::Large(map) => map.get_mut(key),
        }
    }

    /// Mutable access to the value for `key`, inserting `make()` first if it is absent.
    /// `make` must return an entry whose key equals `key`.
    pub(super) fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> (K, V)) -> &mut V
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        if let PMap::Large(map) = self {
            return map.get_or_insert_with(key, make);
        }
        if !self.contains_key(key) {
            let (k, v) = make();
            self.insert(k, v);
        }
        self.get_mut(key)
            .expect("the key is present: it was found or just inserted")
    }

    /// Inserts or replaces; returns the previous value.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            PMap::Empty => {
                *self = PMap::Small(Arc::from([(key, value)]));
                None
            }
            PMap::Small(items) => match search(items, &key) {
                Ok(i) => Some(mem::replace(&mut make_unique(items)[i].1, value)),
                Err(i) if items.len() < SMALL_MAX => {
                    let mut grown = Vec::with_capacity(items.len() + 1);
                    grown.extend_from_slice(&items[..i]);
                    grown.push((key, value));
                    grown.extend_from_slice(&items[i..]);
                    *items = Arc::from(grown);
                    None
                }
                Err(_) => {
                    let mut map: L = items.iter().cloned().collect();
                    map.insert(key, value);
                    *self = PMap::Large(map);
                    None
                }
            },
            PMap::Large(map) => map.insert(key, value),
        }
    }

    /// Removes `key`; returns its value if it was present.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        match self {
            PMap::Empty => None,
            PMap::Small(items) => {
                let i = search(items, key).ok()?;
                let value = items[i].1.clone();
                if items.len() == 1 {
                    *self = PMap::Empty;
                } else {
                    let kept: Arc<[(K, V)]> = items
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, entry)| entry.clone())
                        .collect();
                    *items = kept;
                }
                Some(value)
            }
            PMap::Large(map) => {
                let value = map.remove(key)?;
                if map.len() <= SHRINK_TO_SMALL {
                    let mut items = Vec::with_capacity(map.len());
                    map.for_each(|k, v| items.push((k.clone(), v.clone())));
                    // A hash map iterates in no particular order.
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                    *self = PMap::Small(Arc::from(items));
                }
                Some(value)
            }
        }
    }

    /// Calls `f` on every entry: in key order, unless the map is a large hash map.
    pub(super) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            PMap::Empty => {}
            PMap::Small(items) => items.iter().for_each(|(k, v)| f(k, v)),
            PMap::Large(map) => map.for_each(f),
        }
    }

    /// Whether the representation is the large one (for tests).
    #[cfg(test)]
    pub(super) fn is_large(&self) -> bool {
        matches!(self, PMap::Large(_))
    }
}

/// Every entry, sorted by key (for tests).
#[cfg(test)]
fn entries<K: Ord + Clone, V: Clone, L: Large<K, V>>(map: &PMap<K, V, L>) -> Vec<(K, V)> {
    let mut out = Vec::with_capacity(map.len());
    map.for_each(|k, v| out.push((k.clone(), v.clone())));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn empty_allocates_nothing_and_finds_nothing() {
        let map: PMap<u32, u32> = PMap::default();
        assert!(map.is_empty());
        assert_eq!(map.len(), 0);
        assert_eq!(map.get(&1), None);
    }

    #[test]
    fn grows_into_large_and_shrinks_back() {
        let mut map: PMap<u32, u32> = PMap::default();
        for i in 0..=SMALL_MAX as u32 {
            assert_eq!(map.insert(i, i * 10), None);
        }
        assert!(map.is_large());
        assert_eq!(map.len(), SMALL_MAX + 1);
        for i in 0..=SMALL_MAX as u32 {
            assert_eq!(map.get(&i), Some(&(i * 10)));
        }
        let mut i = SMALL_MAX as u32;
        while map.len() > SHRINK_TO_SMALL {
            assert_eq!(map.remove(&i), Some(i * 10));
            i -= 1;
        }
        assert!(!map.is_large());
        let want: Vec<(u32, u32)> = (0..SHRINK_TO_SMALL as u32).map(|i| (i, i * 10)).collect();
        assert_eq!(entries(&map), want);
        while let Some(i) = entries(&map).first().map(|e| e.0) {
            assert_eq!(map.remove(&i), Some(i * 10));
        }
        assert!(map.is_empty());
    }

    #[test]
    fn clones_are_independent() {
        let mut a: PMap<u32, u32, HashTrie<u32, u32>> = PMap::default();
        for i in 0..40u32 {
            a.insert(i, i);
        }
        let mut small: PMap<u32, u32> = PMap::default();
        small.insert(1u32, 1u32);
        let small_before = small.clone();
        let before = a.clone();
        a.insert(100, 100);
        a.remove(&3);
        *a.get_mut(&5).expect("5 was inserted") = 55;
        small.insert(2, 2);
        *small.get_mut(&1).expect("1 was inserted") = 11;
        assert_eq!(
            entries(&before),
            (0..40).map(|i| (i, i)).collect::<Vec<_>>()
        );
        assert_eq!(entries(&small_before), vec![(1, 1)]);
        assert_eq!(entries(&small), vec![(1, 11), (2, 2)]);
        assert_eq!(a.get(&5), Some(&55));
        assert_eq!(a.get(&3), None);
    }

    /// Applies random inserts and removals to a `PMap` with large form `L` and to a `BTreeMap`,
    /// and checks they agree, and that every earlier clone kept its content.
    fn check_against_btreemap<L: Large<u8, u8>>(
        ops: Vec<(bool, u8, u8)>,
    ) -> Result<(), TestCaseError> {
        let mut map: PMap<u8, u8, L> = PMap::default();
        let mut model = BTreeMap::new();
        let mut snapshots = Vec::new();
        for (insert, k, v) in ops {
            snapshots.push((map.clone(), model.clone()));
            if insert {
                prop_assert_eq!(map.insert(k, v), model.insert(k, v));
            } else {
                prop_assert_eq!(map.remove(&k), model.remove(&k));
            }
            prop_assert_eq!(map.len(), model.len());
            prop_assert_eq!(map.is_empty(), model.is_empty());
        }
        prop_assert_eq!(entries(&map), model.into_iter().collect::<Vec<_>>());
        for (old, old_model) in snapshots {
            prop_assert_eq!(entries(&old), old_model.into_iter().collect::<Vec<_>>());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn ord_form_behaves_like_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u8>()), 0..200)) {
            check_against_btreemap::<OrdMap<u8, u8>>(ops)?;
        }

        #[test]
        fn hash_form_behaves_like_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u8>()), 0..200)) {
            check_against_btreemap::<HashTrie<u8, u8>>(ops)?;
        }
    }
}
