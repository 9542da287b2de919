from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accessd.actions import Actions, post_webhook, run_hook
from accessd.config import ActionsConfig, HookConfig, WebhookConfig
from accessd.types import Decision, Outcome
from tests.conftest import LoopbackServer, QuietHandler

DECISION = Decision(Outcome.GRANT, "ann; rm -rf / $(reboot)", 0.91, 0.75, 42, 1.4, "cam0", "verified")
RECORD = {"ts": "2026-01-01T00:00:00Z", **DECISION.to_record()}


def test_hook_gets_decision_in_env_as_data(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    script = "import json, os, sys; json.dump({k: v for k, v in os.environ.items() if k.startswith('ACCESSD_')}, open(sys.argv[1], 'w'))"
    actions = Actions(ActionsConfig(hooks=(HookConfig(argv=(sys.executable, "-c", script, str(out)), on=("grant",)),)))
    futures = actions.fire(DECISION, RECORD)
    assert [f.result(timeout=30) for f in futures] == [True]
    env = json.loads(out.read_text())
    assert env["ACCESSD_DECISION"] == "grant"
    assert env["ACCESSD_PERSON"] == "ann; rm -rf / $(reboot)"  # passed verbatim, never interpreted
    assert env["ACCESSD_SCORE"] == "0.910000" and env["ACCESSD_RATIO"] == "0.750000"
    assert env["ACCESSD_FRAME"] == "42" and env["ACCESSD_SOURCE"] == "cam0"
    actions.close()


def test_hook_only_for_its_outcomes(tmp_path: Path) -> None:
    actions = Actions(ActionsConfig(hooks=(HookConfig(argv=(sys.executable, "-c", "pass"), on=("deny",)),)))
    assert actions.fire(DECISION, RECORD) == []
    actions.close()


def test_hanging_hook_is_killed_at_timeout_without_blocking_caller(caplog: pytest.LogCaptureFixture) -> None:
    hook = HookConfig(argv=(sys.executable, "-c", "import time; time.sleep(60)"), timeout_s=0.5)
    actions = Actions(ActionsConfig(hooks=(hook,)))
    t0 = time.monotonic()
    futures = actions.fire(DECISION, RECORD)
    assert time.monotonic() - t0 < 0.5  # fire() returns at once
    assert futures[0].result(timeout=30) is False
    assert time.monotonic() - t0 < 10
    assert "timed out" in caplog.text
    assert actions.failures == 1
    actions.close()


def test_missing_failing_and_flooding_hooks(caplog: pytest.LogCaptureFixture) -> None:
    assert run_hook(HookConfig(argv=("/nonexistent/open-door",)), {}) is False
    assert "failed to start" in caplog.text
    assert run_hook(HookConfig(argv=(sys.executable, "-c", "import sys; print('relay jammed'); sys.exit(3)")), {}) is False
    assert "exited 3: relay jammed" in caplog.text
    flood = "import sys\nfor _ in range(20000): sys.stdout.write('x' * 1000 + '\\n')\n"
    assert run_hook(HookConfig(argv=(sys.executable, "-c", flood), timeout_s=30), {}) is True


class Receiver(LoopbackServer):
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

        super().__init__(Handler, "/door")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhook_posts_decision_json_with_token(receiver: Receiver, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hook-token").write_text("t0ken\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = ActionsConfig(webhooks=(WebhookConfig(url=receiver.url, token_credential="hook-token"),))
    actions = Actions(cfg)
    assert [f.result(timeout=30) for f in actions.fire(DECISION, RECORD)] == [True]
    assert receiver.bodies[0]["decision"] == "grant" and receiver.bodies[0]["frame"] == 42
    assert receiver.headers[0]["Authorization"] == "Bearer t0ken"
    actions.close()


def test_webhook_retries_on_500_then_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    r = Receiver(status=500)
    # Home Assistant's webhook id in the path is the secret: logs show scheme, host and port only.
    url = r.url.rstrip("/") + "/api/webhook/s3cret-webhook-id?key=s3cret-key"
    try:
        assert post_webhook(WebhookConfig(url=url, retries=2, timeout_s=2), RECORD, None) is False
        assert len(r.bodies) == 3
        assert "HTTP 500" in caplog.text and "gave up after 3 attempts" in caplog.text
        assert "s3cret" not in caplog.text
    finally:
        r.close()


def test_webhook_receiver_down_or_slow() -> None:
    r = Receiver()
    url = r.url
    r.close()  # nothing listens on that port now
    t0 = time.monotonic()
    assert post_webhook(WebhookConfig(url=url, retries=1, timeout_s=1), RECORD, None) is False
    assert time.monotonic() - t0 < 10
    slow = Receiver(delay=3.0)
    try:
        assert post_webhook(WebhookConfig(url=slow.url, retries=0, timeout_s=0.5), RECORD, None) is False
    finally:
        slow.close()


def test_a_reload_lets_queued_grant_hooks_run(tmp_path: Path) -> None:
    """A SIGHUP reload closes the old Actions without waiting; its queued hooks were cancelled."""
    out = tmp_path / "fired.txt"
    script = f"import time; time.sleep(0.3); open({str(out)!r}, 'a').write('x')"
    actions = Actions(ActionsConfig(hooks=(HookConfig(argv=(sys.executable, "-c", script)),), max_concurrent=1))
    futures = [f for _ in range(3) for f in actions.fire(DECISION, RECORD)]
    actions.close(wait=False)  # what retire() does at a reload: returns at once ...
    assert [f.result(timeout=30) for f in futures] == [True, True, True]  # ... and every grant still fires
    assert out.read_text() == "xxx"


def test_a_crashing_action_is_counted_before_its_future_completes() -> None:
    def boom(*_args: object) -> bool:
        raise RuntimeError("injected")

    actions = Actions(ActionsConfig(max_concurrent=1))
    for _ in range(50):  # the count was once bumped by a done-callback, after result() had returned
        before = actions.failures
        future = actions._submit("boom", boom)
        assert future is not None and future.result(timeout=10) is False
        assert actions.failures == before + 1
    actions.close()
