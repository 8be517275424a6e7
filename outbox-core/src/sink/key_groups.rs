//! [`KeyGroups`]: a batch's records grouped by key, the unit of every
//! per-key rule.

use std::collections::HashMap;

use crate::record::OutboxRecord;

/// The records of a batch grouped by key: each group holds the batch
/// indexes of one key's records, in batch order, and a keyless record is a
/// group of its own. Groups come in the order of their first record.
///
/// The per-key rules hold group by group: a group's records are sent one
/// after the other, and a failure holds back the rest of its group only.
/// [`publish_by_key`](super::publish_by_key) schedules a batch by its
/// groups; a sink with a schedule of its own (Kafka's pipelined batches)
/// starts from them too.
///
/// ```
/// use outbox_engine::sink::KeyGroups;
/// use outbox_engine::{NewRecord, OutboxEvent, OutboxRecord};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id)]
/// struct OrderPlaced { order_id: u64 }
///
/// let record = |id: i64, order_id: u64| {
///     OutboxRecord::from_new(id, NewRecord::from_event(&OrderPlaced { order_id }).unwrap())
/// };
/// let batch = [record(1, 7), record(2, 8), record(3, 7)];
/// let groups = KeyGroups::new(&batch);
/// assert_eq!(groups.iter().collect::<Vec<_>>(), [&[0, 2][..], &[1][..]]);
/// assert_eq!(groups.place(2), (0, 1), "the second of the first group");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyGroups {
    groups: Vec<Vec<usize>>,
    /// Each record's group and its position in it.
    place: Vec<(usize, usize)>,
}

impl KeyGroups {
    /// Groups `records` by key.
    pub fn new(records: &[OutboxRecord]) -> Self {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut place = Vec::with_capacity(records.len());
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            let group = match record.key.as_deref() {
                Some(key) => *by_key.entry(key).or_insert(groups.len()),
                None => groups.len(),
            };
            if group == groups.len() {
                groups.push(Vec::new());
            }
            place.push((group, groups[group].len()));
            groups[group].push(index);
        }
        Self { groups, place }
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there is no group (the batch is empty).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The batch indexes of group `group`, in batch order.
    ///
    /// # Panics
    ///
    /// When there is no such group.
    pub fn group(&self, group: usize) -> &[usize] {
        &self.groups[group]
    }

    /// Every group, in the order of their first record.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        self.groups.iter().map(Vec::as_slice)
    }

    /// The group of the record at batch index `index`, and its position in
    /// that group.
    ///
    /// # Panics
    ///
    /// When `index` is not in the batch.
    pub fn place(&self, index: usize) -> (usize, usize) {
        self.place[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::batch;

    #[test]
    fn groups_hold_each_key_in_batch_order_and_keyless_records_alone() {
        let records = batch(&[Some("a"), None, Some("b"), Some("a"), None, Some("a")]);
        let groups = KeyGroups::new(&records);
        let listed: Vec<Vec<usize>> = groups.iter().map(<[usize]>::to_vec).collect();
        assert_eq!(listed, vec![vec![0, 3, 5], vec![1], vec![2], vec![4]]);
        assert_eq!(groups.len(), 4);
        let places: Vec<(usize, usize)> = (0..records.len()).map(|i| groups.place(i)).collect();
        assert_eq!(places, [(0, 0), (1, 0), (2, 0), (0, 1), (3, 0), (0, 2)]);
        assert!(KeyGroups::new(&[]).is_empty());
    }
}
