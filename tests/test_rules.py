"""Access rules: windows, passes, doors, holidays, daylight saving; codes; the second factor. Fixed instants only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from accessd.codes import CodeError, check_code, hash_code
from accessd.config import ConfigError, HolidayConfig, PolicyConfig, parse_config
from accessd.personfile import RuleBook, parse_rules, read_rules, write_rules
from accessd.rules import (
    PersonRules,
    Policy,
    Refusal,
    RulesError,
    judge,
    parse_moment,
    parse_week,
    policy_from_config,
)
from accessd.secondfactor import SecondFactor, Step

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: dt.tzinfo = BERLIN) -> dt.datetime:
    """An aware instant from local wall time."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz)


def policy(**keys: object) -> Policy:
    return policy_from_config(PolicyConfig(**{"timezone": "Europe/Berlin", **keys}))  # type: ignore[arg-type]


CLEANER = PersonRules(windows=parse_week(["tue 18:00-20:00"], "windows"))


def test_a_weekly_window_admits_inside_only() -> None:
    p = policy()
    assert judge(CLEANER, p, "front", at("2026-12-01T18:00")).allowed  # a Tuesday
    assert judge(CLEANER, p, "front", at("2026-12-01T19:59")).allowed
    late = judge(CLEANER, p, "front", at("2026-12-01T20:00"))
    assert late.refusal is Refusal.OUTSIDE_SCHEDULE and "tue 18:00-20:00" in late.detail
    assert judge(CLEANER, p, "front", at("2026-12-02T18:30")).refusal is Refusal.OUTSIDE_SCHEDULE  # Wednesday


def test_several_windows_a_day_and_day_ranges_that_wrap() -> None:
    week = parse_week(["mon-fri 07:00-09:00", "mon-fri 17:00-19:00", "fri-mon 12:00-13:00"], "windows")
    r = PersonRules(windows=week)
    p = policy()
    assert judge(r, p, "d", at("2026-11-30T08:00")).allowed  # Monday morning
    assert not judge(r, p, "d", at("2026-11-30T10:00")).allowed
    assert judge(r, p, "d", at("2026-11-30T18:00")).allowed
    assert judge(r, p, "d", at("2026-12-06T12:30")).allowed  # Sunday, inside fri-mon
    assert not judge(r, p, "d", at("2026-12-02T12:30")).allowed  # Wednesday is not


def test_a_visitor_pass_until_a_minute_and_until_a_day() -> None:
    p = policy()
    minute = PersonRules(valid_from=parse_moment("2026-12-01T09:00", "valid_from"),
                         valid_until=parse_moment("2026-12-03T17:00", "valid_until"))
    assert judge(minute, p, "d", at("2026-12-01T08:59:59")).refusal is Refusal.NOT_YET_VALID
    assert judge(minute, p, "d", at("2026-12-01T09:00")).allowed
    assert judge(minute, p, "d", at("2026-12-03T17:00:00")).allowed  # the pass's last second
    assert judge(minute, p, "d", at("2026-12-03T17:00:01")).refusal is Refusal.EXPIRED  # one second after
    day = PersonRules(valid_until=parse_moment("2026-12-06", "valid_until"))  # through Sunday
    assert judge(day, p, "d", at("2026-12-06T23:59:59")).allowed
    assert judge(day, p, "d", at("2026-12-07T00:00")).refusal is Refusal.EXPIRED
    # An instant with an offset means that instant, whatever the door's zone.
    utc = PersonRules(valid_until=parse_moment("2026-12-03T16:00+00:00", "valid_until"))
    assert judge(utc, p, "d", at("2026-12-03T17:00")).allowed and not judge(utc, p, "d", at("2026-12-03T17:01")).allowed


def test_doors_a_person_may_use() -> None:
    r = PersonRules(doors=frozenset({"front"}))
    assert judge(r, policy(), "front", at("2026-12-01T12:00")).allowed
    garage = judge(r, policy(), "garage", at("2026-12-01T12:00"))
    assert garage.refusal is Refusal.WRONG_DOOR and "front" in garage.detail


def test_holidays_close_the_door_or_change_its_hours() -> None:
    p = policy(hours=("mon-fri 07:00-19:00",), holidays=(
        HolidayConfig("2026-12-24", ("09:00-12:00",), "christmas eve"), HolidayConfig("2026-12-25", (), "christmas")))
    anyone = PersonRules()
    assert judge(anyone, p, "d", at("2026-12-23T18:00")).allowed
    closed = judge(anyone, p, "d", at("2026-12-25T10:00"))
    assert closed.refusal is Refusal.DOOR_CLOSED and "christmas: closed" in closed.detail
    assert judge(anyone, p, "d", at("2026-12-24T10:00")).allowed
    assert judge(anyone, p, "d", at("2026-12-24T13:00")).refusal is Refusal.DOOR_CLOSED
    assert judge(anyone, p, "d", at("2026-12-26T10:00")).refusal is Refusal.DOOR_CLOSED  # a Saturday


def test_second_factor_at_night_or_for_a_person_always() -> None:
    p = policy(second_factor_hours=("daily 22:00-24:00", "daily 00:00-06:00"))
    anyone = PersonRules()
    assert not judge(anyone, p, "d", at("2026-12-01T21:59")).second_factor
    assert judge(anyone, p, "d", at("2026-12-01T22:00")).second_factor
    assert judge(anyone, p, "d", at("2026-12-02T05:59")).second_factor
    assert not judge(anyone, p, "d", at("2026-12-02T06:00")).second_factor
    assert judge(PersonRules(second_factor=True), p, "d", at("2026-12-01T12:00")).second_factor


def test_daylight_saving_spring_forward() -> None:
    """Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST. The window is wall-clock time."""
    r = PersonRules(windows=parse_week(["sun 01:00-02:30", "sun 03:00-04:00"], "windows"))
    p = policy()
    before = dt.datetime(2026, 3, 29, 0, 59, tzinfo=dt.UTC)  # 01:59 CET
    assert before.astimezone(BERLIN).hour == 1 and judge(r, p, "d", before).allowed
    jumped = before + dt.timedelta(minutes=1)  # 03:00 CEST: an hour of wall time never happened
    assert jumped.astimezone(BERLIN).hour == 3 and judge(r, p, "d", jumped).allowed  # the second window
    after = dt.datetime(2026, 3, 29, 2, 0, tzinfo=dt.UTC)  # 04:00 CEST
    assert judge(r, p, "d", after).refusal is Refusal.OUTSIDE_SCHEDULE
    # A pass ending at local 12:00 ends at 10:00 UTC in summer time (not 11:00).
    pass_ = PersonRules(valid_until=parse_moment("2026-03-29T12:00", "valid_until"))
    assert judge(pass_, p, "d", dt.datetime(2026, 3, 29, 10, 0, tzinfo=dt.UTC)).allowed
    assert not judge(pass_, p, "d", dt.datetime(2026, 3, 29, 10, 0, 1, tzinfo=dt.UTC)).allowed


def test_daylight_saving_fall_back() -> None:
    """Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-03:00 happens twice, inside the window both times."""
    r = PersonRules(windows=parse_week(["sun 02:00-03:00"], "windows"))
    p = policy()
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)  # 02:30 CET, an hour later
    assert first.astimezone(BERLIN).hour == second.astimezone(BERLIN).hour == 2
    assert judge(r, p, "d", first).allowed and judge(r, p, "d", second).allowed
    assert not judge(r, p, "d", dt.datetime(2026, 10, 25, 2, 0, tzinfo=dt.UTC)).allowed  # 03:00 CET
    # The day lasts 25 hours: a pass through that day ends at the next local midnight, 23:00 UTC.
    day = PersonRules(valid_until=parse_moment("2026-10-25", "valid_until"))
    assert judge(day, p, "d", dt.datetime(2026, 10, 25, 22, 59, tzinfo=dt.UTC)).allowed
    assert not judge(day, p, "d", dt.datetime(2026, 10, 25, 23, 0, tzinfo=dt.UTC)).allowed


@pytest.mark.parametrize(("specs", "message"), [
    (["tues 18:00-20:00"], "windows[0]: unknown weekday 'tues'"),
    (["mon 20:00-18:00"], "windows[0]: '20:00-18:00' ends before it starts"),
    (["mon 18:00-18:00"], "ends before it starts"),
    (["mon 25:00-26:00"], "windows[0]: '25:00' is not a time of day"),
    (["mon 18:00"], "windows[0]: '18:00' is not a window"),
    (["monday"], "windows[0]: must be '<days> HH:MM-HH:MM'"),
    ("mon 08:00-09:00", "windows: must be a list"),
])
def test_bad_windows_name_the_key(specs: object, message: str) -> None:
    with pytest.raises(RulesError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_week(specs, "windows")


def test_bad_policies_name_the_key(tmp_path: Path) -> None:
    bad = {
        "policy": {"timezone": "Europe/Atlantis", "hours": ["mon 10:00-09:00"]},
        "doors": [{"name": "front", "source": {"uri": "0"},
                   "policy": {"holidays": [{"date": "2026-02-30"}]}},
                  {"name": "back", "source": {"uri": "1"}, "policy": {"second_factor_hours": ["xyz 10:00-11:00"],
                                                                      "code_attempts": 0}}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(bad, tmp_path)
    text = "\n".join(err.value.problems)
    assert "policy.timezone: no time zone named 'Europe/Atlantis'" in text
    assert "doors[0].policy.holidays[0].date: must be a date like 2026-12-25 (got '2026-02-30')" in text
    assert "doors[1].policy.second_factor_hours[0]: unknown weekday 'xyz'" in text
    assert "doors[1].policy.code_attempts: must be between 1 and 20 (got 0)" in text


def test_a_door_policy_lies_over_the_top_level_one(tmp_path: Path) -> None:
    c = parse_config({"policy": {"timezone": "Europe/Berlin", "code_attempts": 4},
                      "doors": [{"name": "front", "source": {"uri": "0"}, "policy": {"code_attempts": 2}},
                                {"name": "back", "source": {"uri": "1"}}]}, tmp_path)
    front, back = c.door_list()
    assert (front.policy.timezone, front.policy.code_attempts) == ("Europe/Berlin", 2)
    assert (back.policy.timezone, back.policy.code_attempts) == ("Europe/Berlin", 4)
    assert parse_config({}, tmp_path).door_list()[0].policy == PolicyConfig()


def test_codes_are_salted_slow_hashes_never_the_code() -> None:
    h1, h2 = hash_code("4711"), hash_code("4711")
    assert h1 != h2 and "4711" not in h1 and h1.startswith("scrypt$16384$8$1$")
    assert check_code("4711", h1) and check_code("4711", h2)
    assert not check_code("4712", h1) and not check_code("4711", "scrypt$1$2$3$xx$yy") and not check_code("4711", "")
    for bad in ("123", "12345 ", "x" * 65, "12\n34"):
        with pytest.raises(CodeError):
            hash_code(bad)


def test_person_files_read_write_and_refuse_naming_file_and_key(tmp_path: Path) -> None:
    folder = tmp_path / "ann"
    folder.mkdir()
    rules = parse_rules({"name": "Ann Example", "windows": ["tue 18:00-20:00"], "valid_until": "2026-12-06",
                         "doors": ["front"], "second_factor": True, "code_hash": hash_code("2468")}, "x")
    path = write_rules(folder, rules)
    assert read_rules(path) == rules
    assert list(folder.iterdir()) == [path]  # no temporary file left behind
    for text, message in [
        ("windows: [tues 18:00-20:00]\n", "person.yaml: windows[0]: unknown weekday 'tues'"),
        ("valid_until: 2026-13-40\n", "person.yaml: valid_until: '2026-13-40' is not a date"),
        ("valid_from: 2026-12-06\nvalid_until: 2026-12-01\n", "valid_until: 2026-12-01 is before valid_from"),
        ("doors: front\n", "person.yaml: doors: must be a list"),
        ("second_factor: yes\n", "person.yaml: second_factor: must be true or false"),
        ("code_hash: '1234'\n", "person.yaml: code_hash: not a code hash"),
        ("colour: blue\n", "person.yaml: colour: unknown key"),
        ("windows: [\n", "person.yaml: not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("(", r"\(")):
            read_rules(path)


def test_a_bad_rules_file_keeps_the_previous_rules(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "bob").mkdir()
    (tmp_path / "cy").mkdir()
    (tmp_path / "ann" / "person.yaml").write_text("windows: [tue 18:00-20:00]\n")
    book = RuleBook(tmp_path)
    assert book.refresh() == []
    assert book.get("ann").windows.text == ("tue 18:00-20:00",) and book.get("bob") == PersonRules()
    (tmp_path / "ann" / "person.yaml").write_text("windows: [tue 20:00-18:00]\n")  # a mistake
    (tmp_path / "cy" / "person.yaml").write_text("valid_until: soon\n")  # never good
    problems = book.refresh()
    assert any("ann/person.yaml: windows[0]" in p and "keeping the previous rules" in p for p in problems)
    assert any("cy/person.yaml: valid_until" in p and "refused at every door" in p for p in problems)
    assert book.get("ann").windows.text == ("tue 18:00-20:00",)  # kept
    refused = judge(book.get("cy"), Policy(), "front", at("2026-12-01T12:00"))  # deny until fixed
    assert refused.refusal is Refusal.RULES_UNREADABLE and "cy/person.yaml: valid_until" in refused.detail
    (tmp_path / "ann" / "person.yaml").write_text("windows: [wed 18:00-20:00]\n")
    (tmp_path / "cy" / "person.yaml").unlink()
    assert book.refresh() == []
    assert book.get("ann").windows.text == ("wed 18:00-20:00",) and book.get("cy") == PersonRules()


CODE_ANN = "2468"


def test_second_factor_code_after_face_before_face_wrong_and_locked() -> None:
    h = hash_code(CODE_ANN)
    sf: SecondFactor[str] = SecondFactor(window_s=30, attempts=3, lockout_s=300)
    assert sf.face("ann", h, 100.0, "face1").step is Step.WAIT and sf.waiting_for == "ann"
    wrong = sf.code("1357", 110.0)
    assert (wrong.step, wrong.wrong, wrong.payload) == (Step.WRONG, 1, "face1") and sf.waiting_for == "ann"
    ok = sf.code("2468", 120.0)
    assert (ok.step, ok.person, ok.payload) == (Step.GRANT, "ann", "face1") and sf.waiting_for is None
    # A code first, then the face within the window.
    assert sf.code("2468", 200.0).step is Step.WAIT
    assert sf.face("ann", h, 225.0, "face2").step is Step.GRANT
    # ... but not after it.
    sf.code("2468", 300.0)
    assert sf.face("ann", h, 331.0, "face3").step is Step.WAIT
    missing = sf.expire(361.5)
    assert missing is not None and (missing.step, missing.person) == (Step.MISSING, "ann")
    # No code set for the person: missing at once, never waiting.
    assert sf.face("bob", None, 400.0, "face4").step is Step.MISSING
    # Wrong codes lock out after `attempts` (the one at 110 s has aged out of the 300 s window by now).
    sf.face("ann", h, 500.0, "face5")
    assert sf.code("0000", 501.0).step is Step.WRONG
    assert sf.code("1111", 502.0).step is Step.WRONG
    locked = sf.code("2222", 503.0)
    assert (locked.step, locked.wrong) == (Step.LOCKED, 3)
    assert sf.code("2468", 504.0).step is Step.LOCKED  # even the right code, during the lockout
    assert sf.face("ann", h, 600.0, "face6").step is Step.LOCKED
    assert sf.face("ann", h, 804.0, "face7").step is Step.WAIT  # lockout over
    gave_up = sf.give_up()
    assert gave_up is not None and (gave_up.step, gave_up.person, gave_up.payload) == (Step.MISSING, "ann", "face7")
    assert sf.give_up() is None and sf.waiting_for is None
    fresh: SecondFactor[str] = SecondFactor(30, 3, 300)
    fresh.carry_over(sf)
    assert fresh.code("9999", 805.0).step is Step.WAIT  # a code first, carried; then the face
    carried: SecondFactor[str] = SecondFactor(30, 3, 300)
    sf.face("ann", h, 900.0, "face8")
    carried.carry_over(sf)
    assert carried.waiting_for == "ann" and carried.code(CODE_ANN, 901.0).step is Step.GRANT
