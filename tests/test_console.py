"""The console, served by a real daemon watching a real (MJPEG over HTTP) camera: API, security, browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from accessd.bench import bench_frame
from accessd.imageio import read_image
from tests.conftest import REPO, SHARED, LoopbackServer, QuietHandler, free_port, terminate
from tests.test_daemon import OTHER_ENROLLED, PERSON, enrol, photos, write_config
from tests.test_imageio import png_claiming

VISITOR = "Jacques_Chirac"  # not enrolled: a visitor pass lets him in

PASSWORD = "correct horse battery staple"
API_TOKEN = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # scripts' bearer token


class ShowCamera(LoopbackServer):
    """An endless MJPEG stream at 10 frames/s of whatever photo the test shows (with sensor noise)."""

    def __init__(self) -> None:
        self.jpeg_of: dict[str, bytes] = {}
        self.frame = np.full((480, 640, 3), 90, np.uint8)
        self.closed = threading.Event()
        camera = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                rng = np.random.default_rng(0)
                try:
                    while not camera.closed.is_set():
                        noisy = np.clip(camera.frame + rng.normal(0, 2, camera.frame.shape), 0, 255).astype(np.uint8)
                        jpeg = cv2.imencode(".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler, "/stream.mjpg")

    def show(self, photo: Path) -> None:
        self.frame = bench_frame(read_image(photo))

    def close(self) -> None:
        self.closed.set()
        super().close()


class Door:
    def __init__(self, tmp: Path, model: Path) -> None:
        self.tmp = tmp
        self.camera = ShowCamera()
        self.camera.show(photos(PERSON)[0])
        self.gallery = tmp / "gallery"
        enrol(self.gallery, OTHER_ENROLLED, photos(OTHER_ENROLLED)[:3])
        self.audit = tmp / "audit.jsonl"
        creds = tmp / "creds"
        creds.mkdir()
        (creds / "console-password").write_text(PASSWORD + "\n")
        (creds / "console-token").write_text(API_TOKEN + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = write_config(
            tmp / "config.yaml", model,
            # Two doors: the one with the camera first (the console's default), and one whose camera is
            # not plugged in, for the door picker.
            doors=[{"name": "front", "source": {"uri": self.camera.url, "reconnect_max_s": 1.0}},
                   {"name": "side", "source": {"uri": "/dev/shm/accessd-no-such-camera"}}],
            gallery={"dir": str(self.gallery)},
            audit={"path": str(self.audit), "snapshots_dir": str(tmp / "snaps")},
            decision={"deny_interval_s": 1.0, "grant_cooldown_s": 1.0, "lockout_denies": 0},
            web={"port": self.port, "password_credential": "console-password",
                 "api_token_credential": "console-token"},
        )
        env = {**os.environ, "ACCESSD_SHARED": str(SHARED), "CREDENTIALS_DIRECTORY": str(creds)}
        self.proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/login", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.3)
            assert self.proc.poll() is None, "".join(self.stderr)[-3000:]
        raise AssertionError("console did not come up:\n" + "".join(self.stderr)[-3000:])

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {API_TOKEN}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def wait_for(self, what: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}\n" + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        """The daemon's last log lines, without the stream of routine denies."""
        return "".join([line for line in self.stderr if "decision=deny" not in line][-n:])

    def close(self) -> None:
        try:
            terminate(self.proc)
        finally:
            self.camera.close()


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[Door]:
    d = Door(tmp_path_factory.mktemp("console"), trained_model)
    yield d
    d.close()
    assert PASSWORD not in "".join(d.stderr) and API_TOKEN not in "".join(d.stderr)  # secrets never logged


def photo_status(door: Door, person: str, photo: str) -> str | None:
    for p in door.api("GET", "/api/people").json()["people"]:
        if p["person"] == person:
            for ph in p["photos"]:
                if ph["photo"] == photo:
                    return str(ph["status"])
    return None


# --- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/status", "/api/people", "/api/decisions", "/api/live.jpg",
                                  "/api/live.mjpeg", "/api/snapshots/x", "/api/settings"])
def test_nothing_is_served_without_authentication(door: Door, path: str) -> None:
    # Wrong bearer tokens count towards the client's limit: tests/test_console_auth.py has them.
    assert requests.get(door.url + path, timeout=10).status_code == 401


def test_the_page_redirects_to_the_login_form(door: Door) -> None:
    r = requests.get(door.url + "/", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert requests.get(door.url + "/static/console.js", timeout=10, allow_redirects=False).status_code == 302
    assert requests.get(door.url + "/css/login.css", timeout=10).status_code == 200  # the form's own style
    sneaky = requests.get(door.url + "/css/%2E%2E%2Fconfig.yaml", timeout=10, allow_redirects=False)
    assert sneaky.status_code in (302, 404) and "state_dir" not in sneaky.text


def test_login_sets_a_strict_httponly_expiring_cookie(door: Door) -> None:
    s = requests.Session()
    r = s.post(door.url + "/login", data={"password": PASSWORD}, timeout=10, allow_redirects=False)
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Expires=" in cookie
    assert s.get(door.url + "/api/status", timeout=10).status_code == 200


def test_cookie_requests_that_change_state_need_the_csrf_token_and_same_origin(door: Door) -> None:
    s = requests.Session()
    s.post(door.url + "/login", data={"password": PASSWORD}, timeout=10)
    path = f"/api/people/{OTHER_ENROLLED}/photos/{photos(OTHER_ENROLLED)[0].name}"
    assert s.delete(door.url + path, timeout=10).status_code == 403  # no token: a forged request
    token = s.get(door.url + "/api/session", timeout=10).json()["csrf"]
    evil = s.delete(door.url + path, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"}, timeout=10)
    assert evil.status_code == 403
    assert (door.gallery / OTHER_ENROLLED / photos(OTHER_ENROLLED)[0].name).is_file()


# --- the API ----------------------------------------------------------------------------------

def test_status_tells_the_door_state(door: Door) -> None:
    status = door.wait_for("frames", lambda: (s := door.api("GET", "/api/status").json()).get("frames") and s)
    assert status["camera"] == "up" and status["model"] == "accessd-fused.onnx"
    assert status["gallery_people"] == 1 and status["gallery_photos"] == 3
    assert status["provider"] == "CPUExecutionProvider" or "CUDA" in status["provider"]


def test_live_frames_change_and_show_the_camera(door: Door) -> None:
    first = door.api("GET", "/api/live.jpg")
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(first.content, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3)
    later = door.wait_for("a newer frame", lambda: (r := door.api("GET", "/api/live.jpg")).headers["X-Frame-Seq"]
                          != first.headers["X-Frame-Seq"] and r)
    assert later.content != first.content
    with door.api("GET", "/api/live.mjpeg", stream=True) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        chunk = next(r.iter_content(4096))
        assert chunk.startswith(b"--frame")


@pytest.mark.parametrize(("person", "name", "status"), [
    ("%2E%2E", "a.jpg", 400), (".hidden", "a.jpg", 400), ("a/b", "a.jpg", 404), ("a%2Fb", "a.jpg", 404),
    ("ok", "a.txt", 415)])
def test_bad_names_are_refused(door: Door, person: str, name: str, status: int) -> None:
    data = photos(PERSON)[1].read_bytes()
    r = door.api("POST", f"/api/people/{person}/photos", files={"file": (name, data, "image/jpeg")})
    assert r.status_code == status, r.text
    assert not (door.gallery / "ok").exists() and not (door.tmp / "a.jpg").exists()


def test_photo_names_cannot_traverse(door: Door) -> None:
    r = door.api("DELETE", f"/api/people/{OTHER_ENROLLED}/photos/..%2F..%2Faudit.jsonl")
    assert r.status_code in (400, 404)
    assert door.audit.exists() and (door.gallery / OTHER_ENROLLED).is_dir()


def test_symlinked_person_folders_are_refused(door: Door) -> None:
    outside = door.tmp / "outside"
    outside.mkdir(exist_ok=True)
    (door.gallery / "linked").symlink_to(outside)
    try:
        r = door.api("POST", "/api/people/linked/photos",
                     files={"file": ("a.jpg", photos(PERSON)[1].read_bytes(), "image/jpeg")})
        assert r.status_code == 403, r.text
        assert list(outside.iterdir()) == []
    finally:
        (door.gallery / "linked").unlink()


def test_bad_uploads_get_a_clear_4xx(door: Door) -> None:
    corrupt = door.api("POST", "/api/people/Someone/photos", files={"file": ("x.jpg", b"\xff\xd8 not really", "image/jpeg")})
    assert corrupt.status_code == 422 and "x.jpg" in corrupt.json()["error"]
    text = door.api("POST", "/api/people/Someone/photos", files={"file": ("x.png", b"hello", "image/png")})
    assert text.status_code == 422
    big = door.api("POST", "/api/people/Someone/photos", files={"file": ("big.jpg", b"\xff" * 10_000_001, "image/jpeg")})
    assert big.status_code == 413
    png = png_claiming(20_000, 20_000)  # a header claiming 400 megapixels, a tiny body
    bomb = door.api("POST", "/api/people/Someone/photos", files={"file": ("bomb.png", png, "image/png")})
    assert bomb.status_code == 422 and "pixel limit" in bomb.json()["error"]
    assert not (door.gallery / "Someone").exists() or list((door.gallery / "Someone").iterdir()) == []
    blank = cv2.imencode(".jpg", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    faceless = door.api("POST", "/api/people/Someone/photos", files={"file": ("wall.jpg", blank, "image/jpeg")})
    assert faceless.status_code == 422 and "no face found" in faceless.json()["error"]
    missing = door.api("POST", "/api/people/Someone/photos", files={"other": ("a.jpg", b"", "image/jpeg")})
    assert missing.status_code == 400


def test_verify_scores_two_uploads(door: Door) -> None:
    samples = SHARED / "data/samples"
    same = door.api("POST", "/api/verify", files={"a": (samples / "obama.jpg").open("rb"),
                                                 "b": (samples / "obama3.jpg").open("rb")}).json()
    assert same["match"] is True and same["score"] > same["threshold"]
    other = door.api("POST", "/api/verify", files={"a": (samples / "obama.jpg").open("rb"),
                                                  "b": (samples / "biden.jpg").open("rb")}).json()
    assert other["match"] is False


def test_enrolment_check_flags_a_photo_filed_under_the_wrong_name(door: Door) -> None:
    assert door.api("GET", "/api/check").json()["flags"] == []
    wrong = photos(PERSON)[5]
    r = door.api("POST", f"/api/people/{OTHER_ENROLLED}/photos",
                 files={"file": (wrong.name, wrong.read_bytes(), "image/jpeg")})
    assert r.status_code == 201
    name = r.json()["photo"]
    try:
        door.wait_for("the photo in use", lambda: photo_status(door, OTHER_ENROLLED, name) == "in use")
        flags = door.api("GET", "/api/check").json()["flags"]
        assert [(f["person"], f["photo"]) for f in flags] == [(OTHER_ENROLLED, name)], flags
        # Nobody else enrolled looks like it (the person at the camera is not enrolled yet): it matches no one.
        assert flags[0]["problem"] == f"matches none of {OTHER_ENROLLED}'s other photos"
    finally:
        assert door.api("DELETE", f"/api/people/{OTHER_ENROLLED}/photos/{name}").status_code == 200
        door.wait_for("the photo gone", lambda: photo_status(door, OTHER_ENROLLED, name) is None)


def test_upload_goes_live_and_delete_is_audited_with_the_client(door: Door) -> None:
    r = door.api("POST", "/api/people/Api_Test/photos",
                 files={"file": ("face one.jpg", photos(PERSON)[2].read_bytes(), "image/jpeg")})
    assert r.status_code == 201, r.text
    name = r.json()["photo"]
    assert name.startswith("face_one-") and name.endswith(".jpg")
    t0 = time.monotonic()
    door.wait_for("the photo in use", lambda: photo_status(door, "Api_Test", name) == "in use", timeout=20)
    print(f"upload live after {time.monotonic() - t0:.1f} s")
    assert door.api("DELETE", f"/api/people/Api_Test/photos/{name}").status_code == 200
    assert door.api("DELETE", f"/api/people/Api_Test/photos/{name}").status_code == 404
    assert door.api("DELETE", "/api/people/Api_Test").status_code == 200
    changes = [r for r in door.records() if r.get("event") == "enrolment" and r["person"] == "Api_Test"]
    assert [c["action"] for c in changes] == ["add_photo", "delete_photo", "delete_person"]
    assert all(c["client"] == "127.0.0.1" for c in changes) and changes[0]["photo"] == name


# --- the page, in a real browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (install.sh installs them as root)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    b = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield b
    b.quit()


def shoot(browser: Any, name: str) -> None:
    folder = os.environ.get("ACCESSD_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / f"console-{name}.png"))


def waiter(browser: Any, door: Door) -> Any:
    """wait(what, check, timeout): until check() is truthy in the browser, retried over redrawn elements;
    on a timeout the page's message, the browser's console and the daemon's log say why."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(what: str, check: Any, timeout: float = 40) -> Any:
        try:
            return WebDriverWait(browser, timeout, poll_frequency=0.3,
                                 ignored_exceptions=[StaleElementReferenceException, NoSuchElementException]
                                 ).until(lambda _b: check())
        except Exception as exc:
            logs = browser.get_log("browser")
            message = browser.find_element(By.ID, "message").text
            raise AssertionError(f"browser: timed out waiting for {what} at {browser.current_url}; page says "
                                 f"{message!r}\n"
                                 f"console: {logs[-10:]}\n" + door.log_tail()) from exc
    return wait


def test_in_the_browser_enrol_from_a_refused_snapshot_then_delete_then_upload(door: Door, browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    wait = waiter(browser, door)

    def tab(name: str) -> None:
        browser.find_element(By.CSS_SELECTOR, f"nav button[data-tab='{name}']").click()

    # Log in; the live frame changes.
    browser.get(door.url + "/")
    assert browser.current_url.endswith("/login")
    shoot(browser, "login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    frame = wait("the live frame", lambda: browser.find_element(By.ID, "live-frame").get_attribute("data-seq"))
    wait("the live frame to change",
         lambda: browser.find_element(By.ID, "live-frame").get_attribute("data-seq") not in ("", frame))
    wait("the status", lambda: "gallery photos" in browser.find_element(By.ID, "status").text)
    shoot(browser, "live")
    # The door picker: the other door's camera is not plugged in, and its status says so.
    from selenium.webdriver.support.ui import Select

    picker = Select(browser.find_element(By.ID, "live-door"))
    assert [o.text for o in picker.options] == ["front", "side"]
    picker.select_by_visible_text("side")
    wait("the side door's status", lambda: "reconnecting" in browser.find_element(By.ID, "status").text
         and "/dev/shm/accessd-no-such-camera" in browser.find_element(By.ID, "status").text)
    picker.select_by_visible_text("front")
    wait("the front door's status", lambda: "up" in browser.find_element(By.ID, "status").text.split())

    # The person at the camera is not enrolled: refused, with a snapshot. Enrol from it.
    door.wait_for("a refused snapshot", lambda: any(r.get("decision") == "deny" and r.get("id")
                                                    for r in door.records()))
    tab("decisions")
    wait("a deny to enrol from", lambda: browser.find_elements(By.CSS_SELECTOR, "#decision-rows button.enrol"))
    shoot(browser, "decisions")

    def click_enrol() -> bool:
        try:
            browser.find_elements(By.CSS_SELECTOR, "#decision-rows button.enrol")[0].click()
            return True
        except (StaleElementReferenceException, IndexError):
            return False  # the list was redrawn under us

    wait("the enrol button", click_enrol)
    prompt = wait("the person prompt", lambda: browser.switch_to.alert)
    prompt.send_keys("Donald")
    prompt.accept()
    wait("the confirmation", lambda: "added to Donald" in browser.find_element(By.ID, "message").text)
    enrolled_at = len(door.records())
    door.wait_for("a grant for Donald", lambda: any(r.get("decision") == "grant" and r["person"] == "Donald"
                                                    for r in door.records()[enrolled_at:]), timeout=40)
    browser.find_element(By.ID, "f-outcome").send_keys("grant")
    browser.find_element(By.CSS_SELECTOR, "#decision-filter button").click()
    wait("the grant in the list", lambda: "Donald" in browser.find_element(By.ID, "decision-rows").text)

    # People: Donald's photo is in use. Delete it: refused again.
    tab("people")
    card = "[data-person='Donald']"
    wait("Donald's photo in use", lambda: "in use" in browser.find_element(By.CSS_SELECTOR, card).text)
    shoot(browser, "people")
    wait("the delete button", lambda: (browser.find_element(By.CSS_SELECTOR, f"{card} button.delete").click(), True)[1])
    browser.switch_to.alert.accept()
    wait("the deletion", lambda: "deleted" in browser.find_element(By.ID, "message").text)
    deleted_at = len(door.records())
    door.wait_for("a deny after the deletion", lambda: any(r.get("decision") == "deny"
                                                           for r in door.records()[deleted_at:]), timeout=40)
    # The DELETE answered once the frame loop had dropped the photo: no grant after it, not one frame's worth.
    assert not any(r.get("decision") == "grant" for r in door.records()[deleted_at:])

    # Upload one of his photos (the file input, as a drop would): in use, shown on the page. The next
    # test needs the camera's photo let in by it: his third scores 0.98 against it (his fourth, once
    # used here, 0.55 with faceres fine-tuned: a genuine miss at 0.6, not what this test is about).
    tab("people")
    # Cards are redrawn when the list refreshes: each find-and-act is retried on a stale element.
    wait("the upload", lambda: (browser.find_element(By.CSS_SELECTOR, f"{card} input[type=file]")
                                .send_keys(str(photos(PERSON)[2])), True)[1])
    wait("the upload's confirmation", lambda: "added to Donald" in browser.find_element(By.ID, "message").text)
    door.wait_for("the upload in use", lambda: any(
        p["person"] == "Donald" and p["in_use"] == 1 for p in door.api("GET", "/api/people").json()["people"]))
    tab("people")
    wait("the upload shown in use", lambda: "in use" in browser.find_element(By.CSS_SELECTOR, card).text)

    tab("verify")
    shoot(browser, "verify")
    tab("settings")
    wait("the settings", lambda: "template_threshold" in browser.find_element(By.ID, "settings-list").text)
    shoot(browser, "thresholds")
    changes = [(r["action"], r["person"]) for r in door.records() if r.get("event") == "enrolment"]
    assert changes[-3:] == [("enrol_from_snapshot", "Donald"), ("delete_photo", "Donald"), ("add_photo", "Donald")]


def test_in_the_browser_a_visitor_pass_from_a_snapshot_and_not_this_person(door: Door, browser: Any) -> None:
    """Runs after the test above: its person is enrolled as Donald, and the camera still shows him."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    wait = waiter(browser, door)

    def click_first(selector: str) -> bool:
        try:
            browser.find_elements(By.CSS_SELECTOR, selector)[0].click()
            return True
        except (StaleElementReferenceException, IndexError):
            return False  # the list was redrawn under us

    def show_decisions(outcome: str) -> None:
        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab='decisions']").click()
        browser.find_element(By.ID, "f-person").clear()
        browser.find_element(By.ID, "f-outcome").send_keys(outcome)
        browser.find_element(By.CSS_SELECTOR, "#decision-filter button").click()

    # Donald is let in, but the operator says this face is not Donald: kept as his negative example.
    door.wait_for("Donald granted", lambda: any(r.get("decision") == "grant" and r.get("person") == "Donald"
                                                and r.get("id") for r in door.records()))
    show_decisions("grant")
    wait("a grant row", lambda: browser.find_elements(By.CSS_SELECTOR, "#decision-rows button.not-this-person"))
    assert "not Donald" in browser.find_element(By.CSS_SELECTOR, "#decision-rows button.not-this-person").text
    wait("the not-this-person button", lambda: click_first("#decision-rows button.not-this-person"))
    browser.switch_to.alert.accept()
    wait("the confirmation", lambda: "marked: not Donald" in browser.find_element(By.ID, "message").text)
    marked_at = len(door.records())
    refused = door.wait_for("the face refused as not Donald", lambda: [
        r for r in door.records()[marked_at:] if r.get("refusal") == "not_this_person"], timeout=40)
    assert refused[0]["verified"] == "Donald" and refused[0]["person"] is None
    assert "not this person" in refused[0]["reason"]
    time.sleep(2.0)
    assert not any(r.get("decision") == "grant" for r in door.records()[marked_at + 3:]), "granted after marking"
    assert list((door.gallery / "Donald" / "not-this-person").glob("*.jpg"))
    shoot(browser, "not-this-person")

    # Someone else at the door: refused; a visitor pass from the snapshot lets them in.
    shown_at = len(door.records())
    door.camera.show(photos(VISITOR)[1])
    door.wait_for("the visitor refused with a snapshot", lambda: any(
        r.get("decision") == "deny" and r.get("id") and r.get("refusal") is None for r in door.records()[shown_at:]))
    time.sleep(1.5)  # the newest deny is the visitor's
    show_decisions("deny")
    wait("a deny to pass", lambda: browser.find_elements(By.CSS_SELECTOR, "#decision-rows button.visitor"))
    wait("the visitor button", lambda: click_first("#decision-rows button.visitor"))
    name = wait("the name prompt", lambda: browser.switch_to.alert)
    name.send_keys("Visitor")
    name.accept()
    until = wait("the expiry prompt", lambda: browser.switch_to.alert)
    until.send_keys("2030-01-31")
    until.accept()
    wait("the confirmation", lambda: "visitor pass for Visitor until 2030-01-31" in
         browser.find_element(By.ID, "message").text)
    passed_at = len(door.records())
    door.wait_for("the visitor let in", lambda: any(r.get("decision") == "grant" and r.get("person") == "Visitor"
                                                    for r in door.records()[passed_at:]), timeout=40)
    from accessd.personfile import read_rules

    rules = read_rules(door.gallery / "Visitor" / "person.yaml")
    assert rules.valid_until is not None and rules.valid_until.text == "2030-01-31"
    changes = [(r["action"], r["person"]) for r in door.records() if r.get("event") == "enrolment"]
    assert ("not_this_person", "Donald") in changes
    assert changes[-2:] == [("visitor_pass", "Visitor"), ("enrol_from_snapshot", "Visitor")]

    # A person's rules on their card: a mistake is refused naming the key, then saved.
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab='people']").click()
    card = f"[data-person='{OTHER_ENROLLED}']"
    wait("the rules toggle", lambda: (browser.find_element(By.CSS_SELECTOR, f"{card} details.rules summary").click(),
                                      True)[1])
    form = wait("the rules form", lambda: browser.find_element(By.CSS_SELECTOR, f"{card} form.rules-form"))
    form.find_element(By.NAME, "windows").send_keys("mon-fri 08:00-18:00; tues 18:00-20:00")
    form.find_element(By.NAME, "valid_until").send_keys("2030-06-30")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait("the refusal", lambda: "windows[1]: unknown weekday 'tues'" in browser.find_element(By.ID, "message").text)
    windows = form.find_element(By.NAME, "windows")
    windows.clear()
    windows.send_keys("mon-fri 08:00-18:00; tue 18:00-20:00")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait("the rules saved", lambda: f"rules of {OTHER_ENROLLED} saved" in browser.find_element(By.ID, "message").text)
    shoot(browser, "rules")
    saved = read_rules(door.gallery / OTHER_ENROLLED / "person.yaml")
    assert saved.windows.text == ("mon-fri 08:00-18:00", "tue 18:00-20:00") and saved.valid_until is not None


def test_rules_codes_and_the_door_switch_through_the_api(door: Door) -> None:
    person = "Rules_Test"
    assert door.api("POST", f"/api/people/{person}/photos",
                    files={"file": ("a.jpg", photos(OTHER_ENROLLED)[5].read_bytes(), "image/jpeg")}).status_code == 201
    path = f"/api/people/{person}/rules"
    assert door.api("GET", path).json() == {"person": person, "rules": {}, "code_set": False, "problem": None}
    for body, message in [({"windows": ["tues 18:00-20:00"]}, "windows[0]: unknown weekday 'tues'"),
                          ({"windows": ["tue 20:00-18:00"]}, "windows[0]: '20:00-18:00' ends before it starts"),
                          ({"valid_until": "someday"}, "valid_until: 'someday' is not a date"),
                          ({"colour": "blue"}, "colour: unknown key"),
                          ({"code_hash": "scrypt$1"}, "code_hash: set the code itself")]:
        r = door.api("PUT", path, json=body)
        assert r.status_code in (400, 422) and message in r.json()["error"], (body, r.text)
    good = {"name": "Rules Test", "windows": ["mon-fri 08:00-18:00"], "valid_until": "2030-01-31", "doors": ["front"]}
    r = door.api("PUT", path, json=good)
    assert r.status_code == 200 and r.json()["rules"] == good, r.text
    assert door.api("PUT", f"/api/people/{person}/code", json={"code": "12"}).status_code == 422  # too short
    assert door.api("PUT", f"/api/people/{person}/code", json={"code": "975310"}).status_code == 200
    got = door.api("GET", path).json()
    assert got["rules"] == good and got["code_set"] is True and "975310" not in (door.gallery / person /
                                                                                 "person.yaml").read_text()
    # The door's switch: off, audited with who, shown in the status; then on again.
    assert door.api("PUT", "/api/doors/nowhere/face-unlock", json={"on": False}).status_code == 404
    assert door.api("PUT", "/api/doors/front/face-unlock", json={"on": False}).status_code == 200
    door.wait_for("face unlock off", lambda: door.api("GET", "/api/status?door=front").json()["face_unlock"] is False)
    assert door.api("PUT", "/api/doors/front/face-unlock", json={"on": True}).status_code == 200
    door.wait_for("face unlock on", lambda: door.api("GET", "/api/status?door=front").json()["face_unlock"] is True)
    switched = [r for r in door.records() if r.get("event") == "face_unlock"]
    assert [(r["state"], r["by"]) for r in switched[-2:]] == [("off", "console 127.0.0.1"), ("on", "console 127.0.0.1")]
    assert door.api("POST", "/api/doors/front/code", json={"code": "4711"}).status_code == 202
    assert door.api("POST", "/api/doors/front/code", json={"code": 4711}).status_code == 400
    changes = [(r["action"], r["person"]) for r in door.records() if r.get("event") == "enrolment"]
    assert changes[-2:] == [("set_rules", person), ("set_code", person)]
    assert "975310" not in door.audit.read_text() and "4711" not in "".join(door.stderr)
    assert door.api("DELETE", f"/api/people/{person}").status_code == 200


def test_decisions_filter_by_refusal_and_export_as_csv(door: Door) -> None:
    import csv
    import io

    r = door.api("GET", "/api/decisions?format=csv&outcome=deny")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and all(row["decision"] == "deny" for row in rows)
    assert list(rows[0])[:6] == ["ts", "door", "decision", "person", "verified", "refusal"]
    refused = door.api("GET", "/api/decisions?refusal=any").json()["decisions"]
    assert refused and all(d.get("refusal") for d in refused)  # the browser test's "not this person"
    marked = list(csv.DictReader(io.StringIO(door.api("GET", "/api/decisions?format=csv&refusal=not_this_person").text)))
    assert marked and all(row["refusal"] == "not_this_person" and row["verified"] == "Donald" for row in marked)
    none = door.api("GET", "/api/decisions?refusal=pass_expired").json()["decisions"]
    assert all(d["refusal"] == "pass_expired" for d in none)


# --- last: these lock the test client out or stand alone ----------------------------------------

def test_failed_logins_are_rate_limited(door: Door) -> None:
    logged_in = requests.Session()
    assert logged_in.post(door.url + "/login", data={"password": PASSWORD}, timeout=10).status_code == 200
    codes = [requests.post(door.url + "/login", data={"password": f"guess {i}"}, timeout=10).status_code
             for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    right = requests.post(door.url + "/login", data={"password": PASSWORD}, timeout=10, allow_redirects=False)
    assert right.status_code == 429  # even the right password waits out the window
    assert door.api("GET", "/api/status").status_code == 429  # and so does the bearer token: one limit
    assert logged_in.get(door.url + "/api/status", timeout=10).status_code == 200  # a session goes on


def test_without_a_credential_the_console_stays_off_and_says_how(tmp_path: Path, trained_model: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "config.yaml", trained_model,
                       source={"uri": "rtsp://127.0.0.1:9/none", "reconnect_max_s": 1.0},
                       gallery={"dir": str(tmp_path / "empty")}, audit={"path": str(tmp_path / "a.jsonl")},
                       web={"port": port})
    proc = subprocess.Popen([sys.executable, "-m", "accessd", "run", "--config", str(cfg)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ACCESSD_SHARED": str(SHARED)})
    guard = threading.Timer(90, proc.kill)  # never hang the suite
    guard.start()
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "console" in line:
                break
        assert any("console off" in line and "web.password_credential" in line for line in lines), lines
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/login", timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        guard.cancel()
    assert proc.returncode == 0
