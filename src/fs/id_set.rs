//! A set of ids, packed and sorted: one string holding them all and where
//! each ends, about 4 bytes an id besides the id itself. The users a
//! listing shows without a face are kept so (a tenant may have many).

/// Ids in byte order, without repeats.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct IdSet {
    text: String,
    ends: Vec<u32>,
}

impl IdSet {
    pub fn from_ids(mut ids: Vec<String>) -> IdSet {
        ids.sort_unstable();
        ids.dedup();
        let mut set = IdSet {
            text: String::with_capacity(ids.iter().map(String::len).sum()),
            ends: Vec::with_capacity(ids.len()),
        };
        for id in &ids {
            set.text.push_str(id);
            // At most 2,000,000 ids of at most 243 bytes: well inside u32.
            set.ends.push(set.text.len() as u32);
        }
        set
    }

    /// The set of these parts (see [`IdSet::parts`]), if they are one:
    /// ends in order, within the text, ids sorted without repeats.
    pub fn from_parts(text: String, ends: Vec<u32>) -> Option<IdSet> {
        let set = IdSet { text, ends };
        let mut start = 0;
        for end in &set.ends {
            if (*end as usize) < start || !set.text.is_char_boundary(*end as usize) {
                return None;
            }
            start = *end as usize;
        }
        let sorted = (1..set.len()).all(|i| set.id(i - 1) < set.id(i));
        (start == set.text.len() && sorted).then_some(set)
    }

    /// The packed ids and where each ends, for the on-disk store.
    pub fn parts(&self) -> (&str, &[u32]) {
        (&self.text, &self.ends)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// Where `id` is, or where it would go.
    fn search(&self, id: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.id(mid).cmp(id) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.search(id).is_ok()
    }

    /// Adds `id` (false if it was in): one move of the bytes after it.
    pub fn insert(&mut self, id: &str) -> bool {
        let Err(at) = self.search(id) else {
            return false;
        };
        let start = if at == 0 {
            0
        } else {
            self.ends[at - 1] as usize
        };
        self.text.insert_str(start, id);
        for end in &mut self.ends[at..] {
            *end += id.len() as u32;
        }
        self.ends.insert(at, (start + id.len()) as u32);
        true
    }

    /// Removes `id` (false if it was not in): one move of the bytes after it.
    pub fn remove(&mut self, id: &str) -> bool {
        let Ok(at) = self.search(id) else {
            return false;
        };
        let start = if at == 0 {
            0
        } else {
            self.ends[at - 1] as usize
        };
        self.text.replace_range(start..start + id.len(), "");
        self.ends.remove(at);
        for end in &mut self.ends[at..] {
            *end -= id.len() as u32;
        }
        true
    }

    /// Bytes this set holds.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + 4 * self.ends.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_match_a_set_made_anew_and_parts_read_back() {
        let mut state = 11u64;
        let mut model = std::collections::BTreeSet::new();
        let mut set = IdSet::default();
        for _ in 0..3000 {
            let id = format!("u{}", crate::hash::xorshift(&mut state) % 300);
            if crate::hash::xorshift(&mut state).is_multiple_of(2) {
                assert_eq!(set.insert(&id), model.insert(id.clone()));
            } else {
                assert_eq!(set.remove(&id), model.remove(&id));
            }
            assert_eq!(set.contains(&id), model.contains(&id));
        }
        let anew = IdSet::from_ids(model.iter().cloned().collect());
        assert_eq!(set, anew);
        let (text, ends) = set.parts();
        assert_eq!(
            IdSet::from_parts(text.into(), ends.to_vec()),
            Some(set.clone())
        );
        // Out of order, repeated or out of bounds: not a set.
        assert_eq!(IdSet::from_parts("ba".into(), vec![1, 2]), None);
        assert_eq!(IdSet::from_parts("aa".into(), vec![1, 2]), None);
        assert_eq!(IdSet::from_parts("ab".into(), vec![1, 3]), None);
        assert_eq!(IdSet::from_parts("ab".into(), vec![1]), None);
    }
}
