"""Start-up time and peak memory of the door's commands, each run as a real process, median of N.

    python -m accessd.startup [--runs 3] [--photos 1000]

- `accessd verify obama.jpg obama3.jpg`: wall time and peak RSS.
- `accessd run` with N photos enrolled and their embeddings already cached (a
  restart): seconds until it sends `READY=1` on a real `NOTIFY_SOCKET`, and its
  peak RSS when stopped right after. The camera is an address where nothing
  listens, so no frame is ever processed: this is start-up alone.
- `accessd enroll --list` on the same gallery: wall time and peak RSS.

The first `run` embeds every photo (and is reported apart, once); the runs
after it read the cache. Peak RSS comes from wait4(2) for each child alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accessd.bench import shared_dir

REPO = Path(__file__).resolve().parent.parent


def _accessd(*args: str) -> list[str]:
    return [sys.executable, "-m", "accessd", *args]


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """(exit status, peak RSS in MB) of `proc`, from its own rusage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError(f"{proc.args!r} did not finish in {timeout:.0f} s")


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command run to its end."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, rss = _wait(proc, 600)
    if code not in (0, 1):
        raise RuntimeError(f"{argv} exited {code}")
    return time.perf_counter() - t0, rss


def until_ready(config: Path, tmp: Path) -> tuple[float, float]:
    """(seconds to READY=1, peak RSS MB) of `accessd run`, stopped with SIGTERM once ready."""
    address = str(tmp / f"notify-{time.monotonic_ns()}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(1.0)
        env = {**os.environ, "NOTIFY_SOCKET": address}
        t0 = time.perf_counter()
        proc = subprocess.Popen(_accessd("run", "--config", str(config)), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = None
        while ready is None and time.perf_counter() - t0 < 600:
            try:
                if b"READY=1" in sock.recv(4096):
                    ready = time.perf_counter() - t0
            except TimeoutError:
                if proc.poll() is not None:
                    raise RuntimeError(f"accessd run exited {proc.returncode} before READY=1") from None
        proc.send_signal(signal.SIGTERM)
        _, rss = _wait(proc, 60)
    if ready is None:
        raise TimeoutError("no READY=1 within 600 s")
    return ready, rss


def _gallery(root: Path, photos: int) -> int:
    """Up to `photos` LFW photos, a folder per person, as an operator would drop them."""
    n = 0
    for person in sorted((shared_dir() / "data/lfw").iterdir()):
        for photo in sorted(person.glob("*.jpg")):
            if n >= photos:
                return n
            (root / person.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / person.name / photo.name)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--no-liveness", action="store_true", help="with the liveness checks off (to compare)")
    p.add_argument("--model", type=Path, default=REPO / "models/accessd-fused.onnx",
                   help="the model to start with (to compare models)")
    args = p.parse_args(argv)
    samples = shared_dir() / "data/samples"
    with tempfile.TemporaryDirectory(prefix="accessd-startup-") as tmp_name:
        tmp = Path(tmp_name)
        n = _gallery(tmp / "gallery", args.photos)
        import yaml

        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({
            "source": {"uri": "rtsp://127.0.0.1:9/none"}, "gallery": {"dir": str(tmp / "gallery")},
            "state_dir": str(tmp / "state"), "audit": {"path": str(tmp / "audit.jsonl")},
            "metrics": {"port": 0}, "web": {"port": 0},
            "model": {"path": str(args.model.resolve())},
            "detector": {"models_dir": str(REPO / "models/detector")},
            "liveness": {"mesh_model": str(REPO / "models/face_mesh.onnx"),
                         **({"blink": False, "instrument": False, "motion": False} if args.no_liveness else {})},
        }))
        cold = until_ready(config, tmp)
        rows: dict[str, list[tuple[float, float]]] = {"verify": [], "run (cached)": [], "enroll --list": []}
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits each alike
            rows["verify"].append(timed(_accessd("verify", str(samples / "obama.jpg"), str(samples / "obama3.jpg"),
                                                 "--config", str(config))))
            rows["run (cached)"].append(until_ready(config, tmp))
            rows["enroll --list"].append(timed(_accessd("enroll", "--list", "--config", str(config))))
    live = "off" if args.no_liveness else "on"
    print(f"accessd start-up, median of {args.runs} runs ({n} photos enrolled; {args.model.name}; liveness {live}; "
          f"{os.cpu_count()} cores)")
    print(f"{'command':<46} {'seconds':>8} {'peak RSS MB':>12}")
    labels = {"verify": "verify obama.jpg obama3.jpg (wall)",
              "run (cached)": f"run, {n} cached photos (to READY=1)",
              "enroll --list": f"enroll --list, {n} cached photos (wall)"}
    for key, values in rows.items():
        print(f"{labels[key]:<46} {statistics.median(s for s, _ in values):>8.2f} "
              f"{statistics.median(m for _, m in values):>12.0f}")
    print(f"{f'run, {n} photos, first start (to READY=1)':<46} {cold[0]:>8.2f} {cold[1]:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
