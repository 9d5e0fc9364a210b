//! [`HashTrie`]: a small persistent hash array mapped trie, the large form of a trie node's
//! children and of its subscription sets.
//!
//! Every change to the routing table copies the path it touches, so what matters for a node with
//! thousands of children (`_INBOX.<id>`, `orders.<id>`) or subscribers (`broadcast.>`) is how
//! much one insert copies and later frees. An `imbl::OrdMap` path is two or three 64-key B-tree
//! nodes whose every key is cloned, and `imbl`'s generic chunk code is slow in unoptimized
//! builds: profiling the 100,000-insert test showed those copies dominating (about twice the
//! instructions of this trie in a debug build). This trie copies at most 32 slots per level, each
//! a single `Arc`, over about log32(n) levels.
//!
//! Keys are hashed with SipHash under one random key per process (`RandomState`), so clients
//! choosing subject tokens cannot aim collisions at it. Five hash bits pick the slot at each
//! level; keys whose full 64-bit hashes are equal share a bucket, so the trie is at most 13
//! levels deep whatever the keys. A branch left holding a single leaf is folded back into its
//! parent, so a removal leaves the same shape a fresh build would. Iteration order is
//! unspecified.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::mem;
use std::sync::{Arc, OnceLock};

/// Hash bits consumed per level.
const BITS: u32 = 5;
/// Mask for one level's bits.
const MASK: u64 = (1 << BITS) - 1;

/// The key's hash under this process's random SipHash key.
fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(key)
}

/// The bit for `hash` at the level starting at `shift`.
fn bit_at(hash: u64, shift: u32) -> u32 {
    1 << ((hash >> shift) & MASK)
}

/// Index of the slot for `bit` in a node with `bitmap`.
fn position(bitmap: u32, bit: u32) -> usize {
    (bitmap & (bit - 1)).count_ones() as usize
}

/// The entries whose keys share one full hash: almost always exactly one.
#[derive(Clone, Debug)]
enum Bucket<K, V> {
    /// The usual case.
    One(K, V),
    /// Keys with equal 64-bit hashes (at least two).
    Many(Vec<(K, V)>),
}

impl<K: Eq + Clone, V: Clone> Bucket<K, V> {
    fn get<Q: Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match self {
            Bucket::One(k, v) => (<K as Borrow<Q>>::borrow(k) == key).then_some(v),
            Bucket::Many(entries) => entries
                .iter()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
        }
    }

    fn get_mut<Q: Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match self {
            Bucket::One(k, v) => (<K as Borrow<Q>>::borrow(k) == key).then_some(v),
            Bucket::Many(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
        }
    }

    /// Inserts or replaces; returns the previous value.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(old) = self.get_mut(&key) {
            return Some(mem::replace(old, value));
        }
        let entries = match mem::replace(self, Bucket::Many(Vec::new())) {
            Bucket::One(k, v) => vec![(k, v), (key, value)],
            Bucket::Many(mut entries) => {
                entries.push((key, value));
                entries
            }
        };
        *self = Bucket::Many(entries);
        None
    }

    /// Removes `key`; returns its value and whether the bucket is now empty.
    fn remove<Q: Eq + ?Sized>(&mut self, key: &Q) -> Option<(V, bool)>
    where
        K: Borrow<Q>,
    {
        match self {
            Bucket::One(k, v) => (<K as Borrow<Q>>::borrow(k) == key).then(|| (v.clone(), true)),
            Bucket::Many(entries) => {
                let i = entries.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = entries.swap_remove(i);
                if entries.len() == 1 {
                    if let Some((k, v)) = entries.pop() {
                        *self = Bucket::One(k, v);
                    }
                }
                Some((value, false))
            }
        }
    }

    fn for_each(&self, f: &mut impl FnMut(&K, &V)) {
        match self {
            Bucket::One(k, v) => f(k, v),
            Bucket::Many(entries) => entries.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

/// The entries with one full hash, behind their own `Arc` so that copying a node only bumps
/// reference counts.
#[derive(Clone, Debug)]
struct Leaf<K, V> {
    /// The full hash of every key in `bucket`.
    hash: u64,
    /// The entries.
    bucket: Bucket<K, V>,
}

/// One slot of a node: a single pointer either way.
#[derive(Clone, Debug)]
enum Slot<K, V> {
    /// Entries with one full hash.
    Leaf(Arc<Leaf<K, V>>),
    /// A deeper level for hashes that share this level's bits with others.
    Branch(Arc<HNode<K, V>>),
}

impl<K, V> Slot<K, V> {
    fn leaf(hash: u64, key: K, value: V) -> Self {
        Slot::Leaf(Arc::new(Leaf {
            hash,
            bucket: Bucket::One(key, value),
        }))
    }
}

/// One level: a bitmap of occupied slots and the occupied slots in bit order.
#[derive(Clone, Debug)]
struct HNode<K, V> {
    /// Bit `i` is set when the slot for hash bits `i` at this level is occupied.
    bitmap: u32,
    /// The occupied slots, in bit order: `slots.len() == bitmap.count_ones()`.
    slots: Vec<Slot<K, V>>,
}

impl<K, V> Default for HNode<K, V> {
    fn default() -> Self {
        HNode {
            bitmap: 0,
            slots: Vec::new(),
        }
    }
}

/// A persistent hash map: clones share structure, changes copy one path.
#[derive(Clone, Debug)]
pub(super) struct HashTrie<K, V> {
    /// The first level (shared with other versions until changed).
    root: Arc<HNode<K, V>>,
    /// Number of entries.
    len: usize,
}

impl<K, V> Default for HashTrie<K, V> {
    fn default() -> Self {
        HashTrie {
            root: Arc::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> HashTrie<K, V> {
    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The value for `key`.
    pub(super) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.get_hashed(hash_of(key), key)
    }

    /// Mutable access to the value for `key`, copying the shared nodes on its path.
    pub(super) fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let hash = hash_of(key);
        // Do not copy a path for nothing.
        self.get_hashed(hash, key)?;
        self.get_mut_hashed(hash, key)
    }

    /// Mutable access to the value for `key`, inserting `make()` first if it is absent.
    /// `make` must return an entry whose key equals `key`. Hashes the key once.
    pub(super) fn get_or_insert_with<Q: Hash + Eq + ?Sized>(
        &mut self,
        key: &Q,
        make: impl FnOnce() -> (K, V),
    ) -> &mut V
    where
        K: Borrow<Q>,
    {
        let hash = hash_of(key);
        if self.get_hashed(hash, key).is_none() {
            let (k, v) = make();
            self.insert_hashed(hash, k, v);
        }
        self.get_mut_hashed(hash, key)
            .expect("the key is present: it was found or just inserted")
    }

    /// Inserts or replaces; returns the previous value.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.insert_hashed(hash_of(&key), key, value)
    }

    /// Removes `key`; returns its value if it was present.
    pub(super) fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let hash = hash_of(key);
        // Do not copy a path for nothing.
        self.get_hashed(hash, key)?;
        let removed = remove_at(Arc::make_mut(&mut self.root), 0, hash, key)?;
        self.len -= 1;
        Some(removed)
    }

    fn get_hashed<Q: Eq + ?Sized>(&self, hash: u64, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let mut node = &*self.root;
        let mut shift = 0;
        loop {
            let bit = bit_at(hash, shift);
            if node.bitmap & bit == 0 {
                return None;
            }
            match node.slots.get(position(node.bitmap, bit))? {
                Slot::Leaf(leaf) => {
                    return if leaf.hash == hash {
                        leaf.bucket.get(key)
                    } else {
                        None
                    }
                }
                Slot::Branch(child) => {
                    node = child;
                    shift += BITS;
                }
            }
        }
    }

    fn get_mut_hashed<Q: Eq + ?Sized>(&mut self, hash: u64, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let mut node = Arc::make_mut(&mut self.root);
        let mut shift = 0;
        loop {
            let bit = bit_at(hash, shift);
            if node.bitmap & bit == 0 {
                return None;
            }
            let pos = position(node.bitmap, bit);
            match node.slots.get_mut(pos)? {
                Slot::Leaf(leaf) => {
                    return if leaf.hash == hash {
                        Arc::make_mut(leaf).bucket.get_mut(key)
                    } else {
                        None
                    }
                }
                Slot::Branch(child) => {
                    node = Arc::make_mut(child);
                    shift += BITS;
                }
            }
        }
    }

    fn insert_hashed(&mut self, hash: u64, key: K, value: V) -> Option<V> {
        let old = insert_at(Arc::make_mut(&mut self.root), 0, hash, key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Calls `f` on every entry, in no particular order.
    pub(super) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for_each_in(&self.root, &mut f);
    }

    /// Depth of the deepest leaf (for tests).
    #[cfg(test)]
    fn depth(&self) -> usize {
        fn depth_of<K, V>(node: &HNode<K, V>) -> usize {
            1 + node
                .slots
                .iter()
                .map(|slot| match slot {
                    Slot::Leaf(_) => 0,
                    Slot::Branch(child) => depth_of(child),
                })
                .max()
                .unwrap_or(0)
        }
        depth_of(&self.root)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for HashTrie<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut trie = HashTrie::default();
        for (k, v) in iter {
            trie.insert(k, v);
        }
        trie
    }
}

fn for_each_in<K: Eq + Clone, V: Clone>(node: &HNode<K, V>, f: &mut impl FnMut(&K, &V)) {
    for slot in &node.slots {
        match slot {
            Slot::Leaf(leaf) => leaf.bucket.for_each(f),
            Slot::Branch(child) => for_each_in(child, f),
        }
    }
}

/// Inserts below `node` (already unshared), whose level starts at hash bit `shift`.
fn insert_at<K: Eq + Clone, V: Clone>(
    node: &mut HNode<K, V>,
    shift: u32,
    hash: u64,
    key: K,
    value: V,
) -> Option<V> {
    let bit = bit_at(hash, shift);
    let pos = position(node.bitmap, bit);
    if node.bitmap & bit == 0 {
        node.bitmap |= bit;
        node.slots.insert(pos, Slot::leaf(hash, key, value));
        return None;
    }
    let slot = node
        .slots
        .get_mut(pos)
        .expect("a set bitmap bit has a slot");
    match slot {
        Slot::Branch(child) => insert_at(Arc::make_mut(child), shift + BITS, hash, key, value),
        Slot::Leaf(leaf) if leaf.hash == hash => Arc::make_mut(leaf).bucket.insert(key, value),
        Slot::Leaf(leaf) => {
            // Another hash shares this level's bits: push both one level down.
            let (other, other_hash) = (Slot::Leaf(Arc::clone(leaf)), leaf.hash);
            *slot = split(
                other,
                other_hash,
                Slot::leaf(hash, key, value),
                hash,
                shift + BITS,
            );
            None
        }
    }
}

/// A branch at level `shift` holding two leaves with different hashes.
fn split<K, V>(a: Slot<K, V>, hash_a: u64, b: Slot<K, V>, hash_b: u64, shift: u32) -> Slot<K, V> {
    let (bit_a, bit_b) = (bit_at(hash_a, shift), bit_at(hash_b, shift));
    let node = if bit_a == bit_b {
        // Hashes differ, so some deeper level (at most bit 63) tells them apart.
        HNode {
            bitmap: bit_a,
            slots: vec![split(a, hash_a, b, hash_b, shift + BITS)],
        }
    } else {
        HNode {
            bitmap: bit_a | bit_b,
            slots: if bit_a < bit_b {
                vec![a, b]
            } else {
                vec![b, a]
            },
        }
    };
    Slot::Branch(Arc::new(node))
}

/// Removes below `node` (already unshared); folds branches left with a single leaf.
fn remove_at<K, V, Q>(node: &mut HNode<K, V>, shift: u32, hash: u64, key: &Q) -> Option<V>
where
    K: Eq + Clone + Borrow<Q>,
    V: Clone,
    Q: Eq + ?Sized,
{
    let bit = bit_at(hash, shift);
    if node.bitmap & bit == 0 {
        return None;
    }
    let pos = position(node.bitmap, bit);
    match node.slots.get_mut(pos)? {
        Slot::Branch(child) => {
            let child_node = Arc::make_mut(child);
            let removed = remove_at(child_node, shift + BITS, hash, key)?;
            let single_leaf = matches!(child_node.slots.as_slice(), [Slot::Leaf(_)]);
            if single_leaf {
                if let Some(leaf) = child_node.slots.pop() {
                    node.slots[pos] = leaf;
                }
            } else if child_node.slots.is_empty() {
                node.slots.remove(pos);
                node.bitmap &= !bit;
            }
            Some(removed)
        }
        Slot::Leaf(leaf) => {
            if leaf.hash != hash {
                return None;
            }
            let (removed, now_empty) = Arc::make_mut(leaf).bucket.remove(key)?;
            if now_empty {
                node.slots.remove(pos);
                node.bitmap &= !bit;
            }
            Some(removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::hash::Hasher;

    /// A key whose hash only depends on `value % 4`, to force full-hash collisions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Colliding(u8);

    impl Hash for Colliding {
        fn hash<H: Hasher>(&self, state: &mut H) {
            (self.0 % 4).hash(state);
        }
    }

    fn entries<K: Hash + Eq + Ord + Clone, V: Clone>(trie: &HashTrie<K, V>) -> Vec<(K, V)> {
        let mut out = Vec::new();
        trie.for_each(|k, v| out.push((k.clone(), v.clone())));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn many_keys_stay_shallow_and_fold_back() {
        let mut trie = HashTrie::default();
        for i in 0..10_000u32 {
            assert_eq!(trie.insert(i, i), None);
        }
        assert_eq!(trie.len(), 10_000);
        // Typically 4 to 6 levels; a depth of 10 needs two of the 10,000 keys to share their
        // first 45 hash bits (odds about 1 in 10^6).
        assert!(trie.depth() < 10, "depth {}", trie.depth());
        for i in 0..10_000u32 {
            assert_eq!(trie.get(&i), Some(&i));
        }
        for i in 1..10_000u32 {
            assert_eq!(trie.remove(&i), Some(i));
        }
        assert_eq!(trie.remove(&1), None);
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.depth(), 1, "branches folded back into the root");
        assert_eq!(entries(&trie), vec![(0, 0)]);
    }

    #[test]
    fn full_hash_collisions_share_a_bucket() {
        let mut trie = HashTrie::default();
        for i in 0..40u8 {
            assert_eq!(trie.insert(Colliding(i), i), None);
        }
        assert_eq!(trie.insert(Colliding(5), 50), Some(5));
        for i in 0..40u8 {
            let want = if i == 5 { 50 } else { i };
            assert_eq!(trie.get(&Colliding(i)), Some(&want));
        }
        *trie.get_mut(&Colliding(7)).expect("7 was inserted") = 70;
        assert_eq!(trie.get(&Colliding(7)), Some(&70));
        for i in 0..40u8 {
            assert!(trie.remove(&Colliding(i)).is_some());
        }
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.depth(), 1);
    }

    fn check_against_btreemap<K>(ops: Vec<(bool, K, u8)>) -> Result<(), TestCaseError>
    where
        K: Hash + Ord + Clone + std::fmt::Debug,
    {
        let mut trie = HashTrie::default();
        let mut model = BTreeMap::new();
        let mut snapshots = Vec::new();
        for (insert, k, v) in ops {
            snapshots.push((trie.clone(), model.clone()));
            if insert {
                prop_assert_eq!(trie.insert(k.clone(), v), model.insert(k, v));
            } else {
                prop_assert_eq!(trie.remove(&k), model.remove(&k));
            }
            prop_assert_eq!(trie.len(), model.len());
        }
        prop_assert_eq!(entries(&trie), model.into_iter().collect::<Vec<_>>());
        for (old, old_model) in snapshots {
            prop_assert_eq!(entries(&old), old_model.into_iter().collect::<Vec<_>>());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn behaves_like_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u16..300, any::<u8>()), 0..400)) {
            check_against_btreemap(ops)?;
        }

        #[test]
        fn behaves_like_btreemap_with_collisions(ops in proptest::collection::vec((any::<bool>(), (0u8..24).prop_map(Colliding), any::<u8>()), 0..200)) {
            check_against_btreemap(ops)?;
        }
    }
}
