//! A session's reliable channels: one sender and one receiver per channel, each
//! created when the channel is first used.

use crate::protocol::RELIABLE_CHANNEL_COUNT;

/// One `T` per reliable channel in use, boxed (an idle channel costs a pointer).
///
/// Loops over the channels stop after the highest channel created: most sessions
/// only ever use channel 0, and a flush visits the channels several times (acks,
/// retransmissions, new data, deadlines).
#[derive(Debug)]
pub(crate) struct Channels<T> {
    slots: [Option<Box<T>>; RELIABLE_CHANNEL_COUNT],
    /// One past the highest channel created.
    used: usize,
}

impl<T> Default for Channels<T> {
    fn default() -> Self {
        Self {
            slots: Default::default(),
            used: 0,
        }
    }
}

impl<T> Channels<T> {
    /// Channel `channel`'s `T`, if it was created.
    #[inline]
    pub(crate) fn get_mut(&mut self, channel: usize) -> Option<&mut T> {
        self.slots.get_mut(channel)?.as_deref_mut()
    }

    /// Channel `channel`'s `T`, created by `make` on first use. `channel` must be
    /// below [`RELIABLE_CHANNEL_COUNT`].
    #[inline]
    pub(crate) fn get_or_insert_with(
        &mut self,
        channel: usize,
        make: impl FnOnce() -> T,
    ) -> &mut T {
        self.used = self.used.max(channel + 1);
        self.slots[channel].get_or_insert_with(|| Box::new(make()))
    }

    /// The channels created, in channel order.
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots[..self.used].iter().filter_map(|s| s.as_deref())
    }

    /// The channels created, in channel order.
    #[inline]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots[..self.used]
            .iter_mut()
            .flatten()
            .map(|b| &mut **b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_created_on_first_use_and_visited_in_order() {
        let mut c: Channels<u8> = Channels::default();
        assert_eq!(c.iter().count(), 0);
        assert!(c.get_mut(2).is_none());
        *c.get_or_insert_with(2, || 20) += 1;
        assert_eq!(
            *c.get_or_insert_with(2, || unreachable!("created already")),
            21
        );
        c.get_or_insert_with(0, || 0);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), [0, 21]);
        for v in c.iter_mut() {
            *v += 1;
        }
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), [1, 22]);
        assert_eq!(c.get_mut(2).copied(), Some(22));
        assert!(c.get_mut(1).is_none() && c.get_mut(RELIABLE_CHANNEL_COUNT).is_none());
    }
}
