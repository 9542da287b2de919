"""One door: its camera, its decision state, its actions and what the console sees of it.

The daemon hosts several doors around one shared pipeline and gallery. A door
never waits for another: its frames are analysed and decided on its own
thread (only the model run is shared, accessd/batcher.py), its camera keeps
only the newest frame, so a slow door drops its stale frames instead of
queueing them, and its hooks run on its own pool, so a hung hook at the
garage does not hold up the front door's.

`busy` is held while a frame is analysed and decided: the daemon's loop takes
it to know that no frame is still being judged with a gallery or model it is
replacing. `reset` asks the door's thread to forget the frames seen so far
before its next frame.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from accessd.actions import Actions
from accessd.config import DoorConfig, LivenessConfig
from accessd.decide import DecisionMaker
from accessd.doorview import DoorView
from accessd.rules import Policy, policy_from_config
from accessd.secondfactor import SecondFactor
from accessd.source import FrameSource, open_source
from accessd.types import Decision, Frame, Image, Outcome


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    errors: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    started: float = field(default_factory=time.monotonic)

    def fps(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)


class Door:
    def __init__(self, config: DoorConfig, liveness: LivenessConfig, actions: Actions) -> None:
        self.config = config
        self.name = config.name
        self.actions = actions
        self.liveness = liveness
        self.view = DoorView()
        self.stats = Stats()
        self.source: FrameSource | None = None
        self.decider: DecisionMaker | None = None
        self.finished = False  # its video file has ended (a camera never ends)
        self.face_unlock = True  # off: nobody is let in by face here (Home Assistant's switch)
        self.busy = threading.Lock()
        self.reset = threading.Event()
        self.stopping = threading.Event()  # this door alone is being closed (a reload removed it)
        self.thread: threading.Thread | None = None
        self.heartbeat = 0.0  # time.monotonic() at the start of its thread's latest turn
        self._reconnects = 0
        self._set_policy(config)
        # Codes entered at this door (keypad over MQTT or HTTP, the console's door page), for its thread.
        self.codes: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()  # (code, who sent it)

    def _set_policy(self, config: DoorConfig) -> None:
        p = config.policy
        self.policy: Policy = policy_from_config(p, f"doors.{config.name}.policy.")  # checked at load already
        self.second: SecondFactor[tuple[Decision, Image | None]] = SecondFactor(
            p.second_factor_window_s, p.code_attempts, p.code_lockout_s)

    def open(self, stop: threading.Event, uri: str | None = None, source: FrameSource | None = None) -> None:
        """Open its camera (`uri` overrides the config's; `source` is one already open)."""
        self.source = source or open_source(uri or self.config.source.uri, self.config.source, stop)
        self._reconnects = getattr(self.source, "reconnects", 0)
        self.decider = DecisionMaker(self.config.decision, self.source.name, self.liveness)

    def reconfigure(self, config: DoorConfig, liveness: LivenessConfig, actions: Actions) -> None:
        """A reload kept this door and its camera: new settings judge afresh; a lockout and cooldowns carry over.
        Called with `busy` held."""
        assert self.source is not None and self.decider is not None
        old_actions = self.actions
        self.config, self.liveness, self.actions = config, liveness, actions
        old_second = self.second
        self._set_policy(config)
        self.second.carry_over(old_second)
        fresh = DecisionMaker(config.decision, self.source.name, liveness)
        fresh.carry_over(self.decider)
        self.decider = fresh
        if old_actions is not actions:
            old_actions.close(wait=False)

    def next_frame(self, timeout: float) -> Frame | None:
        """Its newest frame, waiting up to `timeout`; None when there is none yet (or its file ended).
        On its own thread only."""
        if self.source is None or self.finished:
            return None
        frame = self.source.read(timeout=timeout)
        if frame is None:
            self.finished = self.source.finished
            return None
        reconnects = getattr(self.source, "reconnects", 0)
        if self.decider is not None and (self.reset.is_set() or reconnects != self._reconnects):
            # A new connection (the frames before the outage say nothing now), or who is enrolled changed.
            self._reconnects = reconnects
            self.reset.clear()
            self.decider.reset()
        return frame

    @property
    def connected(self) -> bool:
        return bool(getattr(self.source, "connected", self.source is not None))

    @property
    def dropped(self) -> int:
        """Frames its camera delivered that nobody took (the loop was busy): stale, never queued."""
        return int(getattr(self.source, "dropped", 0))

    def stop_thread(self) -> None:
        """Stop its thread after the frame in hand (a reload removed or replaced the door)."""
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30.0)

    def close_source(self) -> None:
        if self.source is not None:
            self.source.close()

    def close(self, wait: bool = False) -> None:
        self.stop_thread()
        self.close_source()
        self.actions.close(wait=wait)
