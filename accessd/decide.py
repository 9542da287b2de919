"""From pair scores to door decisions.

`score_faces` applies the two thresholds of the Siamese-verification recipe
per face: a (face, photo) pair matches when its score is above
`detection_threshold`; a person is verified when the fraction of their photos
that match (`ratio`) is above `verification_threshold`, and only with
`margin` over the runner-up, so a look-alike of two enrolled people is denied
rather than confused. With one photo per person the ratio is 0 or 1 and that
margin guards nothing, so a second guard compares scores: each person's
`quorum` score is that of their k-th best photo, k the fewest matches that
verify them (1 of 1, 2 of 3, 3 of 4), so a person is verified exactly when it
is above `detection_threshold`. The best person's quorum must beat every other
person's by `score_margin` in log-odds, or the face is refused as ambiguous.

`DecisionMaker` turns per-frame results into events a door can act on: a grant
needs the same person in K of the last N frames with a face, all within the
last `confirm_max_age_s`, the deciding frame among them; after a grant
there is a cooldown; denies are rate-limited so someone standing at the door
does not fire a hundred of them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accessd.config import DecisionConfig, LivenessConfig
from accessd.gallery import Gallery
from accessd.liveness import BlinkDetector
from accessd.types import Decision, Face, FaceResult, Floats, Outcome, PersonScore

Floats64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Thresholds:
    detection: float
    verification: float
    margin: float
    score_margin: float  # log-odds the best person's quorum score must beat every other person's by
    template: float | None = None  # the face must also score above this against the person's template
    # ... and the person's quorum score must lie this many spreads above the face's own cohort
    # mean (`cohort_z`); None: no cohort check.
    cohort: float | None = None


def log_odds(score: float) -> float:
    p = min(max(score, 1e-7), 1.0 - 1e-7)
    return math.log(p / (1.0 - p))


def cohort_z(quorum: float, stats: Floats) -> float:
    """How far a person's quorum score (a probability) lies above what this face scores against
    strangers: log-odds minus the mean of its k highest cohort log-odds, over their spread."""
    return (log_odds(quorum) - float(stats[0])) / max(float(stats[1]), 1e-3)


def score_faces(faces: list[Face], scores: Floats, gallery: Gallery, t: Thresholds,
                template_scores: Floats | None = None, negative_scores: Floats | None = None,
                cohort: Floats | None = None) -> list[FaceResult]:
    """One FaceResult per face from its row of pair scores against the whole gallery.

    With `t.template` set, a verified person must also pass it against their
    template (the mean of their photo embeddings, `template_scores`): one photo
    that happens to resemble a stranger moves a mean of three far less than it
    moves a vote among three (train/door_ceiling.py measures the difference).
    Only the people a decision looks at get a `PersonScore`: the best, the
    runner-up by ratio and the closest other by quorum score.

    `negative_scores` (faces x the gallery's negative examples) refuse a verified
    person when the face scores at least as high against one of the faces marked
    "not them" as against any of their own photos.

    With `t.cohort` set, `cohort` (faces x 2, the model's run against its cohort of
    training strangers) must show the person's quorum score `t.cohort` spreads above
    the face's k best stranger scores (test normalisation). A stranger who resembles
    many faces (pale, bald, glasses, the same pose) scores high against an enrolled
    look-alike and against the cohort alike; a genuine face stands out. The chance
    of a stranger standing out that far hardly grows with the people enrolled, where
    a fixed threshold's grows with each one (docs/model.md).
    """
    results = []
    n_people = len(gallery.people)
    photos = gallery.photo_counts
    if t.template is not None and n_people > 0 and template_scores is None:
        raise ValueError("thresholds name a template threshold but no template scores were given")
    if t.cohort is not None and n_people > 0 and cohort is None:
        raise ValueError("thresholds name a cohort threshold but no cohort statistics were given")
    for i, (face, row) in enumerate(zip(faces, scores, strict=True)):
        if n_people == 0:
            results.append(FaceResult(face, (), None))
            continue
        ratios = np.bincount(gallery.person_of, weights=(row > t.detection), minlength=n_people) / photos
        means = np.bincount(gallery.person_of, weights=row.astype(np.float64), minlength=n_people) / photos
        quorums = quorum_scores(row, gallery.person_of, photos, t.verification)
        order = np.lexsort((-means, -ratios))
        top = int(order[0])

        def person(j: int, ratios: Floats64 = ratios, means: Floats64 = means,
                   quorums: Floats64 = quorums) -> PersonScore:
            return PersonScore(gallery.people[j], float(ratios[j]), float(means[j]), int(photos[j]),
                               float(quorums[j]))

        best = person(top)
        verified = best.ratio > t.verification
        if verified and t.template is not None and template_scores is not None:
            verified = bool(template_scores[i, top] > t.template)
        if verified and t.cohort is not None and cohort is not None:
            verified = cohort_z(best.quorum, cohort[i]) > t.cohort
        rival = not_person = None
        if verified and negative_scores is not None and len(gallery.negative_of):
            marked = negative_scores[i][gallery.negative_of == top]
            # A tie refuses: the fused score saturates at 1.0 in float32, so a face that matches
            # its marked double as well as the person's own photos can tie with both exactly.
            if marked.size and float(marked.max()) >= float(row[gallery.person_of == top].max()):
                verified, not_person = False, best.person
        people: tuple[PersonScore, ...] = (best,)
        if n_people > 1:
            runner_up = person(int(order[1]))
            # The closest other person by quorum score, not by ratio: with one photo
            # each, a look-alike whose score fell just under the threshold has ratio 0.
            others = quorums.copy()
            others[top] = -np.inf
            closest_j = int(np.argmax(others))
            closest = runner_up if closest_j == int(order[1]) else person(closest_j)
            people = (best, runner_up) if closest is runner_up else (best, runner_up, closest)
            if verified and best.ratio - runner_up.ratio < t.margin:
                verified, rival = False, runner_up.person
            elif verified and log_odds(best.quorum) - log_odds(closest.quorum) < t.score_margin:
                verified, rival = False, closest.person
        results.append(FaceResult(face, people, best.person if verified else None, rival, not_person))
    return results


def quorum_scores(row: Floats, person_of: npt.NDArray[np.int64], photos: npt.NDArray[np.float64],
                  verification: float) -> npt.NDArray[np.float64]:
    """Per person, the score of their k-th best photo, k = the fewest matches with ratio > verification."""
    n = photos.astype(np.int64)
    k = np.minimum(np.floor(verification * n).astype(np.int64) + 1, n)
    order = np.lexsort((-row, person_of))  # by person, best score first
    starts = np.r_[0, np.cumsum(n)[:-1]]
    picked: npt.NDArray[np.float64] = row[order][starts + np.maximum(k, 1) - 1].astype(np.float64)
    return picked


_WAIT = ("", "")  # a liveness check cannot tell yet: the grant waits for a later frame


@dataclass(frozen=True)
class _Seen:
    ts: float
    person: str | None  # the verified person, or None for an unknown face
    result: FaceResult


class DecisionMaker:
    """Per-frame results in, door events out.

    Fail-closed rules (each tested): only frames with a face enter the window;
    a frame older than `confirm_max_age_s` no longer counts, so after a camera
    stall nothing seen before it can vote; `reset` empties the window (source
    reconnect, gallery or config swap); and the frame that decides must itself
    show the person granted (or the unknown face denied). The decision's score
    and snapshot are that frame's.
    """

    def __init__(self, config: DecisionConfig, source: str, liveness: LivenessConfig | None = None) -> None:
        self.config = config
        self.liveness = liveness if liveness is not None else LivenessConfig(blink=False, instrument=False,
                                                                             motion=False)
        self.source = source
        self._history: deque[_Seen] = deque(maxlen=config.confirm_window)
        self._grant_after = float("-inf")
        self._deny_after = float("-inf")
        self._denies: deque[float] = deque()
        self._locked_until = float("-inf")
        self._verified: deque[tuple[float, Face]] = deque()  # the attempt's faces, for the motion check
        self._last_ts = float("-inf")
        # The attempt: one person verified without a gap, since when, and whether they blinked.
        self._attempt: tuple[str, float] | None = None
        self._blinks = BlinkDetector()
        self._blinked = False
        self._framed: list[str] = []  # the instrument check's findings during the attempt

    def carry_over(self, old: DecisionMaker) -> None:
        """Keep what a door must not forget across a config reload: lockout, cooldowns, recent denies.

        The window itself is not kept: it was judged by the old thresholds.
        """
        self._grant_after, self._deny_after = old._grant_after, old._deny_after
        self._denies, self._locked_until, self._last_ts = deque(old._denies), old._locked_until, old._last_ts

    def reset(self) -> None:
        """Forget the frames seen so far (the source reconnected, or who is enrolled changed)."""
        self._history.clear()
        self._end_attempt()

    def _end_attempt(self) -> None:
        """The attempt's liveness evidence belongs to it alone: a new person or a gap starts afresh."""
        self._attempt = None
        self._verified.clear()
        self._blinks.reset()
        self._blinked = False
        self._framed = []

    def lockout_left(self) -> float:
        """Seconds of lockout left at the last frame seen (0 when none), for the console's status."""
        return max(0.0, self._locked_until - self._last_ts)

    def update(self, frame: int, ts: float, results: list[FaceResult]) -> Decision | None:
        """Feed one frame's face results; return a decision when one is due."""
        self._last_ts = ts
        self._forget_before(ts - self.config.confirm_max_age_s)
        picked = self._pick(ts, results)
        if picked is None:
            return None  # a frame without a face neither counts nor decides
        self._history.append(picked)
        if picked.person is not None:
            self._follow_attempt(ts, picked.person, picked.result)
        k = self.config.confirm_frames
        if picked.person is None:
            unknown = sum(1 for s in self._history if s.person is None)
            if unknown < k or not self._deny_slot(ts):
                return None
            self._history.clear()
            reason = _deny_reason(picked.result)
            if self._count_deny(ts):
                reason += f"; lockout for {self.config.lockout_s:.0f} s after {len(self._denies)} denies"
            return self._decision(Outcome.DENY, None, picked.result, frame, ts, reason)
        person = picked.person
        if sum(1 for s in self._history if s.person == person) < k or ts < self._grant_after:
            return None
        if ts < self._locked_until:
            if not self._deny_slot(ts):
                return None
            left = self._locked_until - ts
            return self._decision(Outcome.DENY, None, picked.result, frame, ts, f"locked out ({left:.0f} s left)")
        spoof = self._liveness_problem(ts)
        if spoof is _WAIT:
            return None  # not yet known: keep the window, decide on a later frame
        if spoof is not None:
            check, reason = spoof
            self.reset()
            if not self._deny_slot(ts):
                return None
            if self._count_deny(ts):
                reason += f"; lockout for {self.config.lockout_s:.0f} s after {len(self._denies)} denies"
            return self._decision(Outcome.SPOOF_SUSPECTED, None, picked.result, frame, ts, reason, check)
        self.reset()
        self._grant_after = ts + self.config.grant_cooldown_s
        return self._decision(Outcome.GRANT, person, picked.result, frame, ts, "verified")

    def _follow_attempt(self, ts: float, person: str, result: FaceResult) -> None:
        """Track the verified person's attempt: when it began, the blink signal, the keypoints."""
        if self._attempt is None or self._attempt[0] != person:
            self._end_attempt()
            self._attempt = (person, ts)
        if self.liveness.motion:
            self._verified.append((ts, result.face))
        if self.liveness.blink and result.ear is not None and self._blinks.add(ts, result.ear):
            self._blinked = True
        if self.liveness.instrument and result.instrument:
            self._framed.append(result.instrument)

    def _liveness_problem(self, ts: float) -> tuple[str, str] | None:
        """(check, reason) when the attempt looks presented; _WAIT while it cannot tell yet; None: live."""
        live = self.liveness
        if live.instrument and len(self._framed) >= live.instrument_frames:
            return "instrument", f"{self._framed[-1]}: possible photo or screen"
        started = self._attempt[1] if self._attempt is not None else ts
        if live.blink and not self._blinked:
            if ts - started < live.max_wait_s:
                return _WAIT
            return "blink", f"no blink within {live.max_wait_s:.0f} s: possible photo or video"
        if live.motion:
            if ts - started < 0.8 * live.motion_window_s:
                return _WAIT
            motion = landmark_motion([f for _, f in self._verified])
            if motion < live.motion_min:
                return "motion", f"no natural face motion ({motion:.4f}): possible photo"
        return None

    def _forget_before(self, oldest: float) -> None:
        while self._history and self._history[0].ts < oldest:
            self._history.popleft()
        while self._verified and self._verified[0][0] < self._last_ts - self.liveness.motion_window_s:
            self._verified.popleft()
        if self._attempt is not None and not any(s.person == self._attempt[0] for s in self._history):
            # The person has not been verified for confirm_max_age_s: a gap ends the attempt,
            # and the blink or motion before it says nothing about the face now.
            self._end_attempt()

    def _deny_slot(self, ts: float) -> bool:
        """Denies are rate-limited: True (and the next slot booked) when one may be emitted now."""
        if ts < self._deny_after:
            return False
        self._deny_after = ts + self.config.deny_interval_s
        return True

    def _count_deny(self, ts: float) -> bool:
        """Record a deny; True when it starts a lockout."""
        cfg = self.config
        if cfg.lockout_denies <= 0:
            return False
        self._denies.append(ts)
        while self._denies and self._denies[0] < ts - cfg.lockout_window_s:
            self._denies.popleft()
        if len(self._denies) >= cfg.lockout_denies and ts >= self._locked_until:
            self._locked_until = ts + cfg.lockout_s
            return True
        return False

    @staticmethod
    def _pick(ts: float, results: list[FaceResult]) -> _Seen | None:
        if not results:
            return None
        verified = [r for r in results if r.candidate is not None]
        if verified:
            best = max(verified, key=_ratio_score)
            return _Seen(ts, best.candidate, best)
        return _Seen(ts, None, max(results, key=lambda r: r.face.area))

    def _decision(self, outcome: Outcome, person: str | None, r: FaceResult, frame: int, ts: float,
                  reason: str, check: str | None = None) -> Decision:
        best = r.best
        extra: dict[str, object] = {}
        if outcome is not Outcome.GRANT and best is not None:
            extra["closest"] = best.person
        if check is not None:
            extra["check"] = check
        if outcome is Outcome.DENY and r.not_person is not None:
            extra["verified"] = r.not_person
            extra["refusal"] = "not_this_person"
        return Decision(
            outcome=outcome,
            person=person,
            score=best.score if best else 0.0,
            ratio=best.ratio if best else 0.0,
            frame=frame,
            ts=ts,
            source=self.source,
            reason=reason,
            extra=extra,
        )


def landmark_motion(faces: list[Face]) -> float:
    """How much the face's landmarks move relative to its own box across frames.

    A still photo shown to the camera gives the same geometry in every frame;
    a live face talking or turning does not. Moving the photo as a whole moves
    the box with it, so this measures non-rigid change, not position.
    """
    rel = [
        np.concatenate([[(x - f.x) / f.width for x, _ in f.keypoints], [(y - f.y) / f.height for _, y in f.keypoints]])
        for f in faces
        if f.keypoints and f.width > 0 and f.height > 0
    ]
    if len(rel) < 2:
        return 0.0
    stacked = np.stack(rel)
    return float(np.max(stacked.max(axis=0) - stacked.min(axis=0)))


def _ratio_score(r: FaceResult) -> tuple[float, float]:
    return (r.best.ratio, r.best.score) if r.best else (0.0, 0.0)


def _deny_reason(r: FaceResult) -> str:
    if r.best is None:
        return "gallery empty"
    if r.not_person is not None:
        return f"not this person: at least as close to a face marked not {r.not_person} as to their photos"
    if r.rival is not None:
        return f"ambiguous: close to both {r.best.person} and {r.rival}"  # a look-alike of two enrolled people
    return "no match"
