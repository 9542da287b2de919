"""Whether a verified person may enter now: weekly windows, passes, doors, a second factor.

Pure: a person's rules, a door's policy, a door name and an aware `datetime` in,
a `Verdict` out (a named `Refusal`, or allowed with or without a second
factor). No clock is read here, so every rule is tested with fixed instants,
daylight-saving transitions included.

Times of day are wall-clock times in the door's time zone. A window is
`<days> HH:MM-HH:MM` (`mon-fri 08:00-18:00`, `tue,thu 18:00-20:00`,
`daily 00:00-24:00`); its end is exclusive and must come after its start, so
a night is two windows (`daily 22:00-24:00`, `daily 00:00-06:00`). On the
day clocks go forward a window over the missing hour is an hour shorter; on
the day they go back the repeated hour is inside it twice. Both follow from
converting the instant to local wall time, which is all this module does.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from accessd.config import PolicyConfig

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
MINUTES_PER_DAY = 24 * 60


class RulesError(ValueError):
    """A rule that cannot be read; the message names its key (and the caller adds the file)."""


@dataclass(frozen=True)
class Window:
    start: int  # minutes since local midnight, inclusive
    end: int  # exclusive; 1440 is midnight at the day's end

    def __contains__(self, minute: int) -> bool:
        return self.start <= minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True)
class Week:
    """Windows per weekday, Monday first. A week with no window at all means never."""

    days: tuple[tuple[Window, ...], ...]
    text: tuple[str, ...] = ()  # as written, for messages and the console

    def contains(self, local: dt.datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return any(minute in w for w in self.days[local.weekday()])

    def __str__(self) -> str:
        return ", ".join(self.text) if self.text else "never"


ANY_TIME = Week(tuple((Window(0, MINUTES_PER_DAY),) for _ in WEEKDAYS), ("daily 00:00-24:00",))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_time(text: str, key: str) -> int:
    m = _TIME.match(text.strip())
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (int(m.group(1)) == 24 and int(m.group(2))):
        raise RulesError(f"{key}: {text!r} is not a time of day (HH:MM, 00:00 to 24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_window(text: str, key: str) -> Window:
    """`HH:MM-HH:MM`, end after start."""
    start, sep, end = text.strip().partition("-")
    if not sep:
        raise RulesError(f"{key}: {text!r} is not a window (HH:MM-HH:MM)")
    w = Window(parse_time(start, key), parse_time(end, key))
    if w.end <= w.start:
        raise RulesError(f"{key}: {text!r} ends before it starts; a window over midnight is two windows "
                         f"(e.g. '22:00-24:00' and '00:00-06:00')")
    return w


def parse_days(text: str, key: str) -> list[int]:
    """`mon`, `mon-fri`, `fri-mon` (wraps), `tue,thu`, `daily`: weekday numbers, Monday 0."""
    days: list[int] = []
    for part in text.lower().split(","):
        part = part.strip()
        if part in ("daily", "every day", "all"):
            days.extend(range(7))
            continue
        first, sep, last = part.partition("-")
        for name in (first, last) if sep else (first,):
            if name.strip() not in WEEKDAYS:
                raise RulesError(f"{key}: unknown weekday {name.strip()!r} (use {', '.join(WEEKDAYS)}, "
                                 "a range like mon-fri, or daily)")
        a = WEEKDAYS.index(first.strip())
        b = WEEKDAYS.index(last.strip()) if sep else a
        days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
    return days


def parse_week(specs: object, key: str) -> Week:
    """A list of `<days> HH:MM-HH:MM` strings; several per day are allowed."""
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        raise RulesError(f"{key}: must be a list of windows like 'mon-fri 08:00-18:00' (got {specs!r})")
    per_day: list[list[Window]] = [[] for _ in WEEKDAYS]
    for i, spec in enumerate(specs):
        k = f"{key}[{i}]"
        if not isinstance(spec, str) or len(spec.split()) != 2:
            raise RulesError(f"{k}: must be '<days> HH:MM-HH:MM', like 'mon-fri 08:00-18:00' (got {spec!r})")
        days, window = spec.split()
        w = parse_window(window, k)
        for d in parse_days(days, k):
            per_day[d].append(w)
    return Week(tuple(tuple(sorted(ws, key=lambda w: w.start)) for ws in per_day), tuple(str(s) for s in specs))


def parse_zone(name: str, key: str) -> dt.tzinfo:
    """An IANA zone (`Europe/Berlin`); empty: this machine's zone (`/etc/localtime`, else UTC)."""
    if not name:
        return local_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise RulesError(f"{key}: no time zone named {name!r} (an IANA name like Europe/Berlin)") from exc


def local_zone() -> dt.tzinfo:
    """The machine's zone, with its daylight-saving rules (not a fixed offset)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with Path("/etc/localtime").open("rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return dt.UTC


@dataclass(frozen=True)
class Moment:
    """A pass's start or end: a date (the whole day, in the door's zone), a local time, or an instant."""

    value: dt.datetime | dt.date
    text: str

    def start(self, tz: dt.tzinfo) -> dt.datetime:
        """The first instant it covers."""
        if isinstance(self.value, dt.datetime):
            return self.value if self.value.tzinfo else self.value.replace(tzinfo=tz)
        return dt.datetime.combine(self.value, dt.time(), tz)

    def end(self, tz: dt.tzinfo) -> dt.datetime:
        """The first instant after it: a date's next midnight, a time itself (valid through that second)."""
        if isinstance(self.value, dt.datetime):
            return self.start(tz) + dt.timedelta(seconds=1)
        return dt.datetime.combine(self.value + dt.timedelta(days=1), dt.time(), tz)


def parse_moment(value: object, key: str) -> Moment:
    """`2026-12-24` (a day) or `2026-12-24T18:00` (door's local time) or with an offset (`...+01:00`)."""
    text = str(value).strip() if isinstance(value, str | dt.date) else None
    if not text:
        raise RulesError(f"{key}: must be a date (2026-12-24) or a date and time (2026-12-24T18:00) (got {value!r})")
    try:
        if len(text) == 10:
            return Moment(dt.date.fromisoformat(text), text)
        return Moment(dt.datetime.fromisoformat(text.replace(" ", "T")), text)
    except ValueError as exc:
        raise RulesError(f"{key}: {text!r} is not a date (2026-12-24) or a date and time (2026-12-24T18:00)") \
            from exc


@dataclass(frozen=True)
class Holiday:
    day: dt.date
    hours: tuple[Window, ...]  # the door's windows that day; empty: closed all day
    name: str = ""


@dataclass(frozen=True)
class Policy:
    """A door's rules for everyone (config.yaml `policy`, per door)."""

    tz: dt.tzinfo = dt.UTC
    hours: Week = ANY_TIME  # when a face may open the door at all
    holidays: tuple[Holiday, ...] = ()  # dated exceptions to `hours`
    second_factor: Week | None = None  # when every face needs a code as well; None: never by the door

    def local(self, now: dt.datetime) -> dt.datetime:
        return now.astimezone(self.tz)

    def open_now(self, local: dt.datetime) -> tuple[bool, str]:
        """Whether the door takes faces at this local time, and why not."""
        for h in self.holidays:
            if h.day == local.date():
                label = f"holiday {h.name}" if h.name else f"holiday {h.day.isoformat()}"
                minute = local.hour * 60 + local.minute
                if any(minute in w for w in h.hours):
                    return True, ""
                return False, (f"{label}: closed" if not h.hours
                               else f"{label}: open {', '.join(map(str, h.hours))} only")
        if self.hours.contains(local):
            return True, ""
        return False, f"door hours {self.hours}"


def policy_from_config(config: PolicyConfig, prefix: str = "policy.") -> Policy:
    """A door's `Policy` from its config; RulesError naming the dotted key (`prefix` + key)."""
    holidays = []
    seen: dict[dt.date, int] = {}
    for i, h in enumerate(config.holidays):
        k = f"{prefix}holidays[{i}]"
        try:
            day = dt.date.fromisoformat(str(h.date))
        except ValueError as exc:
            raise RulesError(f"{k}.date: must be a date like 2026-12-25 (got {h.date!r})") from exc
        if day in seen:
            raise RulesError(f"{k}.date: {day} is already {prefix}holidays[{seen[day]}]")
        seen[day] = i
        hours = tuple(parse_window(str(w), f"{k}.hours[{j}]") for j, w in enumerate(h.hours))
        holidays.append(Holiday(day, hours, h.name))
    return Policy(
        tz=parse_zone(config.timezone, f"{prefix}timezone"),
        hours=parse_week(config.hours, f"{prefix}hours"),
        holidays=tuple(holidays),
        second_factor=(parse_week(config.second_factor_hours, f"{prefix}second_factor_hours")
                       if config.second_factor_hours else None),
    )


@dataclass(frozen=True)
class PersonRules:
    """`verification_images/<person>/person.yaml`; the defaults are a folder without one: any time, forever."""

    name: str = ""  # display name
    windows: Week = ANY_TIME
    valid_from: Moment | None = None
    valid_until: Moment | None = None
    doors: frozenset[str] | None = None  # None: every door
    second_factor: bool = False  # a code with every face, at every hour
    code_hash: str | None = None  # accessd/codes.py; the code itself is never stored
    # Set when the person's file has never been read well: they are refused until it is fixed (their
    # rules restrict them somehow, and which way is unknown; defaults err on deny).
    problem: str = ""


class Refusal(enum.Enum):
    """Why a verified person was not let in; the value goes into records, hooks and MQTT."""

    RULES_UNREADABLE = "rules_unreadable"
    WRONG_DOOR = "not_allowed_at_door"
    NOT_YET_VALID = "pass_not_yet_valid"
    EXPIRED = "pass_expired"
    DOOR_CLOSED = "door_closed"
    OUTSIDE_SCHEDULE = "outside_schedule"
    FACE_UNLOCK_OFF = "face_unlock_off"
    SECOND_FACTOR_MISSING = "second_factor_missing"
    SECOND_FACTOR_WRONG = "second_factor_wrong"
    SECOND_FACTOR_LOCKED = "second_factor_locked_out"
    NOT_THIS_PERSON = "not_this_person"

    @property
    def text(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class Verdict:
    refusal: Refusal | None = None
    detail: str = ""  # for people: which window, which date
    second_factor: bool = False  # allowed once a code is entered too

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def judge(rules: PersonRules, policy: Policy, door: str, now: dt.datetime) -> Verdict:
    """May the person with `rules` enter at `door` at the aware instant `now`?"""
    if now.tzinfo is None:
        raise ValueError("judge() needs an aware datetime")
    local = policy.local(now)
    stamp = local.strftime("%a %Y-%m-%d %H:%M %Z").lower()
    if rules.problem:
        return Verdict(Refusal.RULES_UNREADABLE, rules.problem)
    if rules.doors is not None and door not in rules.doors:
        return Verdict(Refusal.WRONG_DOOR, f"allowed at {', '.join(sorted(rules.doors)) or 'no door'}")
    if rules.valid_from is not None and now < rules.valid_from.start(policy.tz):
        return Verdict(Refusal.NOT_YET_VALID, f"valid from {rules.valid_from.text}; now {stamp}")
    if rules.valid_until is not None and now >= rules.valid_until.end(policy.tz):
        return Verdict(Refusal.EXPIRED, f"valid until {rules.valid_until.text}; now {stamp}")
    is_open, why = policy.open_now(local)
    if not is_open:
        return Verdict(Refusal.DOOR_CLOSED, f"{why}; now {stamp}")
    if not rules.windows.contains(local):
        return Verdict(Refusal.OUTSIDE_SCHEDULE, f"allowed {rules.windows}; now {stamp}")
    needs = rules.second_factor or (policy.second_factor is not None and policy.second_factor.contains(local))
    return Verdict(None, "", needs)
