#!/usr/bin/env python3
"""A stock GStreamer webrtcbin participant, written from docs/protocol.md only.

It joins a room over the WebSocket signaling, publishes a VP8 camera and an Opus microphone on
one webrtcbin (its default RSA certificate, libnice's default keepalives: nothing tuned for this
server), answers the server's subscriber offers on a second webrtcbin and decodes what arrives.
The test in tests/gstreamer.rs runs two of these in one room and reads the JSON lines this
prints on stdout:

  {"event": "published", "cid": ..., "name": ..., "kind": ..., "declared": true|false}
  {"event": "decoded", "kind": "video"|"audio", "count": N, "at": seconds since start}
  {"event": "error", "code": ..., "message": ...}            (any error the server sent)
  {"event": "summary", "video_frames": N, "audio_buffers": N, "last_video_at": s, ...}

Usage: client.py --url ws://127.0.0.1:PORT/ws --token TOKEN --room ROOM --seconds 40
"""

import argparse
import asyncio
import json
import re
import sys
import threading
import time

if "--check" in sys.argv[1:]:
    # tests/run.sh asks whether everything this client needs is installed.
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    gi.require_version("GstSdp", "1.0")
    gi.require_version("Nice", "0.1")
    from gi.repository import Gst

    import websockets  # noqa: F401

    Gst.init(None)
    NEEDED = "webrtcbin nicesrc vp8enc vp8dec rtpvp8pay opusenc opusdec rtpopuspay decodebin"
    missing = [e for e in NEEDED.split() + ["videotestsrc"] if not Gst.ElementFactory.find(e)]
    sys.exit(1 if missing else 0)

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

import websockets  # noqa: E402

START = time.monotonic()
KEEP = []


def emit(**fields):
    print(json.dumps(fields), flush=True)


def now():
    return round(time.monotonic() - START, 2)


def allow_loopback(webrtcbin):
    """libnice gathers no loopback candidate, and the tests run where loopback is the only
    interface: give its agent 127.0.0.1, as Chromium's --allow-loopback-in-peer-connection
    does. Nothing else about the ICE agent is changed."""
    ice = webrtcbin.get_property("ice-agent")
    # PyGObject takes this transfer-none property as its own reference and would drop
    # webrtcbin's only one when `ice` goes: keep it for the life of the process.
    KEEP.append(ice)
    agent = ice.get_property("agent")
    address = Nice.Address()
    address.set_from_string("127.0.0.1")
    agent.add_local_address(address)


class Participant:
    def __init__(self, loop, ws, args):
        self.loop = loop
        self.ws = ws
        self.args = args
        self.next_id = 10
        self.pending = {}
        self.sid = None
        self.declared = {}
        self.video_frames = 0
        self.audio_buffers = 0
        self.last_video_at = None
        self.first_video_at = None
        self.errors = []
        self.published = []
        self.pub_candidates = []
        self.publisher_answered = False
        self.offered = False

        self.pub_pipe = Gst.parse_launch(
            "webrtcbin name=pub bundle-policy=max-bundle "
            "videotestsrc is-live=true pattern=ball ! "
            "video/x-raw,width=320,height=240,framerate=30/1 ! "
            "vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96 ! "
            "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! pub. "
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc ! "
            "rtpopuspay pt=111 ! "
            "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! pub."
        )
        self.pub = self.pub_pipe.get_by_name("pub")
        allow_loopback(self.pub)
        self.pub.connect("on-negotiation-needed", self.on_publisher_negotiation)
        self.pub.connect("on-ice-candidate", self.on_publisher_candidate)

        self.sub_pipe = Gst.Pipeline.new("subscriber")
        self.sub = Gst.ElementFactory.make("webrtcbin", "sub")
        self.sub.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        allow_loopback(self.sub)
        self.sub_pipe.add(self.sub)
        self.sub.connect("pad-added", self.on_incoming_pad)
        self.sub.connect("on-ice-candidate", self.on_subscriber_candidate)

    # --- signaling -------------------------------------------------------------------------

    def send(self, message):
        """Thread-safe: webrtcbin calls back on its own threads."""
        asyncio.run_coroutine_threadsafe(self.ws.send(json.dumps(message)), self.loop)

    def request(self, message):
        self.next_id += 1
        message["id"] = str(self.next_id)
        self.send(message)
        return message["id"]

    async def on_message(self, msg):
        kind = msg.get("type")
        if kind == "error":
            self.errors.append(msg)
            emit(event="error", code=msg.get("code"), message=msg.get("message"), at=now())
        elif kind == "answer":
            await self.on_publisher_answer(msg["sdp"])
        elif kind == "offer":
            self.on_subscriber_offer(msg["sdp"])
        elif kind == "track_published":
            track = msg["track"]
            if track.get("participant") == self.sid:
                cid = track.get("cid")
                entry = dict(
                    event="published",
                    cid=cid,
                    name=track.get("name"),
                    kind=track.get("kind"),
                    declared=cid in self.declared,
                    expected_name=self.declared.get(cid),
                )
                self.published.append(entry)
                emit(**entry)
        elif kind == "leave":
            emit(event="left", reason=msg.get("reason"), at=now())

    # --- publisher -------------------------------------------------------------------------

    def on_publisher_negotiation(self, element):
        # Both sources are linked at start; one offer carries them. webrtcbin may ask again
        # while that offer is out, which would only renegotiate the same tracks.
        if self.offered:
            return
        self.offered = True
        promise = Gst.Promise.new_with_change_func(self.on_publisher_offer_created, element, None)
        element.emit("create-offer", None, promise)

    def on_publisher_offer_created(self, promise, element, _):
        promise.wait()
        # Keep the reply alive while its description is used: PyGObject does not copy it.
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None or offer.sdp is None:
            emit(event="error", code="no_offer", message="webrtcbin made no offer", at=now())
            return
        element.emit("set-local-description", offer, Gst.Promise.new())
        sdp = offer.sdp.as_text()
        # Declare each track by the track id webrtcbin wrote in its msid (SSRC level only).
        for section in sdp.split("\r\nm=")[1:]:
            kind = section.split(" ", 1)[0]
            found = re.search(r"a=ssrc:\d+ msid:\S+ (\S+)", section) or re.search(
                r"a=msid:\S+ (\S+)", section
            )
            if found and kind in ("audio", "video"):
                cid = found.group(1)
                name = f"gst-{kind}"
                self.declared[cid] = name
                self.request({"type": "publish", "cid": cid, "kind": kind, "name": name})
        self.request({"type": "offer", "sdp": sdp})

    async def on_publisher_answer(self, sdp_text):
        _, sdp = GstSdp.SDPMessage.new_from_text(sdp_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.pub.emit("set-remote-description", answer, Gst.Promise.new())
        self.publisher_answered = True
        for mline, candidate in self.pub_candidates:
            self.send_candidate("publisher", candidate)
        self.pub_candidates.clear()

    def on_publisher_candidate(self, _element, mline, candidate):
        if self.publisher_answered:
            self.send_candidate("publisher", candidate)
        else:
            self.pub_candidates.append((mline, candidate))

    def send_candidate(self, target, candidate):
        self.request({"type": "candidate", "target": target, "candidate": candidate})

    # --- subscriber ------------------------------------------------------------------------

    def on_subscriber_offer(self, sdp_text):
        _, sdp = GstSdp.SDPMessage.new_from_text(sdp_text)
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, sdp)
        promise = Gst.Promise.new_with_change_func(self.on_remote_offer_set, None, None)
        self.sub.emit("set-remote-description", offer, promise)

    def on_remote_offer_set(self, promise, _a, _b):
        promise.wait()
        promise = Gst.Promise.new_with_change_func(self.on_subscriber_answer_created, None, None)
        self.sub.emit("create-answer", None, promise)

    def on_subscriber_answer_created(self, promise, _a, _b):
        promise.wait()
        reply = promise.get_reply()
        answer = reply.get_value("answer")
        self.sub.emit("set-local-description", answer, Gst.Promise.new())
        self.request({"type": "answer", "sdp": answer.sdp.as_text()})

    def on_subscriber_candidate(self, _element, _mline, candidate):
        self.send_candidate("subscriber", candidate)

    def on_incoming_pad(self, _element, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self.on_decoded_pad)
        self.sub_pipe.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def on_decoded_pad(self, _decode, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        self.sub_pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))
        kind = "video" if name.startswith("video/") else "audio"
        pad.add_probe(Gst.PadProbeType.BUFFER, self.on_decoded_buffer, kind)

    def on_decoded_buffer(self, _pad, _info, kind):
        if kind == "video":
            self.video_frames += 1
            self.last_video_at = now()
            if self.first_video_at is None:
                self.first_video_at = self.last_video_at
            if self.video_frames % 100 == 1:
                emit(event="decoded", kind="video", count=self.video_frames, at=now())
        else:
            self.audio_buffers += 1
            if self.audio_buffers % 250 == 1:
                emit(event="decoded", kind="audio", count=self.audio_buffers, at=now())
        return Gst.PadProbeReturn.OK

    def summary(self):
        return dict(
            event="summary",
            sid=self.sid,
            video_frames=self.video_frames,
            audio_buffers=self.audio_buffers,
            first_video_at=self.first_video_at,
            last_video_at=self.last_video_at,
            published=self.published,
            errors=self.errors,
            ended_at=now(),
        )


async def run(args):
    Gst.init(None)
    glib_loop = GLib.MainLoop()
    threading.Thread(target=glib_loop.run, daemon=True).start()
    loop = asyncio.get_running_loop()
    async with websockets.connect(args.url, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {"type": "join", "id": "1", "token": args.token, "room": args.room, "protocol": 1}
            )
        )
        joined = json.loads(await ws.recv())
        if joined.get("type") != "joined":
            emit(event="error", code=joined.get("code"), message=joined.get("message"), at=now())
            return 2
        me = Participant(loop, ws, args)
        me.sid = joined["participant"]["sid"]
        emit(event="joined", sid=me.sid, at=now())
        me.sub_pipe.set_state(Gst.State.PLAYING)
        me.pub_pipe.set_state(Gst.State.PLAYING)
        deadline = time.monotonic() + args.seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=left)
            except asyncio.TimeoutError:
                break
            except websockets.ConnectionClosed:
                emit(event="error", code="closed", message="the server closed the socket", at=now())
                break
            if args.verbose:
                print(raw[:300], file=sys.stderr, flush=True)
            await me.on_message(json.loads(raw))
        emit(**me.summary())
        me.pub_pipe.set_state(Gst.State.NULL)
        me.sub_pipe.set_state(Gst.State.NULL)
    glib_loop.quit()
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
