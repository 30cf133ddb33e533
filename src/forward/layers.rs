//! Layers by name and by size: rid ↔ layer index, an element's size → the layer that fills it,
//! and what a layer is assumed to cost before it was ever measured.
//!
//! A publisher names its simulcast encodings with rids; the core works with indexes (0 = the
//! lowest resolution). Our clients use LiveKit's names `q`/`h`/`f`; any other publisher's rids
//! are ranked by their place in its offer, which lists layers lowest first by convention.

use crate::forward::selector::{LayerIndex, MAX_LAYERS};

/// Simulcast rids our clients send, lowest first (LiveKit's names: quarter, half, full).
pub const LAYER_RIDS: [&str; MAX_LAYERS] = ["q", "h", "f"];

/// What a layer is assumed to cost before it was ever measured: the bitrates browsers give
/// 180p/360p/720p simulcast (a single-layer track counts as the lowest).
pub const ASSUMED_LAYER_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_500_000];

/// Size of a subscriber's video element when it has not told us: a grid tile.
pub const DEFAULT_VIEW_AREA: u32 = 640 * 360;

/// Element widths below which the lowest / middle layer fills the element, used while no
/// layer's resolution is known yet: `q` is about 320 pixels wide, `h` about 640.
const CONVENTIONAL_MAX_WIDTH: [u32; 2] = [400, 800];

/// A layer's index from its rid: our clients' `q`/`h`/`f`, else its place among `offered`
/// (the rids in the publisher's offer), else 0.
pub fn layer_index(rid: &str, offered: &[String]) -> LayerIndex {
    if let Some(i) = LAYER_RIDS.iter().position(|r| *r == rid) {
        return i as LayerIndex;
    }
    offered
        .iter()
        .position(|n| n == rid)
        .map_or(0, |i| i.min(MAX_LAYERS - 1) as LayerIndex)
}

/// The rid of layer `index` among `offered` (empty without simulcast).
pub fn rid_name(index: LayerIndex, offered: &[String]) -> &str {
    if offered.is_empty() {
        return "";
    }
    let by_convention = LAYER_RIDS[usize::from(index).min(MAX_LAYERS - 1)];
    if offered.iter().any(|n| n == by_convention) {
        return by_convention;
    }
    offered.get(usize::from(index)).map_or("", String::as_str)
}

/// The smallest layer whose resolution fills a `width` × `height` element; the highest known
/// layer if none does; by convention (q ≈ 320 wide, h ≈ 640, f above) while sizes are unknown.
/// `width` and `height` come from the client: any u32 is handled without overflow.
pub fn layer_for_size(width: u32, height: u32, sizes: &[(LayerIndex, (u16, u16))]) -> LayerIndex {
    let mut known: Vec<&(LayerIndex, (u16, u16))> = sizes.iter().collect();
    known.sort_by_key(|(i, _)| *i);
    if known.is_empty() {
        // A 16:9 picture shown at this height is this wide.
        let width = width.max((u64::from(height) * 16 / 9).min(u64::from(u32::MAX)) as u32);
        return CONVENTIONAL_MAX_WIDTH
            .iter()
            .position(|max| width <= *max)
            .map_or(MAX_LAYERS as LayerIndex - 1, |i| i as LayerIndex);
    }
    known
        .iter()
        .find(|(_, (w, h))| u32::from(*w) >= width || u32::from(*h) >= height)
        .or(known.last())
        .map_or(0, |(i, _)| *i)
}

/// Pixels of a `width` × `height` element, saturating (a client may send any u32).
pub fn view_area(view: Option<(u32, u32)>) -> u32 {
    view.map_or(DEFAULT_VIEW_AREA, |(w, h)| w.saturating_mul(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn our_rids_map_by_name_whatever_their_order_in_the_offer() {
        let offered = names(&["f", "h", "q"]);
        assert_eq!(layer_index("q", &offered), 0);
        assert_eq!(layer_index("h", &offered), 1);
        assert_eq!(layer_index("f", &offered), 2);
    }

    #[test]
    fn other_rids_rank_by_their_place_in_the_offer() {
        let offered = names(&["lo", "mid", "hi", "extra"]);
        assert_eq!(layer_index("lo", &offered), 0);
        assert_eq!(layer_index("mid", &offered), 1);
        assert_eq!(layer_index("hi", &offered), 2);
        // A fourth layer folds into the top; an unknown rid into the bottom.
        assert_eq!(layer_index("extra", &offered), 2);
        assert_eq!(layer_index("nope", &offered), 0);
    }

    #[test]
    fn rid_names_round_trip() {
        let ours = names(&["q", "h", "f"]);
        let theirs = names(&["lo", "mid", "hi"]);
        for i in 0..3 {
            assert_eq!(layer_index(rid_name(i, &ours), &ours), i);
            assert_eq!(layer_index(rid_name(i, &theirs), &theirs), i);
        }
        assert_eq!(rid_name(1, &[]), "");
        assert_eq!(rid_name(2, &names(&["lo"])), "");
    }

    #[test]
    fn the_smallest_layer_that_fills_the_element() {
        let sizes = [(0, (320, 180)), (1, (640, 360)), (2, (1280, 720))];
        assert_eq!(layer_for_size(300, 170, &sizes), 0);
        assert_eq!(layer_for_size(330, 190, &sizes), 1);
        // A picture scaled to fit a wide, flat element only needs to fill its height.
        assert_eq!(layer_for_size(400, 150, &sizes), 0);
        assert_eq!(layer_for_size(1000, 500, &sizes), 2);
        // Bigger than any layer: the biggest there is.
        assert_eq!(layer_for_size(4000, 3000, &sizes), 2);
        assert_eq!(layer_for_size(4000, 3000, &sizes[..2]), 1);
    }

    #[test]
    fn by_convention_while_no_size_is_known() {
        assert_eq!(layer_for_size(320, 180, &[]), 0);
        assert_eq!(layer_for_size(640, 360, &[]), 1);
        assert_eq!(layer_for_size(1280, 720, &[]), 2);
        // A tall narrow element is judged by the width a 16:9 picture of its height needs.
        assert_eq!(layer_for_size(100, 700, &[]), 2);
    }

    #[test]
    fn client_sizes_at_the_limit_do_not_overflow() {
        assert_eq!(layer_for_size(u32::MAX, u32::MAX, &[]), 2);
        assert_eq!(layer_for_size(1, u32::MAX, &[]), 2);
        assert_eq!(view_area(Some((u32::MAX, u32::MAX))), u32::MAX);
        assert_eq!(view_area(None), DEFAULT_VIEW_AREA);
    }
}
