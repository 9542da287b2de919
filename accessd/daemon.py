"""The live loop: sources -> detector -> verifier -> decisions -> actions, for every door.

The daemon hosts the doors (accessd/door.py) around one pipeline and one
gallery. Each turn takes the latest frame of every door that has one and
sends all their faces through the model in one run; each door then decides
on its own frame with its own state and fires its own actions.

Failure policy (fail closed): anything that goes wrong on a frame (decode,
detector, model, gallery) yields no grant. It is logged, counted in
`errors`, and the loop goes on with its last good model and gallery.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import enum
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from accessd.actions import Actions
from accessd.align import context_crop
from accessd.audit import AuditError, AuditLog
from accessd.background import Worker
from accessd.codes import MAX_CODE_CHARS
from accessd.config import Config, ConfigError
from accessd.door import Door, Stats
from accessd.doorview import DoorView
from accessd.gallery import Gallery, LoadCancelled
from accessd.hass import BY, Command, HomeAssistant, door_topic
from accessd.metrics import Metrics
from accessd.mqtt import MqttPublisher, open_mqtt
from accessd.notify import Notifier
from accessd.personfile import RuleBook
from accessd.pipeline import FrameAnalysis, Pipeline
from accessd.reload import Parts, door_actions, rebuild, retire
from accessd.reload import close as close_parts
from accessd.rules import Refusal, judge
from accessd.secondfactor import Result, Step
from accessd.source import FrameSource
from accessd.statefile import write_json
from accessd.types import Decision, Frame, Image, Outcome
from accessd.watch import GalleryWatcher
from accessd.webconsole import start_console

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
DOOR_HUNG_S = 10.0  # a door's thread this long in one turn is stuck: the watchdog pings stop
HOUSEKEEPING_S = 0.05  # the house loop's turn: a revocation or command waits at most this (plus a frame)


class Swap(enum.IntEnum):
    """What a finished background job replaced, in rising order of what the decider must forget."""

    NONE = 0
    GALLERY = 1
    CONFIG = 2


@dataclass(frozen=True)
class _Revocation:
    paths: frozenset[Path]  # resolved
    applied: threading.Event


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, before the daemon starts its threads; False where it is not glibc.

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and keeps
    their freed memory: with a thread per door, the ten-minute two-door soak grew 22.9 MB
    (482 -> 505 MB); with 2 arenas 7.6 MB (434 -> 441 MB) at the same frame rate (docs/speed.md).
    The same as MALLOC_ARENA_MAX=2 in the environment, which still wins when set.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def install_signal_handlers(stop: threading.Event, reload: threading.Event | None = None,
                            face_unlock: Callable[[bool, str], None] | None = None) -> None:
    """SIGTERM/SIGINT set the one stop event; SIGHUP asks the loop to reload config and gallery;
    SIGUSR1 turns face unlock off at every door, SIGUSR2 on again (`face_unlock` queues it)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        # Not logged here: the handler runs between two bytecodes of the main thread,
        # which may be halfway through writing a log line to the same stream; writing
        # again re-enters it (RuntimeError), which once lost the stop itself. Another
        # thread waits for the handler's lock instead.
        name = signal.Signals(signum).name
        threading.Thread(target=log.info, args=("received %s; stopping after the current frame", name),
                         name="signal-log", daemon=True).start()

    def handle_hup(_signum: int, _frame: FrameType | None) -> None:
        if reload is not None:
            reload.set()

    def handle_usr(signum: int, _frame: FrameType | None) -> None:
        if face_unlock is not None:
            face_unlock(signum == signal.SIGUSR2, f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if reload is not None:
        signal.signal(signal.SIGHUP, handle_hup)
    if face_unlock is not None:
        signal.signal(signal.SIGUSR1, handle_usr)
        signal.signal(signal.SIGUSR2, handle_usr)


class Daemon:
    def __init__(
        self,
        config: Config,
        source_uri: str | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        reload_requested: threading.Event | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        unlock_requests: queue.SimpleQueue[tuple[bool, str]] | None = None,
    ) -> None:
        self.config = config
        # Wall-clock time for access rules and second-factor windows (tests give a fake one).
        self.clock = clock
        # `accessd run --source` names the camera of a one-door config (kept across reloads).
        self.source_uri = source_uri
        if source_uri and len(config.door_list()) > 1:
            raise ConfigError([f"--source: the config has {len(config.door_list())} doors, each with its own "
                               "camera (doors[N].source.uri); --source only replaces the camera of a single door"])
        self.reload_requested = reload_requested or threading.Event()
        self._reload_config = reload_config
        self.notifier = notifier or Notifier({})
        self._next_status = 0.0
        self.pipeline = Pipeline(config)
        # A cold start embeds every photo (seconds per hundred on a CPU): SIGTERM meanwhile
        # stops it at the next photo (LoadCancelled) instead of waiting for the end.
        self.gallery: Gallery = self.pipeline.load_gallery(cancel=stop)
        self.watcher = GalleryWatcher(config.gallery.dir)
        # Each person's rules (person.yaml beside their photos), re-read when the watcher fires.
        self.rules = RuleBook(config.gallery.dir)
        self.rules.refresh()
        # Gallery rebuilds and reloads run here, beside the frame loop (see background.py).
        self.worker = Worker()
        self._cancel = threading.Event()
        self._reloading = False
        self.audit = AuditLog.from_config(config.audit)
        actions = door_actions(config)
        self.doors = [Door(d, config.liveness, actions[d.name]) for d in config.door_list()]
        self.mqtt: MqttPublisher | None = open_mqtt(config.mqtt)
        # Face unlock per door (Home Assistant's switch): off means nobody is let in by face. It is
        # kept across restarts: a door switched off while the house is empty must not come back on.
        self._unlock_file = config.state_dir / "face-unlock.json"
        for door, on in self._saved_unlock().items():
            for d in self.doors:
                if d.name == door:
                    d.face_unlock = on
        self.hass: HomeAssistant | None = None
        self._start_hass()
        self._listen_for_codes()
        self.stats = Stats()  # all doors together
        self.metrics = Metrics()
        self.metrics.provider.info({"provider": self.pipeline.model.provider})
        self.console: Any = None
        self._stop = stop or threading.Event()
        self._stats_lock = threading.Lock()  # `stats` is every door's, counted from each door's thread
        self._enough = threading.Event()  # max_frames reached, or the run is ending: door threads stop
        self._wake = threading.Event()  # wakes the house loop early (a door's file ended)
        self._max_frames = 0
        # Photos the console removed, applied by the frame loop before its next frame. A
        # gallery scanned before a removal may still hold them, so each removal is kept
        # (numbered) until a gallery scanned after it is swapped in.
        self._revocations: queue.SimpleQueue[_Revocation] = queue.SimpleQueue()
        self._revoked: list[tuple[int, frozenset[Path]]] = []
        self._revoke_seq = 0
        self._reload_seq = 0
        # Face unlock switched at every door by a signal (SIGUSR1 off, SIGUSR2 on), for the house loop.
        self._unlock_requests = unlock_requests or queue.SimpleQueue()
        self._door_unlock_requests: queue.SimpleQueue[tuple[str, bool, str]] = queue.SimpleQueue()
        self._gallery_metrics()

    @property
    def views(self) -> dict[str, DoorView]:
        """What the console may see of each door, by name, in config order."""
        return {d.name: d.view for d in self.doors}

    @property
    def view(self) -> DoorView:
        """The first door's view (a one-door daemon's only one)."""
        return self.doors[0].view

    def _gallery_metrics(self) -> None:
        self.metrics.gallery_photos.set(len(self.gallery))
        self.metrics.gallery_people.set(len(self.gallery.people))
        for door in self.doors:
            door.view.gallery = self.gallery

    def _start_hass(self) -> None:
        """Home Assistant discovery on the current MQTT link, when `mqtt.discovery` asks for it."""
        if self.mqtt is None or not self.config.mqtt.discovery:
            self.hass = None
            return
        if self.hass is None or self.hass.mqtt is not self.mqtt or self.hass.config != self.config.mqtt:
            self.hass = HomeAssistant(self.mqtt, self.config.mqtt, self.config.state_dir,
                                      snapshots=self.config.audit.snapshots_dir is not None)
        self.hass.set_doors({d.name: d.face_unlock for d in self.doors})

    def _listen_for_codes(self) -> None:
        """Each door's keypad over MQTT: a code published (not retained) to `<door_topic>/code`."""
        if self.mqtt is None:
            return
        for door in self.doors:
            topic = f"{door_topic(self.config.mqtt, door.name)}/code"
            self.mqtt.subscribe(topic, partial(self._on_code_message, door.name))

    def _on_code_message(self, door: str, payload: bytes, retained: bool) -> None:
        if retained:  # a code left on the broker is nobody standing at the door now
            log.warning("door %s: ignored a retained code message", door)
            return
        self.enter_code(door, payload.decode(errors="replace").strip(), "mqtt keypad")

    def _saved_unlock(self) -> dict[str, bool]:
        try:
            data = json.loads(self._unlock_file.read_text())
            return {str(k): bool(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            # Unreadable: every door's face unlock stays on, and says so (a stale "off" is not guessed).
            log.error("face unlock states in %s unreadable (%s); face unlock on at every door", self._unlock_file, exc)
            return {}

    def _save_unlock(self) -> None:
        try:
            write_json(self._unlock_file, {d.name: d.face_unlock for d in self.doors})
        except OSError as exc:
            log.error("face unlock states not saved to %s: %s", self._unlock_file, exc.strerror or exc)

    def _door(self, name: str) -> Door | None:
        return next((d for d in self.doors if d.name == name), None)

    def set_face_unlock(self, door_name: str, on: bool, by: str) -> bool:
        """Switch face unlock at a door (frame loop only); audited first. False for an unknown door."""
        door = self._door(door_name)
        if door is None:
            log.warning("face unlock: no door named %r", door_name)
            return False
        try:
            self.audit.append_record({"event": "face_unlock", "door": door.name, "state": "on" if on else "off",
                                      "by": by})
        except AuditError as exc:
            log.error("%s; face unlock at door %s left %s", exc, door.name, "on" if door.face_unlock else "off")
            return False
        door.face_unlock = on
        self._save_unlock()
        log.info("face unlock at door %s turned %s by %s", door.name, "on" if on else "off", by)
        if self.hass is not None:
            self.hass.face_unlock(door.name, on)
        return True

    def open_now(self, door_name: str, by: str) -> bool:
        """Run a door's grant hooks without a face (frame loop only); audited first, with who asked."""
        door = self._door(door_name)
        if door is None:
            log.warning("open now: no door named %r", door_name)
            return False
        decision = Decision(Outcome.GRANT, None, 0.0, 0.0, -1, time.time(), door.source.name if door.source else "",
                            f"opened by {by}", door=door.name, extra={"by": by, "manual": True})
        try:
            record = self.audit.append(decision)
        except AuditError as exc:
            log.error("%s; open now at door %s not recorded, not opened", exc, door.name)
            return False
        log.info("door %s opened now by %s", door.name, by)
        door.actions.fire(decision, record)
        return True

    def request_face_unlock(self, on: bool, by: str) -> None:
        """Face unlock on or off at every door, from any thread or a signal handler (SimpleQueue.put is
        reentrant; an Event is not): applied by the house loop within its turn."""
        self._unlock_requests.put((on, by))

    def request_door_unlock(self, door_name: str, on: bool, by: str) -> bool:
        """Face unlock at one door, from the console's thread; False for an unknown door."""
        if self._door(door_name) is None:
            return False
        self._door_unlock_requests.put((door_name, on, by))
        return True

    def enter_code(self, door_name: str, code: str, by: str) -> bool:
        """A second-factor code entered at a door (keypad, console); judged on the door's thread. Never logged."""
        door = self._door(door_name)
        if door is None:
            return False
        # One character past the longest code a person can have: still judged (and counted) as wrong,
        # without hashing megabytes a broker let through.
        door.codes.put((code[:MAX_CODE_CHARS + 1], by))
        return True

    def _apply_commands(self) -> None:
        while True:
            try:
                on, by = self._unlock_requests.get_nowait()
            except queue.Empty:
                break
            for door in list(self.doors):
                self.set_face_unlock(door.name, on, by)
        while True:
            try:
                name, on, by = self._door_unlock_requests.get_nowait()
            except queue.Empty:
                break
            self.set_face_unlock(name, on, by)
        if self.hass is None:
            return
        for command in self.hass.commands():
            self._apply(command)

    def _apply(self, command: Command) -> None:
        if command.action == "face_unlock":
            self.set_face_unlock(command.door, command.on, BY)
        elif command.action == "open":
            self.open_now(command.door, BY)

    def _open(self, door: Door, stop: threading.Event, source: FrameSource | None = None) -> None:
        door.open(stop, self.source_uri if len(self.doors) == 1 else None, source)

    def run(self, stop: threading.Event, max_frames: int = 0, source: FrameSource | None = None,
            sources: Mapping[str, FrameSource] | None = None) -> int:
        """Serve every door until `stop` (or every door's video file ends, or `max_frames` frames in all).

        Each door's frames are analysed and decided on its own thread (`_door_loop`); this loop keeps
        house: the watchdog, status, reloads, gallery swaps, revocations and Home Assistant's commands.
        `source` replaces the camera of a one-door daemon, `sources` the cameras of the doors it names
        (tests, soak, bench).
        """
        self._stop = stop
        self._max_frames = max_frames
        given = dict(sources or {})
        if source is not None:
            given[self.doors[0].name] = source
        try:
            for door in self.doors:
                self._open(door, stop, given.get(door.name))
        except (OSError, ConfigError) as exc:
            log.error("%s%s", f"door {door.name}: " if len(self.doors) > 1 else "", exc)
            for door in self.doors:
                door.close_source()
            close_parts(self._parts())
            self.worker.close()
            self.watcher.close()
            return 1
        cameras = [d.source.name if d.source else "" for d in self.doors]
        where = (f"on {cameras[0]}" if len(self.doors) == 1 else f"{len(self.doors)} doors ("
                 + ", ".join(f"{d.name} on {c}" for d, c in zip(self.doors, cameras, strict=True)) + ")")
        log.info("running %s with %d enrolled photos of %d people", where, len(self.gallery), len(self.gallery.people))
        if self.config.metrics.port:
            try:
                self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
            except OSError as exc:
                log.error("metrics.port %d on %s: %s; running without metrics",
                          self.config.metrics.port, self.config.metrics.host, exc.strerror or exc)
        self.console = start_console(self)
        self._update_views()
        self.notifier.ready(self._status())
        for door in self.doors:
            self._start_thread(door)
        try:
            while not stop.is_set() and not self._enough.is_set():
                if all(d.finished for d in self.doors):
                    break
                # Pinged only while every door's thread is alive and turning: a door stuck in a frame
                # stops the pings, and systemd restarts the daemon.
                if self._doors_turning():
                    self.notifier.watchdog()
                self._report_status()
                if self.reload_requested.is_set():
                    self._start_reload()
                self._maybe_reload_gallery()
                if self._apply_finished() is Swap.GALLERY:
                    for door in self.doors:
                        door.reset.set()  # who is enrolled changed: nothing seen before votes
                self._apply_revocations()
                self._apply_commands()
                self._wake.wait(HOUSEKEEPING_S)
                self._wake.clear()
        finally:
            self.notifier.stopping()
            self._enough.set()  # every door's thread ends after its frame in hand
            for door in self.doors:
                door.view.closing.set()
                door.stop_thread()
            if self.console is not None:
                self.console.close()
            self._cancel.set()  # a gallery being built stops at its next photo
            self.worker.close()
            self.metrics.close()
            self.watcher.close()
            for door in self.doors:
                door.close_source()
            close_parts(self._parts(), wait=True)
        for door in self.doors:
            log.info("door %s: %d frames, %d dropped as stale, %d errors, decisions %s", door.name,
                     door.stats.frames, door.dropped, door.stats.errors, door.stats.decisions)
        log.info("stopped after %d frames (%.1f frames/s), %d errors, decisions %s",
                 self.stats.frames, self.stats.fps(), self.stats.errors, self.stats.decisions)
        return 0

    def _doors_turning(self) -> bool:
        now = time.monotonic()
        return all(d.thread is not None and d.thread.is_alive() and now - d.heartbeat < DOOR_HUNG_S
                   for d in self.doors if not d.finished and not d.stopping.is_set())

    def _start_thread(self, door: Door) -> None:
        door.heartbeat = time.monotonic()
        door.thread = threading.Thread(target=self._door_loop, args=(door,), name=f"door-{door.name}", daemon=True)
        door.thread.start()

    def _door_loop(self, door: Door) -> None:
        """One door's frames: read the newest, analyse it (the model run shared with other doors), decide, act."""
        while not (self._stop.is_set() or self._enough.is_set() or door.stopping.is_set()):
            door.heartbeat, t0 = time.monotonic(), time.perf_counter()
            self._second_factor_turn(door)
            frame = door.next_frame(timeout=0.5)
            if frame is None:
                if door.finished:
                    self._wake.set()  # the last door's file ending ends the run
                    return
                continue
            self.metrics.stage_seconds.labels("capture").observe(time.perf_counter() - t0)
            with door.busy:
                if door.stopping.is_set() or not self._count_frame(door):
                    return
                # Read once per frame: a swap by the house loop applies from the next frame on.
                pipeline, gallery = self.pipeline, self.gallery
                try:
                    analysis: FrameAnalysis | None = pipeline.analyse_at(door.name, frame.image, gallery)
                except Exception:  # fail closed: a broken frame is never a grant
                    log.exception("door %s frame %d: analysis failed; no decision for this frame",
                                  door.name, frame.index)
                    analysis = None
                self._process(door, frame, analysis)

    def _count_frame(self, door: Door) -> bool:
        """Count a frame about to be judged; False once `max_frames` frames have been (the run ends)."""
        with self._stats_lock:
            if self._max_frames and self.stats.frames >= self._max_frames:
                self._enough.set()
                self._wake.set()
                return False
            self.stats.frames += 1
        door.stats.frames += 1
        self.metrics.frames.labels(door.name).inc()
        return True

    def _paused(self) -> contextlib.ExitStack:
        """Every door between two frames, for as long as the block lasts (a model or gallery swap)."""
        stack = contextlib.ExitStack()
        for door in self.doors:
            stack.enter_context(door.busy)
        return stack

    def _process(self, door: Door, frame: Frame, analysis: FrameAnalysis | None) -> None:
        decider = door.decider
        assert decider is not None
        if analysis is None:
            with self._stats_lock:
                self.stats.errors += 1
            door.stats.errors += 1
            self.metrics.frame_errors.labels(door.name).inc()
            decider.update(frame.index, frame.ts, [])
            return
        with self._stats_lock:
            self.stats.faces += len(analysis.faces)
        door.stats.faces += len(analysis.faces)
        door.view.publish(frame.image, analysis.results)
        if self.hass is not None:
            self.hass.face(door.name, bool(analysis.faces))
        for stage, seconds in analysis.seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        t0 = time.perf_counter()
        decision = decider.update(frame.index, frame.ts, analysis.results)
        self.metrics.stage_seconds.labels("decide").observe(time.perf_counter() - t0)
        if decision is None:
            return
        # Snapshot the face the decision is about (the granted person's, else the first),
        # with its surroundings: a reviewer sees more, and it can be enrolled from.
        face = analysis.faces[0] if analysis.faces else None
        # A suspected spoof names no person; its face is the one verified as the person it resembled.
        target = decision.person
        if target is None and decision.outcome is Outcome.SPOOF_SUSPECTED:
            target = str(decision.extra.get("closest"))
        for f, r in zip(analysis.faces, analysis.results, strict=True):
            if target is not None and r.candidate == target:
                face = f
                break
        crop = context_crop(frame.image, face, scale=4.0) if face is not None else None
        decision = replace(decision, door=door.name)
        if decision.outcome is Outcome.GRANT:
            admitted = self._admit(door, decision, crop)
            if admitted is None:
                return  # waiting for a code
            decision = admitted
        self._act(door, decision, crop)

    def _admit(self, door: Door, decision: Decision, crop: Image | None) -> Decision | None:
        """A verified face through the door's policy and the person's rules: the grant, a refusal
        naming why, or None while a second factor is awaited."""
        person = decision.person
        assert person is not None
        if not door.face_unlock:
            return refused(decision, Refusal.FACE_UNLOCK_OFF, "")
        now = self.clock()
        rules = self.rules.get(person)
        verdict = judge(rules, door.policy, door.name, now)
        if verdict.refusal is not None:
            return refused(decision, verdict.refusal, verdict.detail)
        if not verdict.second_factor:
            return replace(decision, extra={**decision.extra, "factor": "face"})
        waiting = door.second.waiting_for
        if waiting is not None and waiting != person:
            # Someone else verified while a face waited for its code: that attempt ends, on the record.
            gone = door.second.give_up()
            if gone is not None:
                g, g_crop = gone.payload or (decision, None)
                self._act(door, refused(g, Refusal.SECOND_FACTOR_MISSING, f"no code before {person} came"),
                          g_crop)
        result = door.second.face(person, rules.code_hash, now.timestamp(), (decision, crop))
        made = self._second_factor(door, result, now)
        return made[0] if made is not None else None

    def _second_factor(self, door: Door, result: Result[tuple[Decision, Image | None]],
                       now: dt.datetime) -> tuple[Decision, Image | None] | None:
        """The decision a second-factor step makes, with its face's snapshot (None: still waiting)."""
        if result.step is Step.WAIT:
            if result.person is not None:
                log.info("door %s: %s verified; waiting %.0f s for their code", door.name, result.person,
                         door.second.window_s)
            self._update_views()
            return None
        if result.payload is not None:
            decision, crop = result.payload
        else:  # a code with no face waiting for it (during a lockout)
            decision = Decision(Outcome.DENY, None, 0.0, 0.0, -1, now.timestamp(),
                                door.source.name if door.source else "", "", door=door.name)
            crop = None
        attempts = door.second.attempts
        # Judged again when the code arrives: the switch or the rules may have changed since the face.
        verdict = judge(self.rules.get(result.person or ""), door.policy, door.name, now)
        if result.step is Step.GRANT and not door.face_unlock:
            made = refused(decision, Refusal.FACE_UNLOCK_OFF, "")
        elif result.step is Step.GRANT and verdict.refusal is not None:
            made = refused(decision, verdict.refusal, verdict.detail)
        elif result.step is Step.GRANT:
            made = replace(decision, reason="verified; code accepted", extra={**decision.extra, "factor": "face+code"})
        elif result.step is Step.WRONG:
            made = refused(decision, Refusal.SECOND_FACTOR_WRONG, f"wrong code ({result.wrong} of {attempts})")
        elif result.step is Step.LOCKED:
            made = refused(decision, Refusal.SECOND_FACTOR_LOCKED,
                           f"{attempts} wrong codes; codes refused for {door.second.lockout_s:.0f} s")
        elif self.rules.get(result.person or "").code_hash is None:
            made = refused(decision, Refusal.SECOND_FACTOR_MISSING, f"no code is set for {result.person}")
        else:
            made = refused(decision, Refusal.SECOND_FACTOR_MISSING, f"no code within {door.second.window_s:.0f} s")
        return made, crop

    def _second_factor_turn(self, door: Door) -> None:
        """On the door's thread, each turn: codes entered since the last, and a face whose window has passed."""
        if door.codes.empty() and door.second.waiting_for is None:
            return
        with door.busy:
            now = self.clock()
            results = []
            while True:
                try:
                    code, by = door.codes.get_nowait()
                except queue.Empty:
                    break
                log.info("door %s: a code entered (%s)", door.name, by)
                results.append(door.second.code(code, now.timestamp()))
            expired = door.second.expire(now.timestamp())
            if expired is not None:
                results.append(expired)
            for result in results:
                made = self._second_factor(door, result, now)
                if made is not None:
                    self._act(door, *made)

    def _act(self, door: Door, decision: Decision, crop: Image | None) -> None:
        snapshot = self.audit.snapshot(decision, crop)
        if snapshot:
            decision = replace(decision, snapshot=snapshot)
        try:
            record = self.audit.append(decision)
        except AuditError as exc:
            with self._stats_lock:
                self.stats.errors += 1
            door.stats.errors += 1
            self.metrics.audit_errors.inc()
            # Nothing unrecorded may open the door: without an audit record, no grant hook runs.
            log.error("%s; decision %s at door %s not recorded, actions withheld", exc, decision.outcome.value,
                      door.name)
            return
        with self._stats_lock:
            self.stats.decisions[decision.outcome.value] += 1
        door.stats.decisions[decision.outcome.value] += 1
        self.metrics.decisions.labels(door.name, decision.outcome.value, decision.person or "").inc()
        if decision.outcome is Outcome.SPOOF_SUSPECTED:
            self.metrics.spoof_suspected.labels(door.name, str(decision.extra.get("check", ""))).inc()
        if decision.extra.get("refusal"):
            self.metrics.refusals.labels(door.name, str(decision.extra["refusal"])).inc()
        log.info(
            "decision=%s person=%s score=%.3f ratio=%.2f frame=%d source=%s door=%s reason=%s",
            decision.outcome.value, decision.person or "-", decision.score, decision.ratio,
            decision.frame, decision.source, door.name, decision.reason,
        )
        door.actions.fire(decision, record)
        if self.mqtt is not None:
            self.mqtt.publish(record, door.name)
        if self.hass is not None:
            self.hass.decision(door.name, record, Path(decision.snapshot) if decision.snapshot else None)

    def _status(self) -> str:
        cameras = ", ".join(f"{d.name} {'connected' if d.connected else 'reconnecting'}" for d in self.doors)
        return (f"{self.stats.fps():.1f} frames/s, gallery {len(self.gallery)} photos of "
                f"{len(self.gallery.people)} people, camera {cameras}")

    def _report_status(self) -> None:
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self.notifier.status(self._status())
            self._update_views()
            for door in self.doors:
                self.metrics.fps.labels(door.name).set(door.stats.fps())
                self.metrics.hook_failures.labels(door.name).set(door.actions.failures)
                self.metrics.camera_reconnects.labels(door.name).set(getattr(door.source, "reconnects", 0))
            if self.mqtt is not None:
                self.metrics.mqtt_connected.set(self.mqtt.connected.is_set())
            if self.hass is not None:
                for door in self.doors:
                    self.hass.camera(door.name, door.connected)

    def _update_views(self) -> None:
        for door in self.doors:
            locked = door.decider.lockout_left() if door.decider else 0.0
            door.view.status = {
                "door": door.name, "doors": [d.name for d in self.doors],
                "camera": "up" if door.connected else "reconnecting",
                "source": door.source.name if door.source else "",
                "fps": round(door.stats.fps(), 1), "frames": door.stats.frames, "errors": door.stats.errors,
                "dropped": door.dropped, "decisions": dict(door.stats.decisions),
                "provider": self.pipeline.model.provider,
                "model": self.pipeline.model.path.name, "architecture": self.pipeline.model.contract.architecture,
                "gallery_photos": len(self.gallery), "gallery_people": len(self.gallery.people),
                "lockout_s_left": round(locked, 1), "face_unlock": door.face_unlock,
                "awaiting_code": door.second.waiting_for,
            }

    def _parts(self) -> Parts:
        return Parts(self.config, self.pipeline, self.gallery, self.audit, {d.name: d.actions for d in self.doors},
                     self.mqtt)

    def _swap_doors(self, config: Config, actions: dict[str, Actions]) -> list[tuple[Door, Door | None]]:
        """The doors of a reloaded config, with every door paused between frames.

        A door whose camera is unchanged keeps it (and its thread, view and counts), with new settings
        and actions. A door whose camera changed, or that is new, is made afresh; a removed one is told
        to stop. Returns (made, replaced) pairs for `_start_doors`, called once the doors run again.
        """
        old = {d.name: d for d in self.doors}
        self.doors, made = [], []
        for dc in config.door_list():
            door = old.pop(dc.name, None)
            if door is not None and door.config.source == dc.source:
                door.reconfigure(dc, config.liveness, actions[dc.name])
                self.doors.append(door)
                continue
            fresh = Door(dc, config.liveness, actions[dc.name])
            fresh.face_unlock = self._saved_unlock().get(dc.name, True)
            if door is not None:
                log.info("door %s: its camera changed; opening %s", dc.name, dc.source.uri)
                door.stopping.set()
                fresh.view, fresh.stats, fresh.face_unlock = door.view, door.stats, door.face_unlock
            self.doors.append(fresh)
            made.append((fresh, door))
        for gone in old.values():
            log.info("door %s removed by the reload; closing it", gone.name)
            gone.stopping.set()
            made.append((gone, gone))  # closed by _start_doors, after its thread ends
        return made

    def _start_doors(self, made: list[tuple[Door, Door | None]]) -> None:
        """Close the doors a reload replaced or removed (their threads end first), open and start the new."""
        for door, replaced in made:
            if replaced is not None:
                replaced.close(wait=False)
            if door is replaced:
                continue  # removed
            try:
                self._open(door, self._stop)
            except (OSError, ConfigError) as exc:  # its video file is missing: that door ends, others go on
                log.error("door %s: %s", door.name, exc)
                door.finished = True
                continue
            if replaced is not None and replaced.decider is not None and door.decider is not None:
                door.decider.carry_over(replaced.decider)
            self._start_thread(door)
        self._gallery_metrics()

    def _start_reload(self) -> None:
        """SIGHUP: read and check the config now, build its parts on the worker thread."""
        if self._reload_config is None or self._reloading:
            return  # one reload at a time; the flag stays set and is taken up afterwards
        self.reload_requested.clear()
        self.notifier.reloading()
        try:
            config = self._reload_config()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error("keeping the previous configuration")
            self.notifier.send("READY=1")
            return
        self._reloading = True
        self._reload_seq = self._revoke_seq
        self.worker.submit("reload", partial(rebuild, self._parts(), config, self._cancel))

    def revoke(self, paths: Iterable[Path], timeout: float = 2.0) -> bool:
        """Take photos out of use before the next frame (the console calls this after removing them).

        True once the frame loop has applied it; False if it did not within `timeout`
        (it still will, at its next turn).
        """
        r = _Revocation(frozenset(p.resolve() for p in paths), threading.Event())
        self._revocations.put(r)
        return r.applied.wait(timeout)

    def _apply_revocations(self) -> None:
        while True:
            try:
                r = self._revocations.get_nowait()
            except queue.Empty:
                return
            self._revoke_seq += 1
            self._revoked.append((self._revoke_seq, r.paths))
            self.gallery = self.gallery.without(r.paths)
            self._gallery_metrics()
            with self._paused():  # a frame judged with the photos still in has been decided by now
                for door in self.doors:
                    door.reset.set()
            r.applied.set()
            log.info("revoked %d photo(s) before the next frame", len(r.paths))

    def _still_revoked(self, gallery: Gallery, scanned_at: int) -> Gallery:
        """`gallery` less the photos removed after its scan began (numbered past `scanned_at`)."""
        self._revoked = [(n, paths) for n, paths in self._revoked if n > scanned_at]
        for _, paths in self._revoked:
            gallery = gallery.without(paths)
        return gallery

    def _maybe_reload_gallery(self) -> None:
        # Not while a reload is being built: it rescans the gallery itself, and a job here
        # would still be using the pipeline that the reload retires. The watcher keeps the
        # change flagged, so a photo added meanwhile is picked up right after the swap.
        if not self._reloading and self.watcher.changed():
            self.rules.refresh()  # small files: read here, in effect from the next frame
            pipeline, scanned_at = self.pipeline, self._revoke_seq
            self.worker.submit("gallery",
                               lambda: (pipeline, pipeline.load_gallery(cancel=self._cancel), scanned_at))

    def _apply_finished(self) -> Swap:
        """Swap in what the worker built; what changed (a config swap includes its gallery)."""
        swapped = Swap.NONE
        for done in self.worker.finished():
            if isinstance(done.error, LoadCancelled):
                continue
            if done.name == "gallery":
                if done.error is not None:
                    self.stats.errors += 1
                    log.error("gallery reload failed; keeping the previous gallery", exc_info=done.error)
                elif done.result[0] is self.pipeline:  # else built for a pipeline a reload replaced
                    self.gallery = self._still_revoked(done.result[1], done.result[2])
                    self._gallery_metrics()
                    swapped = max(swapped, Swap.GALLERY)
            elif done.name == "reload":
                self._reloading = False
                self.notifier.send("READY=1")
                if done.error is not None:
                    log.error("reload refused; keeping the previous configuration", exc_info=done.error)
                    continue
                new: Parts = done.result
                # No door is halfway through a frame while its model, gallery, audit log and hooks change.
                with self._paused():
                    retire(self._parts(), new)
                    new.pipeline.retune(new.config)
                    self.config, self.pipeline = new.config, new.pipeline
                    self.gallery = self._still_revoked(new.gallery, self._reload_seq)
                    self.audit, self.mqtt = new.audit, new.mqtt
                    made = self._swap_doors(new.config, new.actions)
                self._start_doors(made)
                self._start_hass()  # the doors may have changed: announced again, removed ones cleared
                self._listen_for_codes()
                if new.config.gallery.dir != self.watcher.root:
                    self.watcher.close()
                    self.watcher = GalleryWatcher(new.config.gallery.dir)
                    self.rules = RuleBook(new.config.gallery.dir)
                self.rules.refresh()
                self._gallery_metrics()
                log.info("reloaded configuration: %d enrolled photos of %d people",
                         len(self.gallery), len(self.gallery.people))
                swapped = Swap.CONFIG
        return swapped


def refused(decision: Decision, refusal: Refusal, detail: str) -> Decision:
    """A verified face refused by a rule: a deny that names who it was and why (not an unknown face)."""
    person = decision.person or decision.extra.get("verified")
    return replace(decision, outcome=Outcome.DENY, person=None,
                   reason=f"{refusal.text}: {detail}" if detail else refusal.text,
                   extra={**decision.extra, "closest": person, "verified": person, "refusal": refusal.value})
