//! The KV store, with Consul's semantics (`agent/consul/state/kvs.go`): check-and-set by
//! `ModifyIndex`, flags, recursive deletes, separator-folded key lists, and the indexes
//! blocking reads compare (a key's `ModifyIndex`; for a prefix, the highest index of its
//! entries and of keys deleted under it).

use crate::store::{KvEntry, Store};

impl Store {
    fn kv_write_index(&mut self) -> u64 {
        self.index += 1;
        self.kv_index = self.index;
        self.index
    }

    /// The KV table's index, deletions included.
    pub fn kv_table_index(&self) -> u64 {
        self.kv_index.max(1)
    }

    /// One key, and the index a blocking read on it compares: the key's `ModifyIndex`,
    /// or the table's index when the key does not exist.
    pub fn kv_get(&self, key: &str) -> (Option<(String, KvEntry)>, u64) {
        match self.kv.get(key) {
            Some(entry) => (
                Some((key.to_string(), entry.clone())),
                entry.modify_index.max(1),
            ),
            None => (None, self.kv_table_index()),
        }
    }

    fn prefix_index(&self, prefix: &str, entries_max: u64) -> u64 {
        if prefix.is_empty() {
            return self.kv_table_index();
        }
        let graveyard = self
            .kv_tombstones
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, index)| *index)
            .max()
            .unwrap_or(0);
        match entries_max.max(graveyard) {
            0 => self.kv_table_index(),
            index => index,
        }
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a KvEntry)> {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(key, _)| key.starts_with(prefix))
    }

    /// Every entry under `prefix` (`?recurse`).
    pub fn kv_list(&self, prefix: &str) -> (Vec<(String, KvEntry)>, u64) {
        let entries: Vec<_> = self
            .under(prefix)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let max = entries
            .iter()
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        (entries, self.prefix_index(prefix, max))
    }

    /// Key names under `prefix` (`?keys`), folded at the first `separator` after the prefix.
    pub fn kv_keys(&self, prefix: &str, separator: &str) -> (Vec<String>, u64) {
        let mut keys: Vec<String> = Vec::new();
        let mut max = 0;
        for (key, entry) in self.under(prefix) {
            max = max.max(entry.modify_index);
            let folded = if separator.is_empty() {
                key.clone()
            } else {
                match key[prefix.len()..].find(separator) {
                    Some(at) => key[..prefix.len() + at + separator.len()].to_string(),
                    None => key.clone(),
                }
            };
            if keys.last() != Some(&folded) {
                keys.push(folded);
            }
        }
        (keys, self.prefix_index(prefix, max))
    }

    /// `PUT`: sets the key, or with `cas` only if its `ModifyIndex` is `cas` (0: only if
    /// absent). Returns whether it was written and the index to announce.
    pub fn kv_put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    ) -> (bool, Option<u64>) {
        let existing = self.kv.get(key);
        match (cas, existing) {
            (Some(0), Some(_)) => return (false, None),
            (Some(cas), None) if cas != 0 => return (false, None),
            (Some(cas), Some(entry)) if cas != 0 && entry.modify_index != cas => {
                return (false, None);
            }
            _ => {}
        }
        let create_index = existing.map(|e| e.create_index);
        let index = self.kv_write_index();
        self.kv.insert(
            key.to_string(),
            KvEntry {
                value,
                flags,
                create_index: create_index.unwrap_or(index),
                modify_index: index,
            },
        );
        self.kv_tombstones.remove(key);
        (true, Some(index))
    }

    /// `DELETE` of one key, or with `cas` only if its `ModifyIndex` is `cas` (a missing
    /// key counts as deleted).
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> (bool, Option<u64>) {
        match (self.kv.get(key), cas) {
            (None, Some(_)) => return (true, None),
            (Some(entry), Some(cas)) if entry.modify_index != cas => return (false, None),
            (None, None) => return (true, None),
            _ => {}
        }
        let index = self.kv_write_index();
        self.kv.remove(key);
        self.kv_tombstones.insert(key.to_string(), index);
        (true, Some(index))
    }

    /// `DELETE ?recurse`: every key under `prefix` (all keys for an empty prefix).
    pub fn kv_delete_tree(&mut self, prefix: &str) -> Option<u64> {
        let doomed: Vec<String> = self.under(prefix).map(|(k, _)| k.clone()).collect();
        if doomed.is_empty() {
            return None;
        }
        let index = self.kv_write_index();
        for key in doomed {
            self.kv.remove(&key);
            self.kv_tombstones.insert(key, index);
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn cas_follows_modify_index() {
        let mut store = Store::default();
        assert!(!store.kv_put("a", b"1".to_vec(), 0, Some(5)).0);
        let (written, index) = store.kv_put("a", b"1".to_vec(), 0, Some(0));
        assert!(written);
        let index = index.unwrap();
        assert!(
            !store.kv_put("a", b"2".to_vec(), 0, Some(0)).0,
            "cas=0 only creates"
        );
        assert!(!store.kv_put("a", b"2".to_vec(), 0, Some(index + 1)).0);
        assert!(store.kv_put("a", b"2".to_vec(), 7, Some(index)).0);
        let (entry, _) = store.kv_get("a");
        let (_, entry) = entry.unwrap();
        assert_eq!(entry.value, b"2");
        assert_eq!(entry.flags, 7);
        assert_eq!(entry.create_index, index, "CreateIndex survives updates");
        assert!(
            !store.kv_delete("a", Some(index)).0,
            "stale cas does not delete"
        );
        assert!(store.kv_delete("a", Some(entry.modify_index)).0);
        assert!(store.kv_get("a").0.is_none());
    }

    #[test]
    fn keys_fold_at_the_separator_and_prefix_indexes_see_deletions() {
        let mut store = Store::default();
        for key in ["app/a", "app/b/c", "app/b/d", "other"] {
            store.kv_put(key, Vec::new(), 0, None);
        }
        assert_eq!(store.kv_keys("app/", "/").0, vec!["app/a", "app/b/"]);
        assert_eq!(store.kv_keys("", "/").0, vec!["app/", "other"]);
        let (_, before) = store.kv_list("app/");
        store.kv_put("other", Vec::new(), 0, None);
        assert_eq!(
            store.kv_list("app/").1,
            before,
            "writes elsewhere do not move a prefix"
        );
        store.kv_delete_tree("app/b/");
        let (entries, after) = store.kv_list("app/");
        assert_eq!(entries.len(), 1);
        assert!(after > before, "deletions under the prefix move it");
    }
}
