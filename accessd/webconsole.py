"""Wiring the console to a running daemon: credential, backend, server. Off unless configured.

Flask and waitress are imported only when the console starts, so a door
without a console password pays nothing for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from accessd.config import ConfigError, read_credential
from accessd.imageio import decode_image

if TYPE_CHECKING:
    from accessd.daemon import Daemon
    from accessd.webserver import WebServer

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 32  # an API token is for scripts: long and random, never a typed password


def start_console(daemon: Daemon) -> WebServer | None:
    web = daemon.config.web
    if not web.port:
        return None
    if not web.password_credential:
        log.warning("console off: it needs a password. Put one in a file, name it in web.password_credential "
                    "and pass it with systemd LoadCredential= (a file in $CREDENTIALS_DIRECTORY)")
        return None
    try:
        password = read_credential(web.password_credential)
    except ConfigError as exc:
        log.error("console off: web.password_credential: %s", "; ".join(exc.problems))
        return None
    if len(password) < 8:
        log.error("console off: web.password_credential %r holds fewer than 8 characters", web.password_credential)
        return None
    api_token = None
    if web.api_token_credential:
        try:
            api_token = read_credential(web.api_token_credential)
        except ConfigError as exc:
            log.error("console off: web.api_token_credential: %s", "; ".join(exc.problems))
            return None
        if len(api_token) < MIN_TOKEN_CHARS:
            log.error("console off: web.api_token_credential %r holds fewer than %d characters "
                      "(make one with: openssl rand -hex 32)", web.api_token_credential, MIN_TOKEN_CHARS)
            return None
    from accessd.console import Backend, create_app
    from accessd.enrolment import Enrolment
    from accessd.webserver import WebServer

    def verify(a: bytes, b: bytes) -> dict[str, Any]:
        pipeline = daemon.pipeline
        # ImageError (undecodable, or no face) names the photo; the console answers it with 422.
        score = pipeline.compare(decode_image(a, "photo a"), decode_image(b, "photo b"))
        threshold = pipeline.thresholds.detection
        return {"score": round(score, 6), "match": score > threshold, "threshold": threshold}

    def settings() -> dict[str, Any]:
        t = daemon.pipeline.thresholds
        d = daemon.config.decision
        return {"detection_threshold": t.detection, "verification_threshold": t.verification,
                "margin": t.margin, "score_margin": t.score_margin, "template_threshold": t.template,
                "cohort_threshold": t.cohort,
                "confirm_frames": d.confirm_frames,
                "confirm_window": d.confirm_window, "lockout_denies": d.lockout_denies, "lockout_s": d.lockout_s,
                **{f"liveness.{k}": v for k, v in vars(daemon.config.liveness).items() if k != "mesh_model"}}

    def check() -> list[dict[str, Any]]:
        from accessd.enrolcheck import check as check_gallery

        pipeline, gallery = daemon.pipeline, daemon.gallery
        flags = check_gallery(gallery, pipeline.gallery_scores(gallery), pipeline.thresholds.detection)
        return [{"person": f.person, "photo": f.photo, "problem": f.problem, "score": round(f.score, 4)}
                for f in flags]

    backend = Backend(
        views=lambda: daemon.views,
        enrolment=Enrolment(lambda: daemon.config.gallery.dir, lambda: daemon.audit,
                            lambda image: daemon.pipeline.enrolment_problem(image), daemon.revoke),
        audit_path=daemon.config.audit.path,
        snapshots_dir=daemon.config.audit.snapshots_dir,
        verify=verify,
        check=check,
        settings=settings,
        face_unlock=daemon.request_door_unlock,
        enter_code=daemon.enter_code,
        rule_problems=lambda: dict(daemon.rules.problems),
    )
    try:
        server = WebServer(create_app(backend, password, web, api_token), web.host, web.port,
                           trusted_proxy=web.trusted_proxy)
    except OSError as exc:
        log.error("console off: web.port %d on %s: %s", web.port, web.host, exc.strerror or exc)
        return None
    server.start()
    return server
