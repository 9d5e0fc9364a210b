//! Hot subjects: a 1-in-[`HOT_SAMPLE`] sample of publish subjects counted by the shards, read
//! (and reset) by the admin plane's bottleneck report.

use std::collections::HashMap;

use parking_lot::Mutex;

/// One publish in this many has its subject counted for the hottest-subjects report.
pub const HOT_SAMPLE: u64 = 1024;

/// Most distinct subjects kept by the sampler; past it, new subjects are not counted until the
/// next report resets it.
const MAX_SUBJECTS: usize = 4096;

/// Counts of sampled publish subjects since the last report.
#[derive(Debug, Default)]
pub struct HotSubjects(Mutex<HashMap<Box<[u8]>, u64>>);

impl HotSubjects {
    /// Counts one sampled publish on `subject`.
    pub fn sample(&self, subject: &[u8]) {
        let mut m = self.0.lock();
        if let Some(n) = m.get_mut(subject) {
            *n += 1;
        } else if m.len() < MAX_SUBJECTS {
            m.insert(subject.into(), 1);
        }
    }

    /// The `n` most sampled subjects with their estimated publish counts, and resets.
    pub fn take_top(&self, n: usize) -> Vec<(String, u64)> {
        let m = std::mem::take(&mut *self.0.lock());
        let mut v: Vec<_> = m
            .into_iter()
            .map(|(k, c)| (String::from_utf8_lossy(&k).into_owned(), c * HOT_SAMPLE))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_subjects_rank_and_reset() {
        let h = HotSubjects::default();
        for _ in 0..3 {
            h.sample(b"a.b");
        }
        h.sample(b"c");
        let top = h.take_top(10);
        assert_eq!(top[0], ("a.b".to_owned(), 3 * HOT_SAMPLE));
        assert_eq!(top[1].0, "c");
        assert!(h.take_top(10).is_empty());
    }
}
