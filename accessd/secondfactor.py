"""A door's second factor: a face verified and a code entered, within `window_s` of each other.

Pure and per door, driven by the door's own thread with wall-clock seconds:
`face` when a verified face needs a code, `code` when one arrives (a keypad
over MQTT or HTTP, the console's door page), `expire` each turn. Either may
come first. Wrong codes count; `attempts` of them within `lockout_s` refuse
every code at this door for `lockout_s`. A code is only ever compared with
the hash of the person the face verified, so a code alone identifies nobody.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from accessd.codes import check_code

P = TypeVar("P")  # what the door keeps with a waiting face (its decision and snapshot)


class Step(enum.Enum):
    WAIT = "wait"  # a face is waiting for a code (or a code for a face)
    GRANT = "grant"
    WRONG = "wrong"
    LOCKED = "locked"  # a wrong code that reached the limit, or any code during the lockout
    MISSING = "missing"  # the window passed with no code (or no code is set for the person)


@dataclass(frozen=True)
class Result(Generic[P]):
    step: Step
    person: str | None = None
    payload: P | None = None  # the waiting face's, for GRANT, WRONG, LOCKED and MISSING
    wrong: int = 0  # wrong codes counted now (within lockout_s)


@dataclass
class _Waiting(Generic[P]):
    person: str
    code_hash: str
    deadline: float
    payload: P


class SecondFactor(Generic[P]):
    def __init__(self, window_s: float, attempts: int, lockout_s: float) -> None:
        self.window_s, self.attempts, self.lockout_s = window_s, attempts, lockout_s
        self._face: _Waiting[P] | None = None
        self._code: tuple[str, float] | None = None  # entered before the face; held in memory only, briefly
        self._wrong: deque[float] = deque()
        self._locked_until = float("-inf")

    @property
    def waiting_for(self) -> str | None:
        """The person whose face waits for a code (the console's door page asks them for it)."""
        return self._face.person if self._face is not None else None

    def locked(self, now: float) -> bool:
        return now < self._locked_until

    def face(self, person: str, code_hash: str | None, now: float, payload: P) -> Result[P]:
        """A verified face that needs a code: WAIT for one, or judge the one entered just before."""
        self.expire(now)
        if code_hash is None:
            return Result(Step.MISSING, person, payload)
        if self.locked(now):
            self._code = None
            return Result(Step.LOCKED, person, payload, len(self._wrong))
        if self._face is not None and self._face.person == person:
            return Result(Step.WAIT)  # the same face seen again: the first window stands (said once)
        self._face = _Waiting(person, code_hash, now + self.window_s, payload)
        if self._code is not None:
            code, _ = self._code
            self._code = None
            return self._judge(code, now)
        return Result(Step.WAIT, person)

    def code(self, code: str, now: float) -> Result[P]:
        """A code entered at the door."""
        self.expire(now)
        if self.locked(now):
            return Result(Step.LOCKED, self.waiting_for, None, len(self._wrong))
        if self._face is None:
            self._code = (code, now + self.window_s)  # the face may follow within the window
            return Result(Step.WAIT)
        return self._judge(code, now)

    def expire(self, now: float) -> Result[P] | None:
        """MISSING when a waiting face's window has passed; forgets a code no face came for."""
        if self._code is not None and now > self._code[1]:
            self._code = None
        if self._face is not None and now > self._face.deadline:
            waiting, self._face = self._face, None
            return Result(Step.MISSING, waiting.person, waiting.payload)
        return None

    def give_up(self) -> Result[P] | None:
        """MISSING for the face waiting now (another verified face took its place at the door), or None."""
        waiting, self._face = self._face, None
        return Result(Step.MISSING, waiting.person, waiting.payload) if waiting is not None else None

    def reset(self) -> None:
        """Forget a waiting face and code (the door's face unlock was switched, the door reloaded)."""
        self._face, self._code = None, None

    def carry_over(self, old: SecondFactor[P]) -> None:
        """Keep the wrong codes, a lockout and a waiting face across a reload: reloading must not reset the
        count, nor lose an attempt (it ends by its own deadline, as set when it began)."""
        self._wrong, self._locked_until = deque(old._wrong), old._locked_until
        self._face, self._code = old._face, old._code

    def _judge(self, code: str, now: float) -> Result[P]:
        waiting = self._face
        assert waiting is not None
        if check_code(code, waiting.code_hash):
            self._face = None
            return Result(Step.GRANT, waiting.person, waiting.payload)
        self._wrong.append(now)
        while self._wrong and self._wrong[0] < now - self.lockout_s:
            self._wrong.popleft()
        if self.attempts and len(self._wrong) >= self.attempts:
            self._locked_until = now + self.lockout_s
            self._face = None
            return Result(Step.LOCKED, waiting.person, waiting.payload, len(self._wrong))
        return Result(Step.WRONG, waiting.person, waiting.payload, len(self._wrong))
