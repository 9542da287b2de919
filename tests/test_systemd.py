from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd/accessd.service"


def test_unit_has_the_service_contract() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                 "SupplementaryGroups=video", "StateDirectory=accessd", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "ReadWritePaths="):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # Point the unit at this checkout so the executables it names exist.
    unit = tmp_path / "accessd.service"
    unit.write_text(UNIT.read_text().replace("/opt/accessd", str(REPO)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def test_the_unit_lets_the_daemon_write_every_path_it_writes() -> None:
    """ProtectSystem=strict makes everything else read-only: a console upload into a gallery left
    out of ReadWritePaths failed with a 500 after its audit record (the review's finding)."""
    import shlex

    import yaml

    from accessd.config import parse_config

    unit = _unit_settings()
    assert unit["ProtectSystem"] == ["strict"]
    writable = [Path(p) for value in unit["ReadWritePaths"] for p in value.split()]
    writable += [Path("/var/lib") / d for value in unit.get("StateDirectory", []) for d in value.split()]
    argv = shlex.split(unit["ExecStart"][0])
    config_path = Path(argv[argv.index("--config") + 1])
    config = parse_config(yaml.safe_load((REPO / "config.yaml").read_text()), config_path.parent)
    audit = Path(argv[argv.index("--audit-log") + 1]) if "--audit-log" in argv else config.audit.path
    written = {"gallery.dir (console uploads and deletions)": config.gallery.dir,
               "state_dir (embedding cache)": config.state_dir, "audit.path": audit.parent}
    if config.audit.snapshots_dir is not None:
        written["audit.snapshots_dir"] = config.audit.snapshots_dir
    not_writable = {k: str(p) for k, p in written.items() if not any(p.is_relative_to(w) for w in writable)}
    assert not_writable == {}, f"written by the daemon but read-only under the unit: {not_writable}"
    # And nothing more than that: the code, the model and config.yaml stay read-only.
    assert all(any(w == p or w.is_relative_to(p) for p in written.values()) or str(w).startswith("/var/lib/")
               for w in writable), writable
