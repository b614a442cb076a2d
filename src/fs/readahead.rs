//! When to read ahead in a directory. Programs that stat every entry in
//! listing order (rsync, ls -l, find, du) get the next faces downloaded in
//! parallel; the window doubles while the walk stays sequential, as the
//! kernel's file read-ahead does. This decides places only; the filesystem
//! core turns them into downloads.

use std::ops::RangeInclusive;

/// The first window, once two lookups in a row followed the listing.
const START: usize = 4;

#[derive(Debug, Default)]
pub struct ReadAhead {
    last: Option<usize>,
    /// Places up to here have been handed out.
    issued_to: usize,
    window: usize,
}

impl ReadAhead {
    /// Notes a lookup of the file at `place` in a listing of `len` files and
    /// returns the places to fetch ahead, if any; at most `max_window` ahead.
    pub fn on_lookup(
        &mut self,
        place: usize,
        len: usize,
        max_window: usize,
    ) -> Option<RangeInclusive<usize>> {
        match self.last {
            // The adapter may ask twice for one lookup: count it once.
            Some(last) if last == place => return None,
            // Sequential: the next file, or the one after (a skipped variant).
            Some(last) if place > last && place - last <= 2 => {}
            _ => {
                *self = ReadAhead {
                    last: Some(place),
                    issued_to: place,
                    window: 0,
                };
                return None;
            }
        }
        self.last = Some(place);
        self.issued_to = self.issued_to.max(place);
        // When the walk enters the last batch issued, issue the next, twice as large.
        if self.window == 0 {
            self.window = START.min(max_window);
        } else if place + self.window > self.issued_to {
            self.window = (self.window * 2).min(max_window);
        } else {
            return None;
        }
        let from = self.issued_to + 1;
        let to = (self.issued_to + self.window).min(len.saturating_sub(1));
        self.issued_to = to.max(self.issued_to);
        (from <= to).then_some(from..=to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_walk_fetches_every_later_place_once_in_growing_batches() {
        let mut ra = ReadAhead::default();
        let mut fetched = Vec::new();
        let mut batches = Vec::new();
        for place in 0..200 {
            if let Some(range) = ra.on_lookup(place, 200, 32) {
                batches.push(range.clone().count());
                fetched.extend(range);
            }
        }
        assert_eq!(
            fetched,
            (2..200).collect::<Vec<_>>(),
            "each place after the first two, once, in order"
        );
        assert_eq!(&batches[..4], &[4, 8, 16, 32], "doubling up to the cap");
        assert!(batches.iter().all(|b| *b <= 32));
    }

    #[test]
    fn random_access_and_repeats_fetch_nothing() {
        let mut ra = ReadAhead::default();
        for place in [50, 10, 90, 30, 30, 70, 0, 99] {
            assert_eq!(ra.on_lookup(place, 100, 32), None, "{place}");
        }
    }

    #[test]
    fn skipping_one_variant_stays_sequential_and_the_end_is_respected() {
        let mut ra = ReadAhead::default();
        assert_eq!(ra.on_lookup(0, 6, 32), None);
        assert_eq!(ra.on_lookup(2, 6, 32), Some(3..=5));
        assert_eq!(ra.on_lookup(4, 6, 32), None, "nothing left past the end");
    }
}
