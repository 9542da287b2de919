"""`verification_images/<person>/person.yaml`: a person's rules, beside their photos.

```yaml
name: Ann Example                 # display name
windows: [mon-fri 08:00-18:00]    # when (door's local time); default: any time
valid_from: 2026-12-01            # a pass: a date, or a date and time (door's local time)
valid_until: 2026-12-06T18:00     # ... valid through that day, or that minute
doors: [front]                    # default: every door
second_factor: true               # a code with every face; default: only when a door asks for one
code_hash: scrypt$...             # set with `accessd set-code` or the console, never by hand
```

A folder without the file is enrolled with the defaults (any time, forever,
every door). `RuleBook` re-reads changed files when the gallery watcher
fires: a file that cannot be read is refused with the file and key named,
and that person keeps the rules they had. `write_rules` replaces a file
atomically (temporary file, fsync, rename), so a crash leaves the old file
or the new one, never half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from accessd.codes import valid_hash
from accessd.config import DOOR_NAME, YamlLoader
from accessd.rules import ANY_TIME, PersonRules, RulesError, parse_moment, parse_week
from accessd.statefile import write_atomic

log = logging.getLogger(__name__)

RULES_FILE = "person.yaml"
KEYS = ("name", "windows", "valid_from", "valid_until", "doors", "second_factor", "code_hash")
MAX_BYTES = 64 * 1024


def parse_rules(data: object, where: str) -> PersonRules:
    """Rules from a parsed YAML mapping; RulesError naming `where` and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{where}: must be a mapping of rules (got {type(data).__name__})")
    unknown = sorted(set(map(str, data)) - set(KEYS))
    if unknown:
        raise RulesError(f"{where}: {unknown[0]}: unknown key (rules: {', '.join(KEYS)})")
    try:
        name = data.get("name", "")
        if not isinstance(name, str) or len(name) > 120:
            raise RulesError(f"name: must be text of at most 120 characters (got {name!r})")
        windows = parse_week(data["windows"], "windows") if "windows" in data else ANY_TIME
        valid_from = parse_moment(data["valid_from"], "valid_from") if data.get("valid_from") is not None else None
        until = parse_moment(data["valid_until"], "valid_until") if data.get("valid_until") is not None else None
        if valid_from is not None and until is not None and until.value < valid_from.value \
                and type(until.value) is type(valid_from.value):
            raise RulesError(f"valid_until: {until.text} is before valid_from {valid_from.text}")
        doors = data.get("doors")
        if doors is not None:
            if isinstance(doors, str) or not isinstance(doors, list) or not all(
                    isinstance(d, str) and DOOR_NAME.fullmatch(d) for d in doors):
                raise RulesError(f"doors: must be a list of door names from config.yaml (got {doors!r})")
            doors = frozenset(doors)
        second = data.get("second_factor", False)
        if not isinstance(second, bool):
            raise RulesError(f"second_factor: must be true or false (got {second!r})")
        code_hash = data.get("code_hash")
        if code_hash is not None and (not isinstance(code_hash, str) or not valid_hash(code_hash)):
            raise RulesError("code_hash: not a code hash made by accessd (set the code with `accessd set-code` "
                             "or the console)")
    except RulesError as exc:
        raise RulesError(f"{where}: {exc}") from exc
    return PersonRules(name, windows, valid_from, until, doors, second, code_hash)


def read_rules(path: Path) -> PersonRules:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise RulesError(f"{path}: larger than {MAX_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path}: not UTF-8 text") from exc
    try:
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506  # a SafeLoader (YAML 1.2 booleans, dates as text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    return parse_rules(data, str(path))


def rules_data(rules: PersonRules) -> dict[str, Any]:
    """What `write_rules` writes: the keys that differ from the defaults."""
    data: dict[str, Any] = {}
    if rules.name:
        data["name"] = rules.name
    if rules.windows != ANY_TIME:
        data["windows"] = list(rules.windows.text)
    if rules.valid_from is not None:
        data["valid_from"] = rules.valid_from.text
    if rules.valid_until is not None:
        data["valid_until"] = rules.valid_until.text
    if rules.doors is not None:
        data["doors"] = sorted(rules.doors)
    if rules.second_factor:
        data["second_factor"] = True
    if rules.code_hash is not None:
        data["code_hash"] = rules.code_hash
    return data


def write_rules(folder: Path, rules: PersonRules) -> Path:
    """Replace `folder/person.yaml` atomically; the folder must exist."""
    path = folder / RULES_FILE
    text = yaml.safe_dump(rules_data(rules), sort_keys=False, allow_unicode=True, width=200)
    write_atomic(path, text.encode())
    return path


@dataclass(frozen=True)
class _Read:
    stamp: tuple[int, int, int]  # size, mtime_ns, inode: a changed file is read again
    rules: PersonRules


class RuleBook:
    """Every person's rules, re-read when their file changes; a bad file keeps the person's last good rules.

    `refresh` runs on the daemon's house loop; door threads call `get` (a dict swapped whole, never edited).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._read: dict[str, _Read] = {}
        self._rules: Mapping[str, PersonRules] = {}
        self.problems: dict[str, str] = {}  # person: why their file was refused (kept rules meanwhile)

    def get(self, person: str) -> PersonRules:
        return self._rules.get(person, PersonRules())

    def all(self) -> Mapping[str, PersonRules]:
        return self._rules

    def refresh(self) -> list[str]:
        """Read new and changed rules files; the problems found (each naming its file and key)."""
        read: dict[str, _Read] = {}
        problems: dict[str, str] = {}
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            folders = []
        for folder in folders:
            path = folder / RULES_FILE
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # no file: the defaults
            except OSError as exc:
                st = None
                problem = f"{path}: cannot read ({exc.strerror or exc})"
            if st is not None:
                stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                before = self._read.get(folder.name)
                if before is not None and before.stamp == stamp and folder.name not in self.problems:
                    read[folder.name] = before
                    continue
                try:
                    read[folder.name] = _Read(stamp, read_rules(path))
                    continue
                except RulesError as exc:
                    problem = str(exc)
            if folder.name in self._read:
                read[folder.name] = self._read[folder.name]  # the last good rules stay
                problem += "; keeping the previous rules"
            else:
                # Never read well: nothing to keep. The file says the person is restricted somehow, and
                # which way is unknown: refused at every door until it is fixed (defaults err on deny).
                problem += "; refused at every door until it is fixed"
                read[folder.name] = _Read((0, 0, 0), PersonRules(problem=problem))
            problems[folder.name] = problem
            if self.problems.get(folder.name) != problem:
                log.error("rules refused: %s", problem)
        for person in self._read:
            if person in read or person in problems:
                continue
            if (self.root / person).is_dir():
                log.info("rules of %s removed: any time, every door", person)
        self._read, self.problems = read, problems
        self._rules = {p: r.rules for p, r in read.items()}
        return list(problems.values())
