//! The queues, in a slab: a queue id is its slot and the slot's generation, so finding a
//! queue is one indexed load (no hashing, no probe of a table's control bytes), and an id
//! kept by a connection after its queue was dropped finds nothing, as before.

struct Slot<T> {
    gen: u32,
    queue: Option<T>,
}

pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

fn split(qid: u64) -> (usize, u32) {
    ((qid & 0xffff_ffff) as usize, (qid >> 32) as u32)
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Store a queue; returns its id (never 0).
    pub fn insert(&mut self, q: T) -> u64 {
        self.len += 1;
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot {
                    gen: 1,
                    queue: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.queue = Some(q);
        (u64::from(slot.gen) << 32) | idx as u64
    }

    pub fn get(&self, qid: &u64) -> Option<&T> {
        let (i, g) = split(*qid);
        self.slots
            .get(i)
            .filter(|s| s.gen == g)
            .and_then(|s| s.queue.as_ref())
    }

    pub fn get_mut(&mut self, qid: &u64) -> Option<&mut T> {
        let (i, g) = split(*qid);
        self.slots
            .get_mut(i)
            .filter(|s| s.gen == g)
            .and_then(|s| s.queue.as_mut())
    }

    pub fn contains_key(&self, qid: &u64) -> bool {
        self.get(qid).is_some()
    }

    pub fn remove(&mut self, qid: &u64) -> Option<T> {
        let (i, g) = split(*qid);
        let slot = self.slots.get_mut(i).filter(|s| s.gen == g)?;
        let q = slot.queue.take()?;
        // the id is spent: a later queue in this slot gets another
        slot.gen = slot.gen.wrapping_add(1).max(1);
        self.free.push(i as u32);
        self.len -= 1;
        Some(q)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.queue
                .as_ref()
                .map(|q| ((u64::from(s.gen) << 32) | i as u64, q))
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| {
            let gen = s.gen;
            s.queue
                .as_mut()
                .map(move |q| ((u64::from(gen) << 32) | i as u64, q))
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, q)| q)
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn ids_find_their_entry_and_a_spent_id_finds_nothing() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_ne!(a, 0);
        assert_eq!((s.get(&a), s.get(&b), s.len()), (Some(&"a"), Some(&"b"), 2));
        assert_eq!(s.remove(&a), Some("a"));
        assert_eq!(s.remove(&a), None);
        // the slot is reused under another id; the old id stays spent
        let c = s.insert("c");
        assert_ne!(c, a);
        assert_eq!((s.get(&a), s.get(&c)), (None, Some(&"c")));
        assert!(!s.contains_key(&(a + 7)));
        let mut keys: Vec<u64> = s.keys().collect();
        keys.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(s.len(), 2);
    }
}
