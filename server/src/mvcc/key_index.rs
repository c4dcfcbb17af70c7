//! The history of one key, as etcd's `keyIndex`: a list of generations, each
//! from a creation to a deletion (tombstone). It answers "which revision of
//! this key was visible at revision R" without touching the disk, and decides
//! which revisions a compaction keeps.

use std::collections::HashSet;

use super::revision::Revision;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this generation (the key's version at its end).
    pub ver: i64,
    pub created: Revision,
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Walks revisions newest first; returns the position of the first one
    /// for which `keep_going` is false.
    fn walk(&self, mut keep_going: impl FnMut(Revision) -> bool) -> Option<usize> {
        (0..self.revs.len()).rev().find(|&i| !keep_going(self.revs[i]))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndex {
    pub modified: Revision,
    pub generations: Vec<Generation>,
}

/// What a key looked like at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    /// Rebuilds the index of a key whose older history was compacted away.
    pub fn restored(created: Revision, modified: Revision, ver: i64) -> Self {
        Self { modified, generations: vec![Generation { ver, created, revs: vec![modified] }] }
    }

    /// Most keys have one generation of one revision: their vectors are
    /// allocated to fit (a first `push` would make room for four, 270
    /// bytes a key more than it needs) and grow as written.
    pub fn put(&mut self, rev: Revision) {
        if self.generations.is_empty() {
            self.generations.reserve_exact(1);
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("pushed above when empty");
        if g.revs.is_empty() {
            g.created = rev;
            g.revs.reserve_exact(1);
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Ends the current generation. False if the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.reserve_exact(1);
        self.generations.push(Generation::default());
        true
    }

    /// Whether the key exists (is not deleted) now.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            if i != last {
                // `g` ended with a tombstone at or before `at`: deleted then.
                if g.revs[g.revs.len() - 1].main <= at {
                    return None;
                }
            }
            if g.revs[0].main <= at {
                return Some(g);
            }
        }
        None
    }

    /// The revision visible at main revision `at`, if the key existed then.
    pub fn get(&self, at: i64) -> Option<Visible> {
        let g = self.find_generation(at)?;
        let n = g.walk(|r| r.main > at)?;
        Some(Visible {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Revisions of this key with main revision >= `rev` (watch replay).
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        let mut out: Vec<Revision> = Vec::new();
        let mut last_main = -1;
        for g in &self.generations {
            for r in &g.revs {
                if r.main < rev {
                    continue;
                }
                // Only the last change of a main revision counts (etcd).
                if r.main == last_main {
                    if let Some(l) = out.last_mut() {
                        *l = *r;
                    }
                    continue;
                }
                out.push(*r);
                last_main = r.main;
            }
        }
        out
    }

    /// Drops history older than `at`, recording in `keep` the revisions that
    /// must stay on disk. Afterwards `is_empty()` tells whether the whole key
    /// can be forgotten.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() {
            return;
        }
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            match g.revs.last() {
                Some(tomb) if tomb.main > at => break,
                _ => gen_idx += 1,
            }
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        let rev_idx = g.walk(|r| {
            if r.main <= at {
                keep.insert(r);
                false
            } else {
                true
            }
        });
        if !g.is_empty() {
            if let Some(i) = rev_idx {
                g.revs.drain(..i);
                // What compaction frees goes back to the allocator.
                if g.revs.capacity() > 2 * g.revs.len() {
                    g.revs.shrink_to_fit();
                }
            }
            // A generation left holding only its tombstone is gone too.
            if g.revs.len() == 1 && gen_idx != last {
                keep.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
        if self.generations.capacity() > 2 * self.generations.len() {
            self.generations.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations_follow_puts_and_deletes() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        assert_eq!(ki.get(1), None);
        assert_eq!(ki.get(3), Some(Visible { modified: r(2), created: r(2), version: 1 }));
        assert_eq!(ki.get(5), Some(Visible { modified: r(4), created: r(2), version: 2 }));
        assert_eq!(ki.get(6), None, "deleted at 6");
        assert_eq!(ki.get(7), None);
        assert_eq!(ki.get(9), Some(Visible { modified: r(8), created: r(8), version: 1 }));
        assert!(!KeyIndex::default().clone().tombstone(r(3)));
    }

    #[test]
    fn compaction_keeps_the_value_visible_at_the_compacted_revision() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        ki.put(r(6));
        let mut keep = HashSet::new();
        ki.compact(5, &mut keep);
        assert_eq!(keep, HashSet::from([r(4)]));
        assert_eq!(ki.get(5).map(|v| v.modified), Some(r(4)));
        assert_eq!(ki.get(5).map(|v| v.version), Some(2));
        assert!(!ki.is_empty());
    }

    #[test]
    fn compaction_past_a_tombstone_forgets_the_key() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.tombstone(r(3));
        let mut keep = HashSet::new();
        ki.compact(3, &mut keep);
        assert!(keep.is_empty());
        assert!(ki.is_empty());
    }
}
