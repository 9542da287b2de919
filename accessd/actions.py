"""Grant/deny actions: hook commands and webhooks, run off the frame loop.

Hooks run as argv lists (never through a shell) with the decision in
`ACCESSD_*` environment variables, so a person's name or any other value is
data, never code. Each hook is killed (its whole process group) at its
timeout, and its output goes to a temporary file of which only the tail is
logged, so a hook that floods stdout cannot exhaust memory. Webhooks POST the
decision as JSON with a timeout and retries. Everything runs on a bounded
thread pool; when it is saturated, new actions are dropped and logged rather
than queued without limit behind a hung one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from accessd.config import ActionsConfig, ConfigError, HookConfig, WebhookConfig, read_credential
from accessd.types import Decision

log = logging.getLogger(__name__)

OUTPUT_TAIL = 512


def decision_env(decision: Decision, record: dict[str, object]) -> dict[str, str]:
    return {
        "ACCESSD_DOOR": decision.door,
        "ACCESSD_DECISION": decision.outcome.value,
        "ACCESSD_PERSON": decision.person or "",
        "ACCESSD_SCORE": f"{decision.score:.6f}",
        "ACCESSD_RATIO": f"{decision.ratio:.6f}",
        "ACCESSD_FRAME": str(decision.frame),
        "ACCESSD_SOURCE": decision.source,
        "ACCESSD_REASON": decision.reason,
        "ACCESSD_SNAPSHOT": decision.snapshot or "",
        "ACCESSD_TS": str(record.get("ts", "")),
        # A verified face refused by a rule: who it was and why (accessd/rules.py Refusal); empty otherwise.
        "ACCESSD_VERIFIED": str(decision.extra.get("verified") or ""),
        "ACCESSD_REFUSAL": str(decision.extra.get("refusal") or ""),
        "ACCESSD_FACTOR": str(decision.extra.get("factor") or ""),  # face, or face+code
    }


class Actions:
    def __init__(self, config: ActionsConfig) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrent, thread_name_prefix="action")
        self._pending = 0
        self._lock = threading.Lock()
        self.failures = 0
        self._tokens: dict[str, str] = {}
        for hook in config.webhooks:
            if hook.token_credential:
                # Read at start-up so a missing credential is an error now, not at the first visitor.
                self._tokens[hook.token_credential] = read_credential(hook.token_credential)

    def fire(self, decision: Decision, record: dict[str, object]) -> list[Future[bool]]:
        outcome = decision.outcome.value
        futures = []
        for hook in self.config.hooks:
            if outcome in hook.on:
                futures.append(self._submit(f"hook {hook.argv[0]}", run_hook, hook, decision_env(decision, record)))
        for webhook in self.config.webhooks:
            if outcome in webhook.on:
                token = self._tokens.get(webhook.token_credential or "")
                futures.append(self._submit(f"webhook {safe_url(webhook.url)}", post_webhook, webhook, record, token))
        return [f for f in futures if f is not None]

    def _submit(self, name: str, fn: Callable[..., bool], *args: object) -> Future[bool] | None:
        with self._lock:
            if self._pending >= self.config.max_concurrent * 4:
                self.failures += 1
                log.error("%s dropped: %d actions still pending (hung hooks?)", name, self._pending)
                return None
            self._pending += 1
        return self._pool.submit(self._counted, name, fn, *args)

    def _counted(self, name: str, fn: Callable[..., bool], *args: object) -> bool:
        """Run one action; its failure is counted before its future completes, so a caller
        that waited on the future reads the count it caused (a done-callback came after)."""
        ok = False
        try:
            ok = fn(*args)
        except Exception:
            log.exception("%s crashed", name)
        finally:
            with self._lock:
                self._pending -= 1
                if not ok:
                    self.failures += 1
        return ok

    def close(self, wait: bool = True) -> None:
        """Stop taking actions. Queued ones still run (each was audited before it was fired: a
        grant's hook must not vanish in a SIGHUP reload); `wait` blocks until they have."""
        self._pool.shutdown(wait=wait, cancel_futures=False)


def run_hook(hook: HookConfig, env_extra: dict[str, str]) -> bool:
    env = {**os.environ, **env_extra}
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                list(hook.argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout kills its children too
            )
        except OSError as exc:
            log.error("hook %s failed to start: %s", hook.argv[0], exc.strerror or exc)
            return False
        try:
            code = proc.wait(timeout=hook.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.error("hook %s timed out after %.1fs and was killed", hook.argv[0], hook.timeout_s)
            return False
        if code != 0:
            out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL))
            tail = out.read().decode(errors="replace").strip()
            log.error("hook %s exited %d: %s", hook.argv[0], code, tail)
            return False
    log.info("hook %s ok (%.2fs)", hook.argv[0], time.monotonic() - started)
    return True


def safe_url(url: str) -> str:
    """The URL as logs may show it: scheme, host and port only. Webhook URLs often carry
    their secret in the path (Home Assistant's webhook id), the query or user:password@."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…"


def post_webhook(hook: WebhookConfig, record: dict[str, object], token: str | None) -> bool:
    body = json.dumps(record).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "accessd"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(hook.retries + 1):
        # The scheme is checked to be http(s) when the config is loaded.
        request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout_s) as response:  # noqa: S310
                if 200 <= response.status < 300:
                    return True
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        log.warning("webhook %s attempt %d/%d failed: %s", safe_url(hook.url), attempt + 1, hook.retries + 1,
                    problem)
        if attempt < hook.retries:
            time.sleep(min(0.5 * 2**attempt, 5.0))
    log.error("webhook %s gave up after %d attempts", safe_url(hook.url), hook.retries + 1)
    return False


__all__ = ["Actions", "ConfigError", "decision_env", "post_webhook", "run_hook", "safe_url"]
