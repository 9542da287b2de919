"""Rules files survive a crash: kill -9 during a console edit leaves the old file or the new one."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from accessd.personfile import read_rules
from tests.conftest import REPO

# The console's own path (Enrolment.set_rules: audit record, then the atomic write), flipping between
# two versions of a long rules file as fast as it can.
EDITOR = """
import sys
from pathlib import Path
from accessd.audit import AuditLog
from accessd.config import AuditConfig
from accessd.enrolment import Enrolment

root = Path(sys.argv[1])
audit = AuditLog.from_config(AuditConfig(path=root.parent / "audit.jsonl", max_bytes=0))
enrolment = Enrolment(lambda: root, lambda: audit)
versions = [{"name": name, "windows": [f"{day} {h:02d}:00-{h:02d}:30" for day in ("mon", "tue", "wed", "thu", "fri")
                                       for h in range(24)]} for name in ("Old", "New")]
print("ready", flush=True)
i = 0
while True:
    enrolment.set_rules("ann", versions[i % 2], "test")
    i += 1
"""


def test_kill_9_during_console_edits_leaves_old_or_new_never_broken(tmp_path: Path) -> None:
    root = tmp_path / "verification_images"
    (root / "ann").mkdir(parents=True)
    rng = random.Random(7)
    seen = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", EDITOR, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        rules = read_rules(root / "ann" / "person.yaml")  # raises on a half-written file
        assert rules.name in ("Old", "New") and len(rules.windows.text) == 120
        seen.add(rules.name)
        # Only hidden temporary files may be left behind; the scanner and the watcher skip them.
        assert {p.name for p in (root / "ann").iterdir() if not p.name.startswith(".")} == {"person.yaml"}
    assert seen == {"Old", "New"}  # the kills landed at different points of the editing
    records = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert records and all(line.startswith("{") and line.endswith("}") for line in records[:-1])
