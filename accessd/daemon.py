"""The live loop: source -> detector -> verifier -> decision -> actions.

Failure policy (fail closed): anything that goes wrong on a frame (decode,
detector, model, gallery) yields no grant. It is logged, counted in
`errors`, and the loop goes on with its last good model and gallery.
"""

from __future__ import annotations

import enum
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from accessd.actions import Actions
from accessd.align import context_crop
from accessd.audit import AuditError, AuditLog
from accessd.background import Worker
from accessd.config import Config, ConfigError
from accessd.decide import DecisionMaker
from accessd.doorview import DoorView
from accessd.gallery import Gallery, LoadCancelled
from accessd.metrics import Metrics
from accessd.mqtt import MqttPublisher, open_mqtt
from accessd.notify import Notifier
from accessd.pipeline import Pipeline
from accessd.reload import Parts, rebuild, retire
from accessd.reload import close as close_parts
from accessd.source import FrameSource, open_source
from accessd.types import Decision, Frame, Image, Outcome
from accessd.watch import GalleryWatcher
from accessd.webconsole import start_console

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0


class Swap(enum.IntEnum):
    """What a finished background job replaced, in rising order of what the decider must forget."""

    NONE = 0
    GALLERY = 1
    CONFIG = 2


@dataclass(frozen=True)
class _Revocation:
    paths: frozenset[Path]  # resolved
    applied: threading.Event


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    errors: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    started: float = field(default_factory=time.monotonic)

    def fps(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)


def install_signal_handlers(stop: threading.Event, reload: threading.Event | None = None) -> None:
    """SIGTERM/SIGINT set the one stop event; SIGHUP asks the loop to reload config and gallery."""

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

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if reload is not None:
        signal.signal(signal.SIGHUP, handle_hup)


class Daemon:
    def __init__(
        self,
        config: Config,
        source_uri: str | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        reload_requested: threading.Event | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.source_uri = source_uri or config.source.uri
        self.reload_requested = reload_requested or threading.Event()
        self._reload_config = reload_config
        self.notifier = notifier or Notifier({})
        self._next_status = 0.0
        self.pipeline = Pipeline(config)
        # A cold start embeds every photo (seconds per hundred on a CPU): SIGTERM meanwhile
        # stops it at the next photo (LoadCancelled) instead of waiting for the end.
        self.gallery: Gallery = self.pipeline.load_gallery(cancel=stop)
        self.watcher = GalleryWatcher(config.gallery.dir)
        # Gallery rebuilds and reloads run here, beside the frame loop (see background.py).
        self.worker = Worker()
        self._cancel = threading.Event()
        self._reloading = False
        self.audit = AuditLog.from_config(config.audit)
        self.actions = Actions(config.actions)
        self.mqtt: MqttPublisher | None = open_mqtt(config.mqtt)
        self.stats = Stats()
        self.metrics = Metrics()
        self.metrics.provider.info({"provider": self.pipeline.model.provider})
        self.view = DoorView()  # what the console reads; the loop only swaps references in it
        self.console: Any = None
        self._decider: DecisionMaker | None = None
        # Photos the console removed, applied by the frame loop before its next frame. A
        # gallery scanned before a removal may still hold them, so each removal is kept
        # (numbered) until a gallery scanned after it is swapped in.
        self._revocations: queue.SimpleQueue[_Revocation] = queue.SimpleQueue()
        self._revoked: list[tuple[int, frozenset[Path]]] = []
        self._revoke_seq = 0
        self._reload_seq = 0
        self._gallery_metrics()

    def _gallery_metrics(self) -> None:
        self.metrics.gallery_photos.set(len(self.gallery))
        self.metrics.gallery_people.set(len(self.gallery.people))
        self.view.gallery = self.gallery

    def run(self, stop: threading.Event, max_frames: int = 0, source: FrameSource | None = None) -> int:
        if source is None:
            try:
                source = open_source(self.source_uri, self.config.source, stop)
            except (OSError, ConfigError) as exc:
                log.error("%s", exc)
                return 1
        decider = DecisionMaker(self.config.decision, source.name, self.config.liveness)
        log.info("running on %s with %d enrolled photos of %d people",
                 source.name, len(self.gallery), len(self.gallery.people))
        if self.config.metrics.port:
            try:
                self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
            except OSError as exc:
                log.error("metrics.port %d on %s: %s; running without metrics",
                          self.config.metrics.port, self.config.metrics.host, exc.strerror or exc)
        self.console = start_console(self)
        self._decider = decider
        self._update_view(source)
        self.notifier.ready(self._status(source))
        reconnects = getattr(source, "reconnects", 0)
        try:
            while not stop.is_set():
                if max_frames and self.stats.frames >= max_frames:
                    break
                # Pinged from the frame loop only: a hung loop stops the pings.
                self.notifier.watchdog()
                self._report_status(source)
                if self.reload_requested.is_set():
                    self._start_reload()
                self._maybe_reload_gallery()
                swapped = self._apply_finished()
                if swapped is Swap.CONFIG:
                    # The new thresholds judge afresh; a lockout and cooldowns carry over.
                    fresh = DecisionMaker(self.config.decision, source.name, self.config.liveness)
                    fresh.carry_over(decider)
                    decider = self._decider = fresh
                elif swapped is Swap.GALLERY:
                    decider.reset()  # who is enrolled changed: nothing seen before votes
                self._apply_revocations(decider)
                t0 = time.perf_counter()
                frame = source.read(timeout=0.5)
                if frame is None:
                    if source.finished:
                        break
                    continue
                if getattr(source, "reconnects", 0) != reconnects:
                    reconnects = getattr(source, "reconnects", 0)
                    decider.reset()  # a new connection: the frames before the outage say nothing now
                self.metrics.stage_seconds.labels("capture").observe(time.perf_counter() - t0)
                self._process(frame, decider, source)
        finally:
            self.notifier.stopping()
            self.view.closing.set()
            if self.console is not None:
                self.console.close()
            self._cancel.set()  # a gallery being built stops at its next photo
            self.worker.close()
            self.metrics.close()
            self.watcher.close()
            source.close()
            close_parts(self._parts(), wait=True)
        log.info("stopped after %d frames (%.1f frames/s), %d errors, decisions %s",
                 self.stats.frames, self.stats.fps(), self.stats.errors, self.stats.decisions)
        return 0

    def _process(self, frame: Frame, decider: DecisionMaker, source: FrameSource) -> None:
        self.stats.frames += 1
        self.metrics.frames.inc()
        try:
            analysis = self.pipeline.analyse(frame.image, self.gallery)
        except Exception:  # fail closed: a broken frame is never a grant
            self.stats.errors += 1
            self.metrics.frame_errors.inc()
            log.exception("frame %d: analysis failed; no decision for this frame", frame.index)
            decider.update(frame.index, frame.ts, [])
            return
        self.stats.faces += len(analysis.faces)
        self.view.publish(frame.image, analysis.results)
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
        self._act(decision, context_crop(frame.image, face, scale=4.0) if face is not None else None)

    def _act(self, decision: Decision, crop: Image | None) -> None:
        snapshot = self.audit.snapshot(decision, crop)
        if snapshot:
            decision = Decision(**{**decision.__dict__, "snapshot": snapshot})
        try:
            record = self.audit.append(decision)
        except AuditError as exc:
            self.stats.errors += 1
            self.metrics.audit_errors.inc()
            # Nothing unrecorded may open the door: without an audit record, no grant hook runs.
            log.error("%s; decision %s not recorded, actions withheld", exc, decision.outcome.value)
            return
        self.stats.decisions[decision.outcome.value] += 1
        self.metrics.decisions.labels(decision.outcome.value, decision.person or "").inc()
        if decision.outcome is Outcome.SPOOF_SUSPECTED:
            self.metrics.spoof_suspected.labels(str(decision.extra.get("check", ""))).inc()
        log.info(
            "decision=%s person=%s score=%.3f ratio=%.2f frame=%d source=%s reason=%s",
            decision.outcome.value, decision.person or "-", decision.score, decision.ratio,
            decision.frame, decision.source, decision.reason,
        )
        self.actions.fire(decision, record)
        if self.mqtt is not None:
            self.mqtt.publish(record)

    def _status(self, source: FrameSource) -> str:
        camera = "connected" if getattr(source, "connected", True) else "reconnecting"
        return (f"{self.stats.fps():.1f} frames/s, gallery {len(self.gallery)} photos of "
                f"{len(self.gallery.people)} people, camera {camera}")

    def _report_status(self, source: FrameSource) -> None:
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self.notifier.status(self._status(source))
            self._update_view(source)
            self.metrics.fps.set(self.stats.fps())
            self.metrics.hook_failures.set(self.actions.failures)
            self.metrics.camera_reconnects.set(getattr(source, "reconnects", 0))
            if self.mqtt is not None:
                self.metrics.mqtt_connected.set(self.mqtt.connected.is_set())

    def _update_view(self, source: FrameSource) -> None:
        locked = self._decider.lockout_left() if self._decider else 0.0
        self.view.status = {
            "camera": "up" if getattr(source, "connected", True) else "reconnecting", "source": source.name,
            "fps": round(self.stats.fps(), 1), "frames": self.stats.frames, "errors": self.stats.errors,
            "decisions": dict(self.stats.decisions), "provider": self.pipeline.model.provider,
            "model": self.pipeline.model.path.name, "architecture": self.pipeline.model.contract.architecture,
            "gallery_photos": len(self.gallery), "gallery_people": len(self.gallery.people),
            "lockout_s_left": round(locked, 1),
        }

    def _parts(self) -> Parts:
        return Parts(self.config, self.pipeline, self.gallery, self.audit, self.actions, self.mqtt)

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

    def _apply_revocations(self, decider: DecisionMaker) -> None:
        while True:
            try:
                r = self._revocations.get_nowait()
            except queue.Empty:
                return
            self._revoke_seq += 1
            self._revoked.append((self._revoke_seq, r.paths))
            self.gallery = self.gallery.without(r.paths)
            self._gallery_metrics()
            decider.reset()
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
                retire(self._parts(), new)
                self.config, self.pipeline = new.config, new.pipeline
                self.gallery = self._still_revoked(new.gallery, self._reload_seq)
                self.audit, self.actions, self.mqtt = new.audit, new.actions, new.mqtt
                if new.config.gallery.dir != self.watcher.root:
                    self.watcher.close()
                    self.watcher = GalleryWatcher(new.config.gallery.dir)
                self._gallery_metrics()
                log.info("reloaded configuration: %d enrolled photos of %d people",
                         len(self.gallery), len(self.gallery.people))
                swapped = Swap.CONFIG
        return swapped
