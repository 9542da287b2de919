"""The console's authentication and headers, on a real waitress server on 127.0.0.1.

No daemon here: the app is served over a real gallery folder and audit log, so
limits, proxies and headers can be tested from a clean slate each time (the
daemon-backed console in test_console.py shares one client address across
all its tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from accessd.audit import AuditLog
from accessd.config import WebConfig
from accessd.console import LOGIN_FAILURES, Backend, create_app
from accessd.doorview import DoorView
from accessd.enrolment import Enrolment
from accessd.webserver import WebServer
from tests.test_daemon import PERSON, photos

PASSWORD = "correct horse battery staple"
TOKEN = "4f1c2a9d7e3b5c8a0f6e2d4b9a7c1e3f5d8b0a2c4e6f8a1b3d5c7e9f0a2b4c6d"
PROXY_SITE = "https://door.example"


class Console:
    def __init__(self, tmp: Path, web: WebConfig, token: str | None = TOKEN) -> None:
        self.audit_path = tmp / "audit.jsonl"
        self.gallery = tmp / "gallery"
        audit = AuditLog(self.audit_path)
        self.views = {"front": DoorView(status={"door": "front", "camera": "up", "source": "0"}),
                      "garage": DoorView(status={"door": "garage", "camera": "reconnecting", "source": "/dev/video2"})}
        backend = Backend(
            views=lambda: self.views, enrolment=Enrolment(lambda: self.gallery, lambda: audit),
            audit_path=self.audit_path, snapshots_dir=None,
            verify=lambda _a, _b: {}, check=lambda: [], settings=lambda: {},
        )
        self.server = WebServer(create_app(backend, PASSWORD, web, token), "127.0.0.1", 0,
                                trusted_proxy=web.trusted_proxy)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()] if self.audit_path.exists() else []


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Callable[..., Console]]:
    made: list[Console] = []

    def make(**web: Any) -> Console:
        c = Console(tmp_path / str(len(made)), replace(WebConfig(), **web))
        made.append(c)
        return c

    yield make
    for c in made:
        c.server.close()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_wrong_bearer_tokens_count_and_lock_the_client_out(console: Callable[..., Console]) -> None:
    """The review's finding: 200 wrong bearer guesses got 200 x 401 and never a 429."""
    c = console()
    codes = [requests.get(c.url + "/api/status", headers=bearer(f"guess{i}"), timeout=10).status_code
             for i in range(LOGIN_FAILURES + 2)]
    assert codes == [401] * LOGIN_FAILURES + [429, 429]
    # Locked out means locked out: the right token and the right password wait too.
    assert requests.get(c.url + "/api/status", headers=bearer(TOKEN), timeout=10).status_code == 429
    assert requests.post(c.url + "/login", data={"password": PASSWORD}, timeout=10).status_code == 429


def test_wrong_passwords_and_wrong_tokens_share_one_limit(console: Callable[..., Console]) -> None:
    c = console()
    for i in range(LOGIN_FAILURES - 1):
        assert requests.post(c.url + "/login", data={"password": f"guess{i}"}, timeout=10).status_code == 401
    assert requests.get(c.url + "/api/status", headers=bearer("guess"), timeout=10).status_code == 401
    assert requests.get(c.url + "/api/status", headers=bearer(TOKEN), timeout=10).status_code == 429


def test_the_password_is_not_a_bearer_token(console: Callable[..., Console]) -> None:
    c = console()
    assert requests.get(c.url + "/api/status", headers=bearer(PASSWORD), timeout=10).status_code == 401
    assert requests.get(c.url + "/api/status", headers=bearer(TOKEN), timeout=10).status_code == 200
    without = Console(c.audit_path.parent / "no-token", WebConfig(), token=None)
    try:
        # No API token configured: the API takes the login cookie only.
        assert requests.get(without.url + "/api/status", headers=bearer(TOKEN), timeout=10).status_code == 401
    finally:
        without.server.close()


def test_responses_carry_the_security_headers(console: Callable[..., Console]) -> None:
    c = console()
    for path, headers in (("/login", {}), ("/api/status", bearer(TOKEN)), ("/api/people", {})):
        r = requests.get(c.url + path, headers=headers, timeout=10)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "DENY", path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path


def test_an_expired_session_is_refused_by_the_server_not_just_the_browser(console: Callable[..., Console]) -> None:
    c = console(session_hours=1.5 / 3600)  # 1.5 s
    s = requests.Session()
    r = s.post(c.url + "/login", data={"password": PASSWORD}, timeout=10, allow_redirects=False)
    assert r.status_code == 302
    cookie = r.cookies["accessd_session"]
    assert s.get(c.url + "/api/status", timeout=10).status_code == 200
    time.sleep(2.0)
    # Replayed by hand: a client that ignores the cookie's Expires still gets nothing.
    replay = requests.get(c.url + "/api/status", headers={"Cookie": f"accessd_session={cookie}"}, timeout=10)
    assert replay.status_code == 401


def _through_proxy(client: str) -> dict[str, str]:
    """What a TLS reverse proxy on this machine adds in front of the console."""
    return {"X-Forwarded-For": client, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "door.example",
            "Origin": PROXY_SITE}


def test_behind_a_trusted_proxy_https_login_works_and_clients_are_told_apart(
        console: Callable[..., Console]) -> None:
    c = console(trusted_proxy="127.0.0.1")
    s = requests.Session()
    r = s.post(c.url + "/login", data={"password": PASSWORD}, headers=_through_proxy("203.0.113.7"),
               timeout=10, allow_redirects=False)
    assert r.status_code == 302, r.text  # was 403: the Origin check compared with http://
    # An attacker behind the same proxy locks out only their own address.
    for i in range(LOGIN_FAILURES + 1):
        s2 = requests.post(c.url + "/login", data={"password": f"x{i}"}, headers=_through_proxy("198.51.100.9"),
                           timeout=10)
    assert s2.status_code == 429
    other = requests.Session()
    ok = other.post(c.url + "/login", data={"password": PASSWORD}, headers=_through_proxy("203.0.113.8"),
                    timeout=10, allow_redirects=False)
    assert ok.status_code == 302
    # The audit log names the client, not the proxy.
    csrf = other.get(c.url + "/api/session", headers=_through_proxy("203.0.113.8"), timeout=10).json()["csrf"]
    upload = other.post(c.url + "/api/people/Ann/photos", headers={**_through_proxy("203.0.113.8"),
                                                                    "X-CSRF-Token": csrf},
                        files={"file": ("a.jpg", photos(PERSON)[0].read_bytes(), "image/jpeg")}, timeout=30)
    assert upload.status_code == 201, upload.text
    assert [r["client"] for r in c.records() if r.get("event") == "enrolment"] == ["203.0.113.8"]


def test_forwarded_headers_from_anyone_else_are_ignored(console: Callable[..., Console]) -> None:
    c = console()  # no trusted proxy
    r = requests.post(c.url + "/login", data={"password": PASSWORD}, headers=_through_proxy("203.0.113.7"),
                      timeout=10, allow_redirects=False)
    assert r.status_code == 403  # the claimed https origin is not this server's
    # Nor can a guesser dodge the limit by claiming a new address each time.
    codes = [requests.post(c.url + "/login", data={"password": f"x{i}"},
                           headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=10).status_code
             for i in range(LOGIN_FAILURES + 1)]
    assert codes[-1] == 429


def test_a_change_that_fails_after_its_record_is_recorded_as_failed(console: Callable[..., Console]) -> None:
    """The review's finding: an upload refused by the filesystem left only an add_photo record."""
    c = console()
    data = photos(PERSON)[0].read_bytes()
    import hashlib
    import os

    stored = f"a-{hashlib.sha256(data).hexdigest()[:8]}.jpg"
    # The temporary file's name taken by a folder: the write fails (as a read-only gallery would).
    (c.gallery / "Ann").mkdir(parents=True)
    (c.gallery / "Ann" / f".{stored}.{os.getpid()}.tmp").mkdir()
    r = requests.post(c.url + "/api/people/Ann/photos", headers=bearer(TOKEN),
                      files={"file": ("a.jpg", data, "image/jpeg")}, timeout=30)
    assert r.status_code == 500 and "add_photo failed" in r.json()["error"]
    changes = [(x["action"], x.get("result")) for x in c.records() if x.get("event") == "enrolment"]
    assert changes == [("add_photo", None), ("add_photo", "failed")]
    assert not (c.gallery / "Ann" / stored).exists()


def test_decisions_are_paged_newest_first_with_a_more_flag(console: Callable[..., Console]) -> None:
    c = console()
    audit = AuditLog(c.audit_path)
    for i in range(7):
        audit.append_record({"decision": "grant" if i % 2 else "deny", "person": "ann" if i % 2 else None,
                             "frame": i})
    audit.append_record({"event": "enrolment", "action": "add_photo", "person": "ann"})
    audit.close()

    def page(**q: object) -> dict[str, Any]:
        r = requests.get(c.url + "/api/decisions", params=q, headers=bearer(TOKEN), timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    first = page(limit=3)
    assert [d["frame"] for d in first["decisions"]] == [6, 5, 4] and first["more"] is True
    last = page(limit=3, offset=6)
    assert [d["frame"] for d in last["decisions"]] == [0] and last["more"] is False
    grants = page(outcome="grant", limit=10)
    assert [d["frame"] for d in grants["decisions"]] == [5, 3, 1] and grants["more"] is False


def test_each_door_has_its_status_live_view_and_decisions(console: Callable[..., Console]) -> None:
    c = console()

    def get(path: str, **q: object) -> requests.Response:
        return requests.get(c.url + path, params=q, headers=bearer(TOKEN), timeout=10)

    assert get("/api/doors").json()["doors"] == [
        {"name": "front", "camera": "up", "source": "0"},
        {"name": "garage", "camera": "reconnecting", "source": "/dev/video2"}]
    assert get("/api/status").json()["door"] == "front"  # the first door without ?door=
    assert get("/api/status", door="garage").json()["camera"] == "reconnecting"
    missing = get("/api/status", door="cellar")
    assert missing.status_code == 404 and "doors: front, garage" in missing.json()["error"]
    assert get("/api/live.jpg", door="cellar").status_code == 404
    assert get("/api/live.jpg", door="garage").status_code == 503  # no frame from that door yet
    audit = AuditLog(c.audit_path)
    for i, door in enumerate(["front", "garage", "front"]):
        audit.append_record({"door": door, "decision": "grant", "person": "ann", "frame": i})
    audit.append_record({"decision": "deny", "person": None, "frame": 3})  # written before doors: the one door
    audit.close()
    assert [d["frame"] for d in get("/api/decisions", door="front").json()["decisions"]] == [2, 0]
    assert [d["frame"] for d in get("/api/decisions", door="garage").json()["decisions"]] == [1]
    assert [d["frame"] for d in get("/api/decisions", door="door").json()["decisions"]] == [3]
