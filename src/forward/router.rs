//! The Router of one Publication: its layers' Receivers and its Subscriptions, and every
//! decision that spans them.
//!
//! Like mediasoup's Router between a Producer and its Consumers, it hands each packet of the
//! publication to every subscription and gathers what they decide into one [`Fanout`]: the
//! packets to send (with the route the caller gave each subscription), at most one keyframe
//! request for the publisher, and counts. It also answers the publication-level questions:
//! which layer a subscriber's keyframe request must reach, what each layer costs a subscriber
//! (for the Allocator), and which layers anyone needs (dynacast).
//!
//! It is generic over the subscriber key `S` and the route `R` (for the worker: a subscriber
//! peer and the m-line and payload type to write on), so it knows nothing of the WebRTC stack.
//! Time is an argument; tests drive it with a fake clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use crate::forward::allocator::{Cap, Demand, Priority};
use crate::forward::dynacast::Dynacast;
use crate::forward::layers::{self, ASSUMED_LAYER_BPS};
use crate::forward::packet::{Codec, Packet};
use crate::forward::receiver::Receiver;
use crate::forward::selector::{LayerIndex, MAX_LAYERS};
use crate::forward::subscription::{DropReason, Forward, Outgoing, Subscription};
use crate::forward::temporal::ALL_TEMPORAL;

/// What a subscriber asks for one video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// At most this layer (`None`: quality off).
    Layer(Option<LayerIndex>),
    /// The size of the element showing the video, in device pixels: the smallest layer that
    /// fills it.
    Size(u32, u32),
}

/// One packet to send to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<S, R> {
    pub subscriber: S,
    pub route: R,
    pub packet: Outgoing,
}

/// What one publisher packet comes to. Reused from packet to packet: the fan-out allocates
/// nothing once its vector has grown to the number of subscriptions.
#[derive(Debug)]
pub struct Fanout<S, R> {
    pub deliveries: Vec<Delivery<S, R>>,
    /// Ask the publisher for a keyframe of this layer (the throttle already agreed).
    pub keyframe_request: Option<LayerIndex>,
    /// Packets the publisher's sequence numbers skipped before this one (upstream loss).
    pub lost: u64,
    /// Subscriptions that dropped the packet because they wait for a keyframe.
    pub waiting_for_keyframe: u32,
    /// Subscriptions that dropped the packet as older than what they sent, or a duplicate.
    pub late: u32,
}

impl<S, R> Default for Fanout<S, R> {
    fn default() -> Self {
        Self {
            deliveries: Vec::new(),
            keyframe_request: None,
            lost: 0,
            waiting_for_keyframe: 0,
            late: 0,
        }
    }
}

impl<S, R> Fanout<S, R> {
    fn clear(&mut self) {
        self.deliveries.clear();
        self.keyframe_request = None;
        self.lost = 0;
        self.waiting_for_keyframe = 0;
        self.late = 0;
    }
}

/// One layer of the publication as it arrives.
#[derive(Debug)]
struct LayerState {
    receiver: Receiver,
    /// Resolution from the layer's last keyframe.
    size: Option<(u16, u16)>,
    /// Bitrate when last measured live: what a layer dynacast paused is remembered to cost.
    last_bps: u64,
}

#[derive(Debug)]
struct Routed<R> {
    subscription: Subscription,
    /// Where packets go; `None` until the subscriber's connection has negotiated the track
    /// and the publisher's format is known.
    route: Option<R>,
    /// The subscriber unsubscribed for now (keeps its m-line, gets nothing).
    paused: bool,
    /// The element size the subscriber reported, if it chose by size.
    view: Option<(u32, u32)>,
    /// The layer the subscriber was last told it receives (`Some(None)`: told it is off), so
    /// it hears of each change once and of nothing else.
    told: Option<Option<LayerIndex>>,
}

impl<R> Routed<R> {
    /// The subscriber is to be told its video is off; false if it knows (or never had any).
    fn tell_off(&mut self) -> bool {
        let had_video = matches!(self.told, Some(Some(_)));
        if had_video {
            self.told = Some(None);
        }
        had_video
    }
}

/// The Router of one publication.
#[derive(Debug)]
pub struct Router<S, R> {
    priority: Priority,
    /// Learned from the first packet; `Other` until then.
    codec: Codec,
    /// The simulcast rids the publisher offered, in its order; empty without simulcast.
    rids: Vec<String>,
    layers: [Option<LayerState>; MAX_LAYERS],
    subscriptions: HashMap<S, Routed<R>>,
    dynacast: Dynacast,
    /// Temporal layers seen in the publisher's packets (highest TID + 1; 0 without).
    temporal_layers: u8,
    /// The publisher muted the track: nothing of it is forwarded to anyone.
    muted: bool,
    /// The highest layer subscribers elsewhere (other media workers) need, for dynacast.
    remote_highest: Option<LayerIndex>,
}

impl<S: Copy + Eq + Hash, R: Copy> Router<S, R> {
    /// A publication of this priority (audio, screen or camera) offering these rids.
    pub fn new(priority: Priority, rids: Vec<String>) -> Self {
        Self {
            priority,
            codec: Codec::Other,
            rids,
            layers: [None, None, None],
            subscriptions: HashMap::new(),
            dynacast: Dynacast::default(),
            temporal_layers: 0,
            muted: false,
            remote_highest: None,
        }
    }

    /// The highest layer subscriptions that this Router does not hold need (`None`: none):
    /// dynacast keeps it, as if one of its own subscriptions desired it.
    pub fn set_remote_highest(&mut self, highest: Option<LayerIndex>) {
        self.remote_highest = highest;
    }

    /// The highest layer dynacast last decided to keep, if it decided anything.
    pub fn dynacast_highest(&self) -> Option<LayerIndex> {
        self.dynacast.highest()
    }

    /// The publisher muted (or unmuted) the track. Muted, nothing is forwarded and no
    /// subscriber takes bandwidth for it; unmuted, video resumes at a keyframe, which
    /// [`Router::keyframe_for_targets`] asks for. False if nothing changed.
    pub fn set_muted(&mut self, muted: bool) -> bool {
        if self.muted == muted {
            return false;
        }
        self.muted = muted;
        for r in self.subscriptions.values_mut() {
            r.subscription.set_paused(r.paused || muted);
        }
        true
    }

    pub fn is_muted(&self) -> bool {
        self.muted
    }

    /// Whether any of its layers has packets coming in now.
    pub fn is_flowing(&self, now: Instant) -> bool {
        self.layers
            .iter()
            .flatten()
            .any(|l| l.receiver.is_live(now))
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The rids the publisher offered (empty without simulcast).
    pub fn rids(&self) -> &[String] {
        &self.rids
    }

    /// The layer index of a rid of this publication.
    pub fn layer_index(&self, rid: &str) -> LayerIndex {
        layers::layer_index(rid, &self.rids)
    }

    /// The rid of a layer of this publication, as told to subscribers.
    pub fn rid_name(&self, layer: LayerIndex) -> &str {
        layers::rid_name(layer, &self.rids)
    }

    fn is_simulcast(&self) -> bool {
        self.rids.len() >= 2
    }

    /// Layers that have received packets.
    pub fn layer_count(&self) -> usize {
        self.layers.iter().flatten().count()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_subscribed(&self, subscriber: &S) -> bool {
        self.subscriptions.contains_key(subscriber)
    }

    /// Every subscriber, in no order.
    pub fn subscribers(&self) -> impl Iterator<Item = S> + '_ {
        self.subscriptions.keys().copied()
    }

    /// Packets forwarded to `subscriber` so far.
    pub fn forwarded(&self, subscriber: &S) -> u64 {
        self.subscriptions
            .get(subscriber)
            .map_or(0, |r| r.subscription.forwarded)
    }

    /// The layer `subscriber` receives now, if any.
    pub fn current_layer(&self, subscriber: &S) -> Option<LayerIndex> {
        self.subscriptions
            .get(subscriber)?
            .subscription
            .selector()
            .current()
    }

    /// Starts forwarding to `subscriber` (once routed). False if it was subscribed already.
    pub fn subscribe(&mut self, subscriber: S) -> bool {
        if self.subscriptions.contains_key(&subscriber) {
            return false;
        }
        let mut subscription = Subscription::new(self.codec);
        subscription.set_paused(self.muted);
        // What is live now: its first packets go straight to the right layer.
        for (index, layer) in self.layers.iter().enumerate() {
            if let Some(at) = layer.as_ref().and_then(|l| l.receiver.last_packet()) {
                subscription.layer_seen(index as LayerIndex, at);
            }
        }
        self.subscriptions.insert(
            subscriber,
            Routed {
                subscription,
                route: None,
                paused: false,
                view: None,
                told: None,
            },
        );
        true
    }

    /// Stops forwarding to `subscriber`. False if it was not subscribed.
    pub fn unsubscribe(&mut self, subscriber: &S) -> bool {
        self.subscriptions.remove(subscriber).is_some()
    }

    /// Where `subscriber`'s packets go (`None`: nowhere yet).
    pub fn set_route(&mut self, subscriber: &S, route: Option<R>) {
        if let Some(r) = self.subscriptions.get_mut(subscriber) {
            r.route = route;
        }
    }

    /// Pauses or resumes forwarding to `subscriber`. False if it is not subscribed.
    pub fn set_paused(&mut self, subscriber: &S, paused: bool) -> bool {
        let Some(r) = self.subscriptions.get_mut(subscriber) else {
            return false;
        };
        r.paused = paused;
        r.subscription.set_paused(paused || self.muted);
        true
    }

    /// What `subscriber` asks for. `None` if it is not subscribed; else whether this turned
    /// its video off while a layer was flowing: the subscriber must be told here, as no packet
    /// will carry the change.
    pub fn set_preference(&mut self, subscriber: &S, preference: Preference) -> Option<bool> {
        let sizes: Vec<(LayerIndex, (u16, u16))> = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i as LayerIndex, l.as_ref()?.size?)))
            .collect();
        let r = self.subscriptions.get_mut(subscriber)?;
        let layer = match preference {
            Preference::Layer(layer) => {
                r.view = None;
                layer
            }
            Preference::Size(width, height) => {
                r.view = Some((width, height));
                Some(layers::layer_for_size(width, height, &sizes))
            }
        };
        r.subscription.set_preferred(layer);
        Some(layer.is_none() && r.tell_off())
    }

    /// Hands one publisher packet to every subscription. `packet.layer` says which layer it
    /// belongs to. `out` is cleared and filled.
    pub fn on_packet(&mut self, packet: &Packet, now: Instant, out: &mut Fanout<S, R>) {
        out.clear();
        if self.codec == Codec::Other && packet.codec != Codec::Other {
            self.learn_codec(packet.codec);
        }
        let index = usize::from(packet.layer).min(MAX_LAYERS - 1);
        let codec = self.codec;
        let layer = self.layers[index].get_or_insert_with(|| LayerState {
            receiver: Receiver::new(codec),
            size: None,
            last_bps: 0,
        });
        if let Some(size) = packet.vp8.and_then(|v| v.keyframe_size) {
            layer.size = Some(size);
        }
        if let Some(tid) = packet.vp8.and_then(|v| v.tid) {
            self.temporal_layers = self.temporal_layers.max(tid.saturating_add(1));
        }
        out.lost = layer.receiver.on_packet(packet, now);
        for (subscriber, routed) in self.subscriptions.iter_mut() {
            let Some(route) = routed.route else {
                // Not negotiated yet: it still learns which layers arrive, to start right.
                routed.subscription.layer_seen(packet.layer, now);
                continue;
            };
            match routed.subscription.on_packet(packet, now) {
                Forward::Send(mut packet) => {
                    if let Some((layer, _)) = packet.switched {
                        // Back on the layer the subscriber knows (after a pause, or the layer
                        // came back): nothing changed for it.
                        if routed.told == Some(Some(layer)) {
                            packet.switched = None;
                        }
                        routed.told = Some(Some(layer));
                    }
                    out.deliveries.push(Delivery {
                        subscriber: *subscriber,
                        route,
                        packet,
                    })
                }
                Forward::Drop(DropReason::WaitingForKeyframe) => out.waiting_for_keyframe += 1,
                Forward::Drop(DropReason::Late) => out.late += 1,
                Forward::Drop(DropReason::NotSelected | DropReason::Paused) => {}
            }
        }
        // However many subscriptions wait, one request (throttled per layer) serves them all.
        if out.waiting_for_keyframe > 0 && layer.receiver.want_keyframe(now) {
            out.keyframe_request = Some(index as LayerIndex);
        }
    }

    /// The codec decides a subscription's rules (keyframe gating, layers): subscriptions made
    /// before the first packet start afresh, keeping what their subscriber asked for.
    fn learn_codec(&mut self, codec: Codec) {
        self.codec = codec;
        for r in self.subscriptions.values_mut() {
            let preferred = r.subscription.selector().preferred();
            r.subscription = Subscription::new(codec);
            r.subscription.set_preferred(preferred);
            r.subscription.set_paused(r.paused || self.muted);
        }
    }

    /// `subscriber` asked for a keyframe (PLI/FIR): the layers to request one of, throttled.
    /// It must come from the layer that subscriber is being sent; with none yet, from the
    /// layers subscribers aim for.
    pub fn keyframe_for(&mut self, subscriber: &S, now: Instant) -> Vec<LayerIndex> {
        match self.current_layer(subscriber) {
            Some(layer) => self.throttled(std::iter::once(layer), now),
            None => self.keyframe_for_targets(now),
        }
    }

    /// A subscription started or resumed and can show nothing before a keyframe: the layers
    /// subscriptions aim for (all layers while none aims yet), throttled.
    pub fn keyframe_for_targets(&mut self, now: Instant) -> Vec<LayerIndex> {
        let mut wanted = [false; MAX_LAYERS];
        for r in self.subscriptions.values() {
            if let Some(t) = r.subscription.selector().target() {
                wanted[usize::from(t).min(MAX_LAYERS - 1)] = true;
            }
        }
        let any = wanted.contains(&true);
        let layers = (0..MAX_LAYERS as LayerIndex).filter(|l| !any || wanted[usize::from(*l)]);
        self.throttled(layers.collect::<Vec<_>>(), now)
    }

    fn throttled(
        &mut self,
        layers: impl IntoIterator<Item = LayerIndex>,
        now: Instant,
    ) -> Vec<LayerIndex> {
        layers
            .into_iter()
            .filter(|l| {
                self.layers[usize::from(*l).min(MAX_LAYERS - 1)]
                    .as_mut()
                    .is_some_and(|layer| layer.receiver.want_keyframe(now))
            })
            .collect()
    }

    /// What `subscriber` asks of the Allocator for this publication, under `key`: its
    /// priority, preference, element size and each layer's cost. `None` when it is not
    /// subscribed or paused.
    ///
    /// Every layer the publisher offered has a cost: measured while it flows, else remembered
    /// from when it did, else assumed. A layer dynacast paused must stay allocatable, or
    /// nobody would ever ask for it again.
    pub fn demand<K>(&mut self, subscriber: &S, key: K, now: Instant) -> Option<Demand<K>> {
        let r = self.subscriptions.get(subscriber)?;
        if r.paused || self.muted {
            return None;
        }
        let preferred = r.subscription.selector().preferred();
        let area = layers::view_area(r.view);
        let offered = self.rids.len().clamp(1, MAX_LAYERS);
        let mut layer_bps = [0u64; MAX_LAYERS];
        if self.priority != Priority::Audio {
            layer_bps[..offered].copy_from_slice(&ASSUMED_LAYER_BPS[..offered]);
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let Some(layer) = layer else { continue };
            if layer.receiver.is_live(now) {
                layer.last_bps = layer.receiver.bitrate_bps(now).max(1);
            }
            if layer.last_bps > 0 {
                layer_bps[i] = layer.last_bps;
            }
        }
        Some(Demand {
            key,
            priority: self.priority,
            preferred,
            area,
            layer_bps,
            temporal_layers: self.temporal_layers,
        })
    }

    /// The Allocator's cap for `subscriber` (`None`: no bandwidth for it). Returns the cap in
    /// force, and whether it paused video the subscriber was receiving: the subscriber must be
    /// told (`off`, for bandwidth), or it would see a frozen picture and no reason.
    ///
    /// Without simulcast there is no smaller layer to fall back to, and pausing would only
    /// trade a congested picture for none; the publisher's own congestion control is what
    /// adapts such a track. Its frame rate may still be lowered, to the lowest with no room.
    pub fn set_cap(&mut self, subscriber: &S, cap: Option<Cap>) -> (Option<Cap>, bool) {
        let cap = if self.is_simulcast() {
            cap
        } else {
            Some(Cap {
                layer: 0,
                max_tid: cap.map_or(0, |c| c.max_tid),
            })
        };
        let Some(r) = self.subscriptions.get_mut(subscriber) else {
            return (cap, false);
        };
        r.subscription.set_cap(cap.map(|c| c.layer));
        r.subscription
            .set_max_temporal(cap.map_or(ALL_TEMPORAL, |c| c.max_tid));
        let paused = r.subscription.selector().desired().is_none()
            && r.subscription.selector().preferred().is_some()
            && r.tell_off();
        (cap, paused)
    }

    /// The rids the publisher should send now, when that changed (dynacast; simulcast only).
    pub fn dynacast(&mut self) -> Option<Vec<String>> {
        if !self.is_simulcast() {
            return None;
        }
        let desired = self
            .subscriptions
            .values()
            .filter(|r| !r.paused)
            .map(|r| r.subscription.selector().desired())
            .chain(self.remote_highest.map(Some));
        let highest = self.dynacast.update(desired)?;
        Some(
            self.rids
                .iter()
                .filter(|rid| layers::layer_index(rid, &self.rids) <= highest)
                .cloned()
                .collect(),
        )
    }

    /// Adds this publication's video subscriptions to `counts` by the layer they receive:
    /// q, h, f, and off (index 3). A track without simulcast counts as q.
    pub fn count_layers(&self, counts: &mut [i64; MAX_LAYERS + 1]) {
        if self.priority == Priority::Audio {
            return;
        }
        for r in self.subscriptions.values() {
            let slot = r.subscription.selector().current().map_or(MAX_LAYERS, |l| {
                if self.is_simulcast() {
                    usize::from(l).min(MAX_LAYERS - 1)
                } else {
                    0
                }
            });
            counts[slot] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::forward::keyframe::KEYFRAME_REQUEST_INTERVAL;
    use crate::forward::selector::SwitchReason;

    const MS: Duration = Duration::from_millis(1);

    type TestRouter = Router<u32, &'static str>;

    fn simulcast() -> TestRouter {
        Router::new(Priority::Camera, vec!["q".into(), "h".into(), "f".into()])
    }

    fn single() -> TestRouter {
        Router::new(Priority::Camera, Vec::new())
    }

    fn video(layer: LayerIndex, seq: u64, key: bool, at: Instant) -> Packet {
        Packet {
            ssrc: 100 + u32::from(layer),
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            codec: Codec::Vp8,
            keyframe: key,
            audio_level: None,
            voice_activity: None,
            arrival: at,
            payload: Arc::from(vec![layer; 100]),
            layer,
            vp8: None,
        }
    }

    fn routed(router: &mut TestRouter, subscriber: u32, route: &'static str) {
        assert!(router.subscribe(subscriber));
        router.set_route(&subscriber, Some(route));
    }

    fn to<'a>(out: &'a Fanout<u32, &'static str>, subscriber: u32) -> Option<&'a Outgoing> {
        out.deliveries
            .iter()
            .find(|d| d.subscriber == subscriber)
            .map(|d| &d.packet)
    }

    #[test]
    fn a_packet_reaches_every_routed_subscription_sharing_one_payload() {
        let t = Instant::now();
        let mut r = single();
        routed(&mut r, 1, "one");
        routed(&mut r, 2, "two");
        r.subscribe(3); // not negotiated yet: no route
        let mut out = Fanout::default();
        let key = video(0, 1, true, t);
        r.on_packet(&key, t, &mut out);
        assert_eq!(out.deliveries.len(), 2);
        for d in &out.deliveries {
            assert!(Arc::ptr_eq(&d.packet.payload, &key.payload));
            assert_eq!(d.route, if d.subscriber == 1 { "one" } else { "two" });
        }
        assert!(to(&out, 3).is_none());
        // Routed later, it starts like anyone else: at a keyframe.
        r.set_route(&3, Some("three"));
        r.on_packet(&video(0, 2, false, t + MS), t + MS, &mut out);
        assert_eq!(out.deliveries.len(), 2);
        assert_eq!(out.waiting_for_keyframe, 1);
    }

    #[test]
    fn subscriptions_waiting_for_a_keyframe_make_one_throttled_request() {
        let t = Instant::now();
        let mut r = single();
        for s in 1..=5 {
            routed(&mut r, s, "x");
        }
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, false, t), t, &mut out);
        assert_eq!(out.waiting_for_keyframe, 5);
        assert_eq!(out.keyframe_request, Some(0));
        // Within the throttle interval the keyframe asked for will serve everyone.
        r.on_packet(&video(0, 2, false, t + 10 * MS), t + 10 * MS, &mut out);
        assert_eq!(out.keyframe_request, None);
        let later = t + KEYFRAME_REQUEST_INTERVAL;
        r.on_packet(&video(0, 3, false, later), later, &mut out);
        assert_eq!(out.keyframe_request, Some(0));
        r.on_packet(&video(0, 4, true, later + MS), later + MS, &mut out);
        assert_eq!(out.deliveries.len(), 5);
        assert_eq!(out.keyframe_request, None);
    }

    #[test]
    fn upstream_loss_is_counted_once_per_packet_not_per_subscription() {
        let t = Instant::now();
        let mut r = single();
        routed(&mut r, 1, "x");
        routed(&mut r, 2, "x");
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, true, t), t, &mut out);
        r.on_packet(&video(0, 5, false, t + MS), t + MS, &mut out);
        assert_eq!(out.lost, 3);
    }

    #[test]
    fn a_subscription_routed_late_starts_on_the_top_layer_it_saw_arriving_meanwhile() {
        use crate::forward::selector::LAYER_DOWN_BESIDE_LOWER;
        let t = Instant::now();
        let mut r = simulcast();
        r.subscribe(1); // not negotiated yet
        let mut out = Fanout::default();
        let mut at = t;
        for seq in 1..20 {
            at += LAYER_DOWN_BESIDE_LOWER / 10;
            r.on_packet(&video(0, seq, false, at), at, &mut out);
            r.on_packet(&video(2, seq, false, at), at, &mut out);
        }
        r.set_route(&1, Some("x"));
        // Its first packet is of the lowest layer: the top one was arriving all along, so
        // that is the one it starts on.
        let at = at + MS;
        r.on_packet(&video(0, 20, true, at), at, &mut out);
        assert!(out.deliveries.is_empty());
        r.on_packet(&video(2, 20, true, at), at, &mut out);
        assert_eq!(r.current_layer(&1), Some(2));
    }

    #[test]
    fn each_subscription_gets_its_own_layer_and_hears_of_the_switch_once() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "low");
        routed(&mut r, 2, "high");
        assert_eq!(
            r.set_preference(&1, Preference::Layer(Some(0))),
            Some(false)
        );
        let mut out = Fanout::default();
        let mut seq = 0;
        let mut send = |r: &mut TestRouter, layer, key, at| {
            seq += 1;
            r.on_packet(&video(layer, seq, key, at), at, &mut out);
            out.deliveries
                .iter()
                .map(|d| (d.subscriber, d.packet.switched))
                .collect::<Vec<_>>()
        };
        // All three layers live; each subscription waits for its own layer's keyframe.
        for layer in 0..3 {
            assert_eq!(send(&mut r, layer, false, t), vec![]);
        }
        assert_eq!(
            send(&mut r, 0, true, t),
            vec![(1, Some((0, SwitchReason::Start)))]
        );
        assert_eq!(send(&mut r, 1, true, t), vec![]);
        assert_eq!(
            send(&mut r, 2, true, t),
            vec![(2, Some((2, SwitchReason::Start)))]
        );
        // Then each gets only its layer, and no further switch.
        assert_eq!(send(&mut r, 0, false, t + MS), vec![(1, None)]);
        assert_eq!(send(&mut r, 1, false, t + MS), vec![]);
        assert_eq!(send(&mut r, 2, false, t + MS), vec![(2, None)]);
        assert_eq!(r.current_layer(&1), Some(0));
        assert_eq!(r.current_layer(&2), Some(2));
        assert_eq!(r.rid_name(2), "f");
    }

    #[test]
    fn a_subscriber_keyframe_request_goes_to_the_layer_it_receives() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        r.set_preference(&1, Preference::Layer(Some(1)));
        let mut out = Fanout::default();
        for (seq, layer) in [(1, 0), (2, 1), (3, 2)] {
            r.on_packet(&video(layer, seq, true, t), t, &mut out);
        }
        assert_eq!(r.current_layer(&1), Some(1));
        let later = t + KEYFRAME_REQUEST_INTERVAL;
        assert_eq!(r.keyframe_for(&1, later), vec![1]);
        // Throttled like the fan-out's own requests.
        assert_eq!(r.keyframe_for(&1, later + MS), Vec::<LayerIndex>::new());
    }

    #[test]
    fn a_new_subscription_asks_for_the_layers_subscriptions_aim_for() {
        let t = Instant::now();
        let mut r = simulcast();
        let mut out = Fanout::default();
        for (seq, layer) in [(1, 0), (2, 1), (3, 2)] {
            r.on_packet(&video(layer, seq, false, t), t, &mut out);
        }
        // Nobody aims anywhere yet: every layer that arrives.
        assert_eq!(r.keyframe_for_targets(t), vec![0, 1, 2]);
        routed(&mut r, 1, "x");
        r.set_preference(&1, Preference::Layer(Some(1)));
        r.on_packet(&video(1, 4, false, t + MS), t + MS, &mut out);
        let later = t + KEYFRAME_REQUEST_INTERVAL;
        assert_eq!(r.keyframe_for_targets(later), vec![1]);
    }

    #[test]
    fn a_subscription_made_before_the_first_packet_still_waits_for_a_keyframe() {
        let t = Instant::now();
        let mut r = single();
        routed(&mut r, 1, "x");
        assert_eq!(r.codec(), Codec::Other);
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, false, t), t, &mut out);
        assert_eq!(r.codec(), Codec::Vp8);
        assert!(out.deliveries.is_empty(), "a delta frame first is garbage");
        r.on_packet(&video(0, 2, true, t + MS), t + MS, &mut out);
        assert_eq!(out.deliveries.len(), 1);
    }

    #[test]
    fn paused_subscriptions_get_nothing_and_resume_at_a_keyframe() {
        let t = Instant::now();
        let mut r = single();
        routed(&mut r, 1, "x");
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, true, t), t, &mut out);
        assert_eq!(out.deliveries.len(), 1);
        assert!(r.set_paused(&1, true));
        r.on_packet(&video(0, 2, false, t + MS), t + MS, &mut out);
        assert!(out.deliveries.is_empty());
        assert!(r.demand(&1, "k", t).is_none(), "paused takes no bandwidth");
        r.set_paused(&1, false);
        r.on_packet(&video(0, 3, false, t + 2 * MS), t + 2 * MS, &mut out);
        assert!(out.deliveries.is_empty());
        assert_eq!(out.waiting_for_keyframe, 1);
        r.on_packet(&video(0, 4, true, t + 3 * MS), t + 3 * MS, &mut out);
        assert_eq!(out.deliveries.len(), 1);
        assert!(!r.set_paused(&9, true), "not subscribed");
    }

    #[test]
    fn a_muted_publication_reaches_nobody_and_resumes_at_a_keyframe() {
        let t = Instant::now();
        let mut r = single();
        routed(&mut r, 1, "x");
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, true, t), t, &mut out);
        assert_eq!(out.deliveries.len(), 1);
        assert!(r.set_muted(true));
        assert!(!r.set_muted(true), "no change");
        // A subscriber arriving while it is muted gets nothing either.
        routed(&mut r, 2, "y");
        r.on_packet(&video(0, 2, true, t + MS), t + MS, &mut out);
        assert!(out.deliveries.is_empty(), "muted, yet forwarded");
        assert!(r.demand(&1, "k", t).is_none(), "muted takes no bandwidth");
        // A subscriber's own pause outlives the unmute.
        r.set_paused(&2, true);
        assert!(r.set_muted(false));
        r.on_packet(&video(0, 3, false, t + 2 * MS), t + 2 * MS, &mut out);
        assert!(out.deliveries.is_empty(), "a delta frame after unmute");
        assert_eq!(out.waiting_for_keyframe, 1);
        assert!(
            out.keyframe_request.is_some(),
            "the publisher is asked for one"
        );
        r.on_packet(&video(0, 4, true, t + 3 * MS), t + 3 * MS, &mut out);
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(out.deliveries[0].subscriber, 1);
    }

    #[test]
    fn demand_assumes_unmeasured_layers_and_measures_live_ones() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        let d = r.demand(&1, "cam", t).expect("subscribed");
        assert_eq!(d.layer_bps, ASSUMED_LAYER_BPS);
        assert_eq!(d.priority, Priority::Camera);
        assert_eq!(d.area, layers::DEFAULT_VIEW_AREA);
        // 100-byte packets, 10 of them on layer 0 at once: a stream that young is measured over
        // the 200 ms floor, 40 kbit/s.
        let mut out = Fanout::default();
        for seq in 1..=10 {
            r.on_packet(&video(0, seq, seq == 1, t), t, &mut out);
        }
        let d = r.demand(&1, "cam", t).expect("subscribed");
        assert_eq!(d.layer_bps, [40_000, 500_000, 1_500_000]);
        // Gone quiet, layer 0 keeps its last measured cost.
        let d = r.demand(&1, "cam", t + Duration::from_secs(5)).unwrap();
        assert_eq!(d.layer_bps[0], 40_000);
        // An element size is the allocation's area, and picks the layer.
        r.set_preference(&1, Preference::Size(320, 180));
        let d = r.demand(&1, "cam", t).unwrap();
        assert_eq!((d.area, d.preferred), (320 * 180, Some(0)));
    }

    #[test]
    fn audio_costs_nothing_until_measured() {
        let t = Instant::now();
        let mut r: TestRouter = Router::new(Priority::Audio, Vec::new());
        routed(&mut r, 1, "x");
        assert_eq!(r.demand(&1, (), t).unwrap().layer_bps, [0, 0, 0]);
    }

    #[test]
    fn without_simulcast_the_allocator_never_pauses_the_video() {
        let mut r = single();
        routed(&mut r, 1, "x");
        assert_eq!(
            r.set_cap(&1, None),
            (
                Some(Cap {
                    layer: 0,
                    max_tid: 0
                }),
                false
            ),
            "kept, at its lowest frame rate"
        );
        let mut s = simulcast();
        routed(&mut s, 1, "x");
        assert_eq!(s.set_cap(&1, None), (None, false), "nothing flowed yet");
    }

    #[test]
    fn a_pause_for_bandwidth_is_told_once_and_the_resume_too() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        let mut out = Fanout::default();
        r.on_packet(&video(0, 1, true, t), t, &mut out);
        assert_eq!(
            to(&out, 1).and_then(|o| o.switched),
            Some((0, SwitchReason::Start))
        );
        // No room even for the lowest layer: paused, and that must be said.
        assert_eq!(r.set_cap(&1, None), (None, true));
        assert_eq!(r.set_cap(&1, None), (None, false), "said once");
        r.on_packet(&video(0, 2, true, t + MS), t + MS, &mut out);
        assert!(out.deliveries.is_empty());
        // Room again: the resume is a switch, for bandwidth.
        assert_eq!(
            r.set_cap(&1, Some(Cap::full(0))),
            (Some(Cap::full(0)), false)
        );
        r.on_packet(&video(0, 3, true, t + 2 * MS), t + 2 * MS, &mut out);
        assert_eq!(
            to(&out, 1).and_then(|o| o.switched),
            Some((0, SwitchReason::Bandwidth))
        );
    }

    #[test]
    fn turning_quality_off_is_reported_only_when_something_flowed() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        assert_eq!(r.set_preference(&1, Preference::Layer(None)), Some(false));
        r.set_preference(&1, Preference::Layer(Some(2)));
        let mut out = Fanout::default();
        r.on_packet(&video(2, 1, true, t), t, &mut out);
        assert_eq!(r.set_preference(&1, Preference::Layer(None)), Some(true));
        assert_eq!(r.set_preference(&7, Preference::Layer(None)), None);
    }

    #[test]
    fn dynacast_keeps_the_layers_up_to_the_highest_desired() {
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        routed(&mut r, 2, "x");
        r.set_preference(&1, Preference::Layer(Some(0)));
        r.set_preference(&2, Preference::Layer(Some(1)));
        assert_eq!(r.dynacast(), Some(vec!["q".to_string(), "h".to_string()]));
        assert_eq!(r.dynacast(), None, "told once");
        // The one wanting h is capped to q by its bandwidth.
        r.set_cap(&2, Some(Cap::full(0)));
        assert_eq!(r.dynacast(), Some(vec!["q".to_string()]));
        // A paused subscription wants nothing.
        r.set_cap(&2, Some(Cap::full(2)));
        r.set_preference(&2, Preference::Layer(Some(2)));
        r.set_paused(&2, true);
        assert_eq!(r.dynacast(), None);
        r.set_paused(&2, false);
        assert_eq!(r.dynacast().map(|l| l.len()), Some(3));
        assert_eq!(single().dynacast(), None, "nothing to turn off");
    }

    #[test]
    fn dynacast_keeps_what_subscribers_on_other_workers_need() {
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        r.set_preference(&1, Preference::Layer(Some(0)));
        assert_eq!(r.dynacast(), Some(vec!["q".to_string()]));
        assert_eq!(r.dynacast_highest(), Some(0));
        // Another worker's subscribers want f: every layer stays on.
        r.set_remote_highest(Some(2));
        assert_eq!(r.dynacast().map(|l| l.len()), Some(3));
        assert_eq!(r.dynacast_highest(), Some(2));
        // They left: back to what the local one wants.
        r.set_remote_highest(None);
        assert_eq!(r.dynacast(), Some(vec!["q".to_string()]));
        // Nobody here at all, only elsewhere.
        r.unsubscribe(&1);
        r.set_remote_highest(Some(1));
        assert_eq!(r.dynacast(), Some(vec!["q".to_string(), "h".to_string()]));
    }

    #[test]
    fn layer_counts_for_the_gauge() {
        let t = Instant::now();
        let mut r = simulcast();
        routed(&mut r, 1, "x");
        routed(&mut r, 2, "x");
        r.set_preference(&1, Preference::Layer(Some(1)));
        let mut out = Fanout::default();
        r.on_packet(&video(1, 1, true, t), t, &mut out);
        let mut counts = [0; 4];
        r.count_layers(&mut counts);
        // 1 on h; 2 wants f, which has sent nothing, so it takes the live h too.
        assert_eq!(counts, [0, 2, 0, 0]);
        r.set_preference(&2, Preference::Layer(None));
        r.on_packet(&video(1, 2, false, t + MS), t + MS, &mut out);
        let mut counts = [0; 4];
        r.count_layers(&mut counts);
        assert_eq!(counts, [0, 1, 0, 1]);
    }
}
