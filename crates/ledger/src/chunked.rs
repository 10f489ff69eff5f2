//! A list that never moves what it holds: the partition's account states.
//!
//! Fixed-size chunks instead of one growing vector (whose growth would move
//! every state and leave up to half its capacity spare) or a box per state
//! (one more pointer to follow, far in memory with a million accounts, on
//! every lookup): the address of element `i` follows from `i` and the short
//! table of chunks alone, so it can be prefetched at once, and at most one
//! chunk is spare. Only the first chunk grows (and moves) as it fills.

use std::ops::{Index, IndexMut};

/// Elements per chunk.
const CHUNK: usize = 1024;

pub(crate) struct ChunkedVec<T> {
    /// Each of capacity `CHUNK` (the first: up to it), never grown past it;
    /// all full but the last.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }
}

impl<T> ChunkedVec<T> {
    pub(crate) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(value),
            _ => {
                // The first chunk grows as a vector does (doubling up to
                // exactly `CHUNK`): a partition of a few accounts does not
                // take a whole chunk.
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 4 } else { CHUNK });
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_stay_where_they_were_put() {
        let mut list = ChunkedVec::default();
        assert!(list.is_empty());
        for i in 0..CHUNK {
            list.push(i);
        }
        let first = &list[0] as *const usize;
        for i in CHUNK..3 * CHUNK + 7 {
            list.push(i);
        }
        assert_eq!(list.len(), 3 * CHUNK + 7);
        assert_eq!(&list[0] as *const usize, first, "a full chunk never moves");
        assert!((0..list.len()).all(|i| list[i] == i));
        assert!(list.iter().copied().eq(0..3 * CHUNK + 7));
        list[CHUNK] = 7;
        assert_eq!(list[CHUNK], 7);
        assert_eq!(list.chunks.iter().map(Vec::capacity).collect::<Vec<_>>(), vec![CHUNK; 4]);
    }
}
