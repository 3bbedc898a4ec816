//! A bounded cache of parsed files, keyed by file identity: a file that is rewritten or
//! replaced gets a new key, and the entry of its old version is dropped.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// The identity of one version of a file's contents, as far as `stat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    /// The identity of the version `metadata` describes.
    pub(super) fn of(metadata: &Metadata) -> FileId {
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Parsed files by identity, with their insertion order for eviction.
pub(super) struct Cache<T> {
    capacity: usize,
    entries: HashMap<FileId, (u64, Arc<T>)>,
    inserted: u64,
}

impl<T> Cache<T> {
    /// An empty cache of at most `capacity` entries.
    pub(super) fn new(capacity: usize) -> Cache<T> {
        Cache {
            capacity,
            entries: HashMap::new(),
            inserted: 0,
        }
    }

    /// The cached value of this version of a file.
    pub(super) fn get(&self, id: &FileId) -> Option<Arc<T>> {
        self.entries.get(id).map(|(_, value)| Arc::clone(value))
    }

    /// Adds `value` unless another thread cached this file first, and returns the cached
    /// entry. Drops older versions of the same file, and the oldest entry when full.
    pub(super) fn insert(&mut self, id: FileId, value: Arc<T>) -> Arc<T> {
        if let Some(cached) = self.get(&id) {
            return cached;
        }
        self.entries
            .retain(|other, _| (other.dev, other.ino) != (id.dev, id.ino));
        while self.entries.len() >= self.capacity.max(1) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(id, _)| *id);
            match oldest {
                Some(oldest) => self.entries.remove(&oldest),
                None => break,
            };
        }
        self.inserted += 1;
        self.entries.insert(id, (self.inserted, Arc::clone(&value)));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached value: a parse of a file at `path`, as far as the cache cares.
    fn symbols_at(path: &str) -> Arc<String> {
        Arc::new(path.to_owned())
    }

    fn file_id(ino: u64, mtime: i64) -> FileId {
        FileId {
            dev: 1,
            ino,
            size: 10,
            mtime: (mtime, 0),
            ctime: (mtime, 0),
        }
    }

    #[test]
    fn cache_is_bounded_and_drops_stale_versions() {
        let mut cache = Cache::new(2);
        let a = cache.insert(file_id(1, 0), symbols_at("/a"));
        // A racing second parse of the same file gets the first one back.
        assert!(Arc::ptr_eq(
            &cache.insert(file_id(1, 0), symbols_at("/a")),
            &a
        ));
        cache.insert(file_id(2, 0), symbols_at("/b"));
        cache.insert(file_id(3, 0), symbols_at("/c"));
        assert_eq!(cache.entries.len(), 2);
        assert!(
            cache.get(&file_id(1, 0)).is_none(),
            "the oldest entry is evicted"
        );
        cache.insert(file_id(3, 1), symbols_at("/c"));
        assert!(
            cache.get(&file_id(3, 0)).is_none(),
            "a changed file replaces its old parse"
        );
        assert!(cache.get(&file_id(3, 1)).is_some());
        assert!(cache.get(&file_id(2, 0)).is_some());
    }
}
