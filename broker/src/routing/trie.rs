//! The subscription trie inside each routing snapshot.
//!
//! A [`Node`] stands for one pattern prefix. Its children are keyed by the next token: literal
//! tokens in a [`PMap`], `*` in a separate slot. Each node has two subscription slots:
//! `here` for patterns that end at this node, and `rest` for patterns that are this node's prefix
//! followed by `>`. Matching a literal subject walks the literal child and the `*` child for each
//! token, collects `rest` at every node it passes with at least one token left, and `here` where
//! the subject ends, so each trie node is visited at most once per match.
//!
//! Nodes are immutable once published: a writer works on a clone of the root (O(1): every field
//! is an `Arc` or a persistent map) and reaches the slot it changes with `Arc::make_mut`, which
//! copies only the nodes that the published snapshot still shares. Nodes left empty by a removal
//! are pruned on the way back up, so the trie never holds dead branches.

use std::sync::Arc;

use super::hamt::HashTrie;
use super::pmap::PMap;
use super::token::Token;
use super::{MatchSet, QueueGroupMatch, SubTarget};

/// A set of targets (a map to nothing). Large sets (thousands of subscribers on one pattern)
/// are hash tries too: a B-tree path copy per insert cost several times more.
type TargetSet = PMap<SubTarget, (), HashTrie<SubTarget, ()>>;

/// A node's literal children. Only ever looked up by token, never iterated while matching, so
/// the large form is a hash trie (cheaper to path-copy than a B-tree).
type Children = PMap<Token, Arc<Node>, HashTrie<Token, Arc<Node>>>;

/// Splits a subject or pattern into its first token and the remainder after the `.`, exactly
/// as `subject::tokens` does (`None` once the last token is taken).
fn split_token(rem: &[u8]) -> (&[u8], Option<&[u8]>) {
    match rem.iter().position(|&b| b == b'.') {
        Some(i) => {
            let (token, tail) = rem.split_at(i);
            (token, Some(&tail[1..]))
        }
        None => (rem, None),
    }
}

/// The subscriptions filed under one pattern (one slot of a node).
#[derive(Clone, Debug, Default)]
pub(super) struct Subs {
    /// Plain subscriptions: each gets every message.
    plain: TargetSet,
    /// Queue subscriptions by queue name.
    queues: PMap<Arc<[u8]>, TargetSet>,
}

impl Subs {
    /// Whether the slot holds no subscription.
    pub(super) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }

    /// Whether `target` is subscribed here under `queue`.
    pub(super) fn contains(&self, queue: Option<&[u8]>, target: &SubTarget) -> bool {
        match queue {
            None => self.plain.contains_key(target),
            Some(name) => self
                .queues
                .get(name)
                .is_some_and(|members| members.contains_key(target)),
        }
    }

    /// Adds `target`; returns whether it was new.
    pub(super) fn insert(&mut self, queue: Option<&[u8]>, target: SubTarget) -> bool {
        let set = match queue {
            None => &mut self.plain,
            Some(name) => self
                .queues
                .get_or_insert_with(name, || (Arc::from(name), TargetSet::default())),
        };
        set.insert(target, ()).is_none()
    }

    /// Removes `target`; returns whether it was present. A queue left without members goes.
    pub(super) fn remove(&mut self, queue: Option<&[u8]>, target: &SubTarget) -> bool {
        match queue {
            None => self.plain.remove(target).is_some(),
            Some(name) => {
                let Some(members) = self.queues.get_mut(name) else {
                    return false;
                };
                let removed = members.remove(target).is_some();
                if members.is_empty() {
                    self.queues.remove(name);
                }
                removed
            }
        }
    }

    /// Appends every subscription here to `out` (groups unmerged).
    fn collect(&self, out: &mut MatchSet) {
        self.plain.for_each(|target, ()| out.plain.push(*target));
        self.queues.for_each(|name, members| {
            let mut group = QueueGroupMatch {
                name: Arc::clone(name),
                members: Vec::with_capacity(members.len()),
            };
            members.for_each(|target, ()| group.members.push(*target));
            out.groups.push(group);
        });
    }
}

/// One pattern prefix.
#[derive(Clone, Debug, Default)]
pub(super) struct Node {
    /// Children for literal next tokens.
    literal: Children,
    /// Child for a `*` next token.
    star: Option<Arc<Node>>,
    /// Subscriptions whose pattern ends here.
    here: Subs,
    /// Subscriptions whose pattern is this prefix followed by `>`.
    rest: Subs,
}

impl Node {
    /// Whether the node holds nothing (and can be pruned).
    pub(super) fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }

    /// The slot `pattern` files under, if its path exists.
    pub(super) fn slot(&self, pattern: &[u8]) -> Option<&Subs> {
        let mut node = self;
        let mut remaining = Some(pattern);
        while let Some(rem) = remaining {
            let (token, next) = split_token(rem);
            if token == b">" {
                return Some(&node.rest);
            }
            node = if token == b"*" {
                node.star.as_deref()?
            } else {
                node.literal.get(token).map(Arc::as_ref)?
            };
            remaining = next;
        }
        Some(&node.here)
    }

    /// The slot `pattern` files under, creating its path and copying shared nodes on the way.
    pub(super) fn slot_mut(&mut self, pattern: &[u8]) -> &mut Subs {
        let mut node = self;
        let mut remaining = Some(pattern);
        while let Some(rem) = remaining {
            let (token, next) = split_token(rem);
            if token == b">" {
                return &mut node.rest;
            }
            let child = if token == b"*" {
                node.star.get_or_insert_with(Arc::default)
            } else {
                node.literal
                    .get_or_insert_with(token, || (Token::new(token), Arc::default()))
            };
            node = Arc::make_mut(child);
            remaining = next;
        }
        &mut node.here
    }

    /// Removes a subscription; returns whether it was present. Prunes nodes left empty.
    ///
    /// `remaining` is the rest of the pattern (`None` once every token is consumed).
    pub(super) fn remove(
        &mut self,
        remaining: Option<&[u8]>,
        queue: Option<&[u8]>,
        target: &SubTarget,
    ) -> bool {
        let Some(rem) = remaining else {
            return self.here.remove(queue, target);
        };
        let (token, next) = split_token(rem);
        if token == b">" {
            return self.rest.remove(queue, target);
        }
        if token == b"*" {
            let Some(child) = self.star.as_mut() else {
                return false;
            };
            let child = Arc::make_mut(child);
            let removed = child.remove(next, queue, target);
            if child.is_empty() {
                self.star = None;
            }
            removed
        } else {
            let Some(child) = self.literal.get_mut(token) else {
                return false;
            };
            let child = Arc::make_mut(child);
            let removed = child.remove(next, queue, target);
            if child.is_empty() {
                self.literal.remove(token);
            }
            removed
        }
    }

    /// Appends every subscription matching the rest of a literal subject to `out` (queue
    /// groups unmerged). `remaining` is `None` once every token is consumed.
    pub(super) fn collect(&self, remaining: Option<&[u8]>, out: &mut MatchSet) {
        let Some(rem) = remaining else {
            self.here.collect(out);
            return;
        };
        self.rest.collect(out);
        let (token, next) = split_token(rem);
        if let Some(child) = self.literal.get(token) {
            child.collect(next, out);
        }
        if let Some(child) = &self.star {
            child.collect(next, out);
        }
    }

    /// The child for a literal token (for tests).
    #[cfg(test)]
    pub(super) fn literal_child(&self, token: &[u8]) -> Option<&Arc<Node>> {
        self.literal.get(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwire_protocol::subject;

    #[test]
    fn split_token_agrees_with_subject_tokens() {
        for s in [&b""[..], b"a", b"a.b", b"a..b", b".a", b"a.", b"abc.de.f"] {
            let mut ours = Vec::new();
            let mut remaining = Some(s);
            while let Some(rem) = remaining {
                let (token, next) = split_token(rem);
                ours.push(token);
                remaining = next;
            }
            let reference: Vec<&[u8]> = subject::tokens(s).collect();
            assert_eq!(ours, reference, "subject {:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn slots_for_wildcards() {
        let t = SubTarget {
            shard: 0,
            conn: 1,
            sid: 1,
        };
        let mut root = Node::default();
        assert!(root.slot_mut(b"a.*.>").insert(None, t));
        assert!(root.slot(b"a.*.>").is_some_and(|s| s.contains(None, &t)));
        assert!(root.slot(b"a.*").is_some_and(Subs::is_empty));
        assert!(root.slot(b"a.b").is_none());
        assert!(root.remove(Some(b"a.*.>"), None, &t));
        assert!(root.is_empty(), "removal prunes the whole path");
    }

    #[test]
    fn queue_slot_drops_empty_queue() {
        let t = SubTarget {
            shard: 1,
            conn: 2,
            sid: 3,
        };
        let mut subs = Subs::default();
        assert!(subs.insert(Some(b"q"), t));
        assert!(!subs.insert(Some(b"q"), t));
        assert!(!subs.remove(Some(b"other"), &t));
        assert!(!subs.remove(None, &t));
        assert!(subs.remove(Some(b"q"), &t));
        assert!(subs.is_empty());
    }
}
