"""The console's web app (Flask): the page and its JSON API. Flask types never leave this module.

Authentication comes first: every route but the login form needs either a
session cookie from a password login (HttpOnly, SameSite=Strict, expiring) or
`Authorization: Bearer <API token>` (a separate, long random credential; the
password a person types is never a bearer token). State-changing requests
made with the cookie also need the session's CSRF token in `X-CSRF-Token` and,
when the browser sends one, an `Origin` matching the host: a page on another
site can neither read nor forge them. Bearer requests carry no ambient
credential, so they need neither. Wrong passwords and wrong bearer tokens
count in one limit per client address; past it, that address gets 429 for
either. Behind a trusted reverse proxy the client's address, scheme and host
come from its X-Forwarded-* headers (waitress applies them, webserver.py);
from anyone else those headers are dropped. Secrets are never logged.

The app only reads the door's state (`DoorView`, the audit log, the gallery
snapshot) and asks for changes through `Enrolment`, which writes the gallery
folder the daemon already watches.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hmac
import io
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request, send_file, session

from accessd.auditread import newest_first
from accessd.config import DEFAULT_DOOR, WebConfig
from accessd.doorview import DoorView, draw
from accessd.enrolment import Enrolment, EnrolmentError, check_name
from accessd.gallery import NEGATIVES_DIR
from accessd.imageio import IMAGE_SUFFIXES, ImageError
from accessd.personfile import RULES_FILE, rules_data

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOGIN_FAILURES = 5  # wrong passwords or bearer tokens per client address ...
LOGIN_WINDOW_S = 60.0  # ... within this long, then 429 until the window passes


@dataclass
class Backend:
    views: Callable[[], dict[str, DoorView]]  # each door's, by name in config order (a reload may change them)
    enrolment: Enrolment
    audit_path: Path
    snapshots_dir: Path | None
    verify: Callable[[bytes, bytes], dict[str, Any]]
    check: Callable[[], list[dict[str, Any]]]  # the enrolment check (accessd/enrolcheck.py) on the live gallery
    settings: Callable[[], dict[str, Any]]
    # Face unlock at a door (door, on, who): False for an unknown door; applied by the daemon's house loop.
    face_unlock: Callable[[str, bool, str], bool] = lambda _door, _on, _by: False
    # A second-factor code typed at a door (door, code, who): False for an unknown door.
    enter_code: Callable[[str, str, str], bool] = lambda _door, _code, _by: False
    rule_problems: Callable[[], dict[str, str]] = dict  # person: why their rules file was refused


class _Limiter:
    def __init__(self) -> None:
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._fails[client]
            while q and q[0] < now - LOGIN_WINDOW_S:
                q.popleft()
            return len(q) >= LOGIN_FAILURES

    def failed(self, client: str) -> None:
        with self._lock:
            self._fails[client].append(time.monotonic())


def create_app(backend: Backend, password: str, web: WebConfig, api_token: str | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # per process: a restart logs everyone out
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="accessd_session",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=web.session_hours),
        MAX_CONTENT_LENGTH=web.max_upload_bytes * 2 + 65536,  # two photos for /api/verify, plus form overhead
    )
    limiter = _Limiter()
    expected = password.encode()
    token = api_token.encode() if api_token else None

    def client() -> str:
        return str(request.remote_addr or "?")

    def bearer() -> bool | None:
        """None without a bearer header; else whether it holds the API token."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        return token is not None and hmac.compare_digest(header[7:].encode(), token)

    def session_ok() -> bool:
        return bool(session.get("auth")) and float(session.get("exp", 0)) > time.time()

    def add(person: str, filename: str, data: bytes, action: str) -> tuple[Response, int]:
        """A photo into a person's folder through Enrolment: 201 with its stored name, or a 4xx."""
        try:
            name = backend.enrolment.add_photo(person, filename, data, client(), action)
        except EnrolmentError as exc:
            return _error(str(exc), exc.status), exc.status
        except ImageError as exc:
            return _error(str(exc), 422), 422
        return jsonify(person=person, photo=name, status="pending"), 201

    @app.before_request
    def authenticate() -> Response | None:
        if request.endpoint in ("login_form", "login", "stylesheet"):  # what the login form itself needs
            return None
        given = bearer()
        if given is not None:
            # A guess like a wrong password: counted, and refused outright once over the limit.
            if limiter.blocked(client()):
                return _error(f"too many failed attempts; wait {LOGIN_WINDOW_S:.0f} s", 429)
            if given:
                return None
            limiter.failed(client())
            log.warning("console: wrong bearer token from %s", client())
            return _error("wrong bearer token", 401)
        if not session_ok():
            if request.path.startswith("/api/"):
                return _error("authentication required: log in, or send Authorization: Bearer <API token>", 401)
            return redirect("/login")  # type: ignore[return-value]
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != request.host_url.rstrip("/"):
                return _error("cross-site request refused (Origin)", 403)
            token = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(token.encode(), str(session.get("csrf", "")).encode()):
                return _error("missing or wrong X-CSRF-Token", 403)
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        # Not no-referrer: with it, browsers send "Origin: null" on form posts, which the check refuses.
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.get("/login")
    def login_form() -> Response:
        return send_file(STATIC / "login.html")

    @app.get("/css/<name>")
    def stylesheet(name: str) -> Response:
        if name not in ("console.css", "login.css"):
            abort(404)
        return send_file(STATIC / name)

    @app.post("/login")
    def login() -> Response:
        who = client()
        if limiter.blocked(who):
            log.warning("console: login refused for %s: too many failures", who)
            return _error(f"too many failed logins; wait {LOGIN_WINDOW_S:.0f} s", 429)
        origin = request.headers.get("Origin")
        if origin is not None and origin != request.host_url.rstrip("/"):
            return _error("cross-site login refused (Origin)", 403)
        given = str(request.form.get("password", "")).encode()
        if not hmac.compare_digest(given, expected):
            limiter.failed(who)
            log.warning("console: failed login from %s", who)
            return _error("wrong password", 401)
        session.clear()
        session.permanent = True
        session.update(auth=True, exp=time.time() + web.session_hours * 3600, csrf=secrets.token_urlsafe(32))
        log.info("console: login from %s", who)
        return redirect("/")  # type: ignore[return-value]

    @app.post("/logout")
    def logout() -> Response:
        session.clear()
        return jsonify(ok=True)

    @app.get("/")
    def page() -> Response:
        return send_file(STATIC / "console.html")

    @app.get("/static/<name>")
    def static_file(name: str) -> Response:
        if name != "console.js":
            abort(404)
        return send_file(STATIC / name)

    @app.get("/api/session")
    def session_info() -> Response:
        return jsonify(csrf=session.get("csrf"))

    def door_view() -> DoorView | None:
        """The door named by `?door=` (the first door without it), or None for an unknown name."""
        views = backend.views()
        name = request.args.get("door") or next(iter(views))
        return views.get(name)

    def no_door() -> Response:
        return _error(f"no door named {request.args.get('door')!r}; doors: {', '.join(backend.views())}", 404)

    @app.get("/api/doors")
    def doors() -> Response:
        return jsonify(doors=[{"name": name, "camera": view.status.get("camera"), "source": view.status.get("source")}
                              for name, view in backend.views().items()])

    @app.get("/api/status")
    def status() -> Response:
        view = door_view()
        return jsonify(view.status) if view is not None else no_door()

    @app.get("/api/people")
    def people() -> Response:
        return jsonify(people=_people(backend))

    @app.post("/api/people/<person>/photos")
    def add_photo(person: str) -> tuple[Response, int]:
        upload = request.files.get("file")
        if upload is None:
            return _error("multipart field 'file' is missing", 400), 400
        data = upload.read(web.max_upload_bytes + 1)
        if len(data) > web.max_upload_bytes:
            return _error(f"photo larger than web.max_upload_bytes ({web.max_upload_bytes})", 413), 413
        return add(person, upload.filename or "photo.jpg", data, "add_photo")

    @app.delete("/api/people/<person>/photos/<photo>")
    def delete_photo(person: str, photo: str) -> Response:
        try:
            backend.enrolment.delete_photo(person, photo, client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)
        return jsonify(ok=True)

    @app.delete("/api/people/<person>")
    def delete_person(person: str) -> Response:
        try:
            backend.enrolment.delete_person(person, client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)
        return jsonify(ok=True)

    @app.get("/api/check")
    def enrolment_check() -> Response:
        return jsonify(flags=backend.check())

    @app.get("/api/people/<person>/photos/<photo>")
    def photo_file(person: str, photo: str) -> Response:
        try:
            return send_file(backend.enrolment.photo_path(person, photo))
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)

    @app.get("/api/decisions")
    def decisions() -> Response:
        try:
            limit = max(1, min(int(request.args.get("limit", "50")), 500))
            offset = max(0, int(request.args.get("offset", "0")))
        except ValueError:
            return _error("limit and offset must be integers", 400)
        outcome = request.args.get("outcome") or None
        person = request.args.get("person") or None
        door = request.args.get("door") or None
        refusal = request.args.get("refusal") or None  # a Refusal value, or "any"
        since = request.args.get("since") or None
        as_csv = request.args.get("format") == "csv"
        if as_csv:
            limit = max(1, min(int(request.args.get("limit", "10000")), 100000))
        rows: list[dict[str, Any]] = []
        more = False
        skipped = 0
        # Newest first from the end of the file, stopping once the page (and one more) is found.
        for r in newest_first(backend.audit_path):
            if since is not None and str(r.get("ts", "")) < since:
                break  # records are in time order: everything further back is older still
            if ("decision" not in r or (outcome is not None and r.get("decision") != outcome)
                    or (person is not None and person not in (r.get("person"), r.get("closest")))
                    or (door is not None and r.get("door", DEFAULT_DOOR) != door)
                    or (refusal is not None and not (r.get("refusal") and refusal in ("any", r.get("refusal"))))):
                continue
            if skipped < offset:
                skipped += 1
            elif len(rows) < limit:
                rows.append(r)
            else:
                more = True
                break
        if as_csv:
            return _csv(rows)
        return jsonify(decisions=rows, more=more)

    @app.get("/api/snapshots/<snapshot_id>")
    def snapshot(snapshot_id: str) -> Response:
        path = _snapshot_path(backend, snapshot_id)
        return send_file(path, mimetype="image/jpeg") if path else _error("no such snapshot", 404)

    @app.post("/api/decisions/<snapshot_id>/enrol")
    def enrol_snapshot(snapshot_id: str) -> tuple[Response, int]:
        path = _snapshot_path(backend, snapshot_id)
        if path is None:
            return _error("no such snapshot", 404), 404
        body = request.get_json(silent=True) or {}
        person = body.get("person") if isinstance(body, dict) else None
        return add(str(person or ""), f"{snapshot_id}.jpg", path.read_bytes(), "enrol_from_snapshot")

    @app.post("/api/verify")
    def verify() -> Response:
        files = [request.files.get(k) for k in ("a", "b")]
        if any(f is None for f in files):
            return _error("multipart fields 'a' and 'b' are both needed", 400)
        data = [f.read(web.max_upload_bytes + 1) for f in files if f is not None]
        if any(len(d) > web.max_upload_bytes for d in data):
            return _error(f"photo larger than web.max_upload_bytes ({web.max_upload_bytes})", 413)
        try:
            return jsonify(backend.verify(data[0], data[1]))
        except ImageError as exc:
            return _error(str(exc), 422)

    @app.get("/api/settings")
    def settings() -> Response:
        view = door_view()
        if view is None:
            return no_door()
        return jsonify(settings=backend.settings(), recent=view.recent_scores())

    @app.get("/api/live.jpg")
    def live_jpg() -> Response:
        view = door_view()
        if view is None:
            return no_door()
        live = view.live()
        if live is None:
            return _error("no frame yet", 503)
        resp = Response(draw(live), mimetype="image/jpeg")
        resp.headers["X-Frame-Seq"] = str(live.seq)
        return resp

    @app.get("/api/live.mjpeg")
    def live_mjpeg() -> Response:
        view = door_view()
        if view is None:
            return no_door()

        def frames() -> Iterator[bytes]:
            seq = -1
            deadline = time.monotonic() + 600  # a stream lasts ten minutes; the page reconnects
            while time.monotonic() < deadline and not view.closing.is_set():
                live = view.wait_newer(seq, timeout=1.0)
                if live is None or live.seq == seq:
                    continue
                seq = live.seq
                jpeg = draw(live)
                yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
                time.sleep(0.1)  # at most 10 frames/s to a viewer
        return Response(frames(), mimetype="multipart/x-mixed-replace; boundary=frame")

    def json_body() -> dict[str, Any]:
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else {}

    @app.get("/api/people/<person>/rules")
    def get_rules(person: str) -> Response:
        try:
            rules = backend.enrolment.rules(person)
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)
        data = rules_data(dataclasses.replace(rules, code_hash=None))
        return jsonify(person=person, rules=data, code_set=rules.code_hash is not None,
                       problem=backend.rule_problems().get(person))

    @app.put("/api/people/<person>/rules")
    def put_rules(person: str) -> Response:
        try:
            rules = backend.enrolment.set_rules(person, request.get_json(silent=True), client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)
        return jsonify(person=person, rules=rules_data(dataclasses.replace(rules, code_hash=None)),
                       code_set=rules.code_hash is not None)

    @app.put("/api/people/<person>/code")
    def put_code(person: str) -> Response:
        code = json_body().get("code")
        if code is not None and not isinstance(code, str):
            return _error("code: must be a string of 4 to 64 characters, or null to remove it", 400)
        try:
            backend.enrolment.set_code(person, code, client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status)
        return jsonify(person=person, code_set=code is not None)

    @app.post("/api/decisions/<snapshot_id>/visitor-pass")
    def visitor_pass(snapshot_id: str) -> tuple[Response, int]:
        path = _snapshot_path(backend, snapshot_id)
        if path is None:
            return _error("no such snapshot", 404), 404
        body = json_body()
        try:
            name = backend.enrolment.visitor_pass(str(body.get("person") or ""), snapshot_id, path.read_bytes(),
                                                  body.get("valid_until"), client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status), exc.status
        except ImageError as exc:
            return _error(str(exc), 422), 422
        return jsonify(person=body.get("person"), photo=name, valid_until=body.get("valid_until"),
                       status="pending"), 201

    @app.post("/api/decisions/<snapshot_id>/not-this-person")
    def not_this_person(snapshot_id: str) -> tuple[Response, int]:
        path = _snapshot_path(backend, snapshot_id)
        if path is None:
            return _error("no such snapshot", 404), 404
        person = str(json_body().get("person") or "")
        try:
            name = backend.enrolment.not_this_person(person, snapshot_id, path.read_bytes(), client())
        except EnrolmentError as exc:
            return _error(str(exc), exc.status), exc.status
        except ImageError as exc:
            return _error(str(exc), 422), 422
        return jsonify(person=person, marked=name), 201

    @app.put("/api/doors/<door>/face-unlock")
    def face_unlock(door: str) -> Response:
        on = json_body().get("on")
        if not isinstance(on, bool):
            return _error("on: must be true or false", 400)
        if not backend.face_unlock(door, on, f"console {client()}"):
            return _error(f"no door named {door!r}", 404)
        return jsonify(door=door, face_unlock=on, status="pending")

    @app.post("/api/doors/<door>/code")
    def enter_code(door: str) -> tuple[Response, int]:
        """A keypad (ESPHome, Home Assistant) or the console's door page: the code, for the face at the door."""
        code = json_body().get("code")
        if not isinstance(code, str) or not code or len(code) > 64:
            return _error("code: must be a string of at most 64 characters", 400), 400
        if not backend.enter_code(door, code, f"console {client()}"):
            return _error(f"no door named {door!r}", 404), 404
        return jsonify(door=door, status="accepted for judging"), 202

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Response:
        return _error(f"request larger than allowed (web.max_upload_bytes {web.max_upload_bytes})", 413)

    return app


CSV_COLUMNS = ("ts", "door", "decision", "person", "verified", "refusal", "factor", "reason", "score", "ratio",
               "closest", "check", "source", "frame", "snapshot", "by")


def _csv(rows: list[dict[str, Any]]) -> Response:
    """Decisions as CSV, newest first: the columns people filter on, one row per decision."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        # A leading = + - @ makes a spreadsheet run a formula: quoted with ' (OWASP's CSV injection advice).
        writer.writerow(["'" + v if v[:1] in ("=", "+", "-", "@") else v
                         for v in ("" if r.get(c) is None else str(r.get(c)) for c in CSV_COLUMNS)])
    resp = Response(out.getvalue(), mimetype="text/csv")
    resp.headers["Content-Disposition"] = "attachment; filename=decisions.csv"
    return resp


def _error(message: str, status: int) -> Response:
    resp = jsonify(error=message)
    resp.status_code = status
    return resp


def _people(backend: Backend) -> list[dict[str, Any]]:
    """Each person's photos on disk, with the status the live gallery gives them."""
    gallery = next(iter(backend.views().values())).gallery  # one gallery serves every door
    in_use = {str(p.path.resolve()) for p in gallery.photos} if gallery else set()
    skipped = {str(s.path.resolve()): s.reason for s in gallery.skipped} if gallery else {}
    root = backend.enrolment.root
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = []
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES):
            key = str(f.resolve())
            if key in in_use:
                state, reason = "in use", None
            elif key in skipped:
                reason = skipped[key]
                state = ("no face" if "no face" in reason else "several faces" if "faces found" in reason
                         else "unreadable")
            else:
                state, reason = "pending", None
            photos.append({"photo": f.name, "status": state, "reason": reason})
        marked = folder / NEGATIVES_DIR
        out.append({"person": folder.name, "photos": photos,
                    "in_use": sum(1 for p in photos if p["status"] == "in use"),
                    "rules": (folder / RULES_FILE).is_file(),
                    "not_this_person": sum(1 for _ in marked.iterdir()) if marked.is_dir() else 0})
    return out


def _snapshot_path(backend: Backend, snapshot_id: str) -> Path | None:
    if backend.snapshots_dir is None:
        return None
    try:
        check_name(snapshot_id, "snapshot")
    except EnrolmentError:
        return None
    path = backend.snapshots_dir / f"{snapshot_id}.jpg"
    return path if path.is_file() and not path.is_symlink() else None
