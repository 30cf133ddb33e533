//! Dynacast: which simulcast layers of a publication anyone needs, so its publisher can stop
//! encoding (and sending) the others.
//!
//! Encoding a 720p layer nobody watches costs the publisher CPU and uplink for nothing. The
//! layers to keep are every layer up to the highest one some subscription desires (its
//! preference capped by its bandwidth share): a subscriber whose bandwidth grows moves up one
//! layer at a time, so the layers below the highest stay useful. The lowest layer always stays
//! on: a new subscriber starts on it at once, without waiting for the publisher to resume one.

use crate::forward::selector::LayerIndex;

/// The dynacast decision of one publication: the highest layer the publisher was last told to
/// send.
#[derive(Debug, Default)]
pub struct Dynacast {
    highest: Option<LayerIndex>,
}

impl Dynacast {
    /// Decides again from the layers the subscriptions desire (`None`: a paused subscription
    /// or one with quality off). Returns the new highest layer to keep when it changed.
    pub fn update(
        &mut self,
        desired: impl IntoIterator<Item = Option<LayerIndex>>,
    ) -> Option<LayerIndex> {
        let highest = desired.into_iter().flatten().max().unwrap_or(0);
        if self.highest == Some(highest) {
            return None;
        }
        self.highest = Some(highest);
        Some(highest)
    }

    /// The highest layer the publisher was last told to send, if it was told anything.
    pub fn highest(&self) -> Option<LayerIndex> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_layer_up_to_the_highest_anyone_desires() {
        let mut d = Dynacast::default();
        assert_eq!(d.update([Some(0), Some(2), Some(1)]), Some(2));
        assert_eq!(d.highest(), Some(2));
    }

    #[test]
    fn tells_only_changes() {
        let mut d = Dynacast::default();
        assert_eq!(d.update([Some(1)]), Some(1));
        assert_eq!(d.update([Some(1), Some(0)]), None);
        assert_eq!(d.update([Some(0)]), Some(0));
    }

    #[test]
    fn the_lowest_layer_stays_on_when_nobody_watches() {
        let mut d = Dynacast::default();
        assert_eq!(d.update([None, None]), Some(0));
        let mut empty = Dynacast::default();
        assert_eq!(empty.update(std::iter::empty()), Some(0));
    }
}
