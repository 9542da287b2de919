"""Command line: accessd run | verify | enroll | bench | check-config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import queue
import sys
import threading
from pathlib import Path

from accessd.config import Config, ConfigError, load_config

log = logging.getLogger("accessd")

EXIT_CONFIG = 2


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="config file (default: ./config.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accessd", description="Face-verification access control daemon.")
    parser.add_argument("--log-level", help="override log_level from the config")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the door loop")
    _config_arg(run)
    run.add_argument("--source", help="camera index, video file or stream URL (overrides source.uri)")
    run.add_argument("--gallery", type=Path, help="gallery folder (overrides gallery.dir)")
    run.add_argument("--audit-log", type=Path, help="audit log path (overrides audit.path)")
    run.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: no limit)")

    verify = sub.add_parser("verify", help="score two photos of faces")
    _config_arg(verify)
    verify.add_argument("image1", type=Path)
    verify.add_argument("image2", type=Path)

    enroll = sub.add_parser("enroll", help="inspect the enrolled gallery")
    _config_arg(enroll)
    what = enroll.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="list people and usable photos")
    what.add_argument("--check", action="store_true",
                      help="flag photos that look like someone else enrolled, or like none of their person's "
                           "other photos (exit 1 when any is flagged)")
    enroll.add_argument("--gallery", type=Path)

    bench = sub.add_parser("bench", help="measure frames/s and latency against gallery sizes")
    _config_arg(bench)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--sizes", default="10,100,1000")
    bench.add_argument("--frames", type=int, default=200)
    bench.add_argument("--no-cascade", action="store_true",
                       help="run every tower of a fused model on every face (to measure what the cascade saves)")
    bench.add_argument("--doors", help="instead: N doors in one daemon at --fps each (e.g. 1,2,4), each door's "
                                        "decision latency and dropped frames, against the largest of --sizes")
    bench.add_argument("--fps", type=float, default=15.0, help="--doors: frames/s of each door's camera")
    bench.add_argument("--seconds", type=float, default=20.0, help="--doors: seconds measured per run")
    bench.add_argument("--separate", action="store_true",
                       help="--doors: also run the same N streams as N one-door processes, for comparison")
    bench.add_argument("--faces", type=int, help="--doors: only the first N doors show a face (the others an "
                                                  "empty corridor); default: every door")
    bench.add_argument("--sync-dir", type=Path, help=argparse.SUPPRESS)  # --separate's children
    bench.add_argument("--detectors", action="store_true",
                       help="instead: faces found by each detector model at 640x480 and 1280x720")

    capture = sub.add_parser("capture", help="save face photos of one person from the camera (enrolment)")
    _config_arg(capture)
    capture.add_argument("--person", required=True, help="folder name under the gallery")
    capture.add_argument("--source", help="camera index, video file or stream URL (overrides source.uri)")
    capture.add_argument("--headless", action="store_true",
                         help="no window: save every Nth frame with exactly one face")
    capture.add_argument("--every", type=int, default=10, help="save every Nth frame with a face")
    capture.add_argument("--count", type=int, default=10, help="headless: stop after this many photos")
    capture.add_argument("--data-dir", type=Path, default=Path("data"),
                         help="window: where a and p save anchor/ and positive/ crops (train/'s layout)")

    check = sub.add_parser("check-config", help="validate the config and exit 0, or 2 listing every problem")
    _config_arg(check)

    code = sub.add_parser("set-code", help="set a person's second-factor code (read from stdin; only its hash "
                                           "is kept, in their person.yaml; audited)")
    _config_arg(code)
    code.add_argument("person")
    code.add_argument("--remove", action="store_true", help="remove the person's code instead")
    return parser


def _load(path: Path) -> Config:
    # A missing default config.yaml means "use the defaults"; a named missing one is an error.
    if path == Path("config.yaml") and not path.exists():
        return load_config(None)
    return load_config(path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from accessd.nativelog import separate_python_stderr

    separate_python_stderr()  # before logging binds to sys.stderr: native chatter is captured apart from our lines
    # `verify` is a one-shot command whose answer is its JSON: only what stops it on stderr
    # (a CPU fallback on a machine without CUDA is a warning for the door, not for this answer).
    default_level = "ERROR" if args.command == "verify" and config.log_level == "INFO" else config.log_level
    _setup_logging(args.log_level or default_level)
    if args.command == "check-config":
        print(f"{args.config}: ok")
        print(_describe_doors(config))
        return 0
    if args.command == "set-code":
        return _set_code(config, args)
    from accessd.detector import DetectorError
    from accessd.landmarks import MeshError
    from accessd.model import ModelError

    try:
        return _dispatch(config, args)
    except (ModelError, DetectorError, MeshError, ConfigError) as exc:  # a missing model file or credential: say which
        log.error("cannot start: %s", exc)
        return 1


def _describe_doors(config: Config) -> str:
    """What check-config says about the doors: which form the config uses and what each door watches."""
    from accessd.source import display_name

    lines = []
    if not config.doors:
        lines.append("1 door, \"door\" (the one-camera form: source, actions and decision at the top level; "
                     "for several cameras list them under doors:, each with a name and a source)")
    else:
        lines.append(f"{len(config.doors)} door(s) sharing one model and gallery (doors:):")
    for door in config.door_list():
        hooks = len(door.actions.hooks) + len(door.actions.webhooks)
        lines.append(f"  {door.name}: camera {display_name(door.source.uri)}, {hooks} hook(s)/webhook(s), "
                     f"grant after {door.decision.confirm_frames} of {door.decision.confirm_window} frames, "
                     f"lockout after {door.decision.lockout_denies} denies")
        pol = door.policy
        zone = pol.timezone or "this machine's time zone"
        code = (f"; a code as well {', '.join(pol.second_factor_hours)}" if pol.second_factor_hours else "")
        holidays = f"; {len(pol.holidays)} holiday(s)" if pol.holidays else ""
        lines.append(f"    faces {', '.join(pol.hours) or 'never'} ({zone}){code}{holidays}")
    return "\n".join(lines)


def _dispatch(config: Config, args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(config, args)
    if args.command == "verify":
        return _verify(config, args)
    if args.command == "enroll":
        return _enroll(config, args)
    if args.command == "capture":
        from accessd.capture import capture_headless, capture_window
        from accessd.daemon import install_signal_handlers

        stop = threading.Event()
        install_signal_handlers(stop)
        every = max(1, args.every)
        if args.headless:
            return capture_headless(config, args.person, args.source, every, args.count, stop)
        return capture_window(config, args.person, args.source, every, args.data_dir, stop)
    if args.command == "bench":
        from accessd.bench import run_bench, run_detector_bench

        if args.detectors:
            return run_detector_bench(config)
        if args.doors:
            from accessd.benchdoors import run_doors_bench

            return run_doors_bench(config, [int(n) for n in args.doors.split(",")],
                                   max(int(s) for s in args.sizes.split(",")), args.fps, args.seconds, args.json,
                                   args.separate, args.config, args.sync_dir, args.faces)
        return run_bench(config, [int(s) for s in args.sizes.split(",")], args.frames, args.json,
                         cascade=not args.no_cascade)
    return 1


def _run(config: Config, args: argparse.Namespace) -> int:
    from accessd.daemon import Daemon, install_signal_handlers, limit_malloc_arenas
    from accessd.detector import DetectorError
    from accessd.gallery import LoadCancelled
    from accessd.landmarks import MeshError
    from accessd.model import ModelError
    from accessd.notify import Notifier

    def with_overrides(config: Config) -> Config:
        # Command-line flags win over the file, at start-up and at every reload.
        if args.gallery:
            config = dataclasses.replace(config, gallery=dataclasses.replace(config.gallery, dir=args.gallery))
        if args.audit_log:
            config = dataclasses.replace(config, audit=dataclasses.replace(config.audit, path=args.audit_log))
        return config

    limit_malloc_arenas()
    stop, reload = threading.Event(), threading.Event()
    # SIGUSR1/SIGUSR2 switch face unlock; one sent while the gallery loads is applied once it has.
    unlock: queue.SimpleQueue[tuple[bool, str]] = queue.SimpleQueue()
    install_signal_handlers(stop, reload, lambda on, by: unlock.put((on, by)))
    notifier = Notifier()
    try:
        daemon = Daemon(with_overrides(config), args.source, lambda: with_overrides(_load(args.config)),
                        notifier, reload, stop, unlock_requests=unlock)
    except LoadCancelled:
        log.info("stopped while loading the gallery")
        notifier.close()
        return 0
    except (ModelError, DetectorError, MeshError, ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        notifier.close()
        return 1
    try:
        return daemon.run(stop, args.max_frames)
    finally:
        notifier.close()


def _verify(config: Config, args: argparse.Namespace) -> int:
    from accessd.align import largest
    from accessd.imageio import ImageError, read_image
    from accessd.pipeline import Pipeline

    pipeline = Pipeline(config)
    crops = []
    try:
        for path in (args.image1, args.image2):
            try:
                image = read_image(path)
            except ImageError as exc:
                log.error("%s", exc)
                return EXIT_CONFIG
            face = largest(pipeline.detector.detect(image))
            if face is None:
                log.error("%s: no face found", path)
                return EXIT_CONFIG
            crops.append(pipeline.crop(image, face))
        score = pipeline.model.score_pair(crops[0], crops[1])
    finally:
        pipeline.close()
    match = score > pipeline.thresholds.detection
    print(json.dumps({"score": round(score, 6), "match": match, "threshold": pipeline.thresholds.detection}))
    return 0 if match else 1


def _set_code(config: Config, args: argparse.Namespace) -> int:
    """A code from stdin (a terminal asks twice, without echo) into the person's rules, as a salted hash."""
    import getpass
    import os

    from accessd.audit import AuditLog
    from accessd.enrolment import Enrolment, EnrolmentError

    code: str | None = None
    if not args.remove:
        if sys.stdin.isatty():
            code = getpass.getpass(f"code for {args.person}: ")
            if getpass.getpass("again: ") != code:
                print("the two codes differ; nothing changed", file=sys.stderr)
                return 1
        else:
            code = sys.stdin.readline().rstrip("\n")
    audit = AuditLog.from_config(config.audit)
    try:
        Enrolment(lambda: config.gallery.dir, lambda: audit).set_code(
            args.person, code, f"cli {os.environ.get('USER') or os.getuid()}")
    except EnrolmentError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        audit.close()
    print(f"{'removed the' if args.remove else 'set a'} code for {args.person}")
    return 0


def _enroll(config: Config, args: argparse.Namespace) -> int:
    from accessd.pipeline import Pipeline

    pipeline = Pipeline(config)
    try:
        gallery = pipeline.load_gallery(args.gallery)
        if args.check:
            from accessd.enrolcheck import check

            flags = check(gallery, pipeline.gallery_scores(gallery), pipeline.thresholds.detection)
            for f in flags:
                print(f"{f.person}/{f.photo}\t{f.problem}\tscore {f.score:.3f}")
            print(f"# {len(flags)} of {len(gallery)} photos flagged", file=sys.stderr)
            return 1 if flags else 0
    finally:
        pipeline.close()
    for person, count in gallery.counts().items():
        print(f"{person}\t{count}")
    for skipped in gallery.skipped:
        print(f"# skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    return 0
