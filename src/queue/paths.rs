//! The paths, in a list that never shrinks (paths live as long as the scheduler), with an
//! index by id. A queue keeps its path's position: the hot path reaches the path's limits
//! with one indexed load instead of hashing and comparing the path id.

use crate::throttle::PathState;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Paths {
    list: Vec<PathState>,
    index: HashMap<Arc<str>, usize>,
}

impl Paths {
    /// Add a path (the id must be new); returns its position.
    pub fn insert(&mut self, p: PathState) -> usize {
        let i = self.list.len();
        self.index.insert(p.id.clone(), i);
        self.list.push(p);
        i
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A path and its position.
    pub fn find(&self, id: &str) -> Option<(usize, &PathState)> {
        let i = self.position(id)?;
        self.list.get(i).map(|p| (i, p))
    }

    pub fn get(&self, id: &str) -> Option<&PathState> {
        self.position(id).and_then(|i| self.list.get(i))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut PathState> {
        self.position(id).and_then(|i| self.list.get_mut(i))
    }

    pub fn at(&self, i: usize) -> Option<&PathState> {
        self.list.get(i)
    }

    pub fn at_mut(&mut self, i: usize) -> Option<&mut PathState> {
        self.list.get_mut(i)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &PathState> {
        self.list.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut PathState> {
        self.list.iter_mut()
    }
}
