from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accessd.config import DecisionConfig, LivenessConfig
from accessd.decide import DecisionMaker, Thresholds, cohort_z, quorum_scores, score_faces
from accessd.gallery import Gallery, Photo
from accessd.types import Face, FaceResult, Outcome, PersonScore

FACE = Face(10, 10, 100, 100, 0.9)
T = Thresholds(detection=0.5, verification=0.5, margin=0.2, score_margin=2.0)
# The ratio rule alone, for the tests of it: the score guard has its own tests below.
T_RATIO = Thresholds(detection=0.5, verification=0.5, margin=0.2, score_margin=0.0)


def gallery(people: list[str]) -> Gallery:
    names = sorted(set(people))
    return Gallery(
        embeddings=np.zeros((len(people), 4), np.float32),
        person_of=np.asarray([names.index(p) for p in people]),
        people=tuple(names),
        photos=tuple(Photo(p, Path(f"{p}{i}.jpg"), str(i)) for i, p in enumerate(people)),
    )


def test_ratio_is_fraction_of_photos_above_detection_threshold() -> None:
    g = gallery(["ann", "ann", "ann", "ann", "bob", "bob"])
    scores = np.array([[0.9, 0.8, 0.7, 0.2, 0.1, 0.6]], np.float32)
    (r,) = score_faces([FACE], scores, g, T_RATIO)
    assert r.best is not None and r.best.person == "ann" and r.best.ratio == 0.75
    assert r.people[1].ratio == 0.5
    # 0.75 beats bob's 0.5 by only 0.25 - still above margin 0.2: verified.
    assert r.candidate == "ann"


def test_ratio_must_be_above_verification_threshold() -> None:
    g = gallery(["ann", "ann", "ann", "ann"])
    scores = np.array([[0.9, 0.8, 0.1, 0.2]], np.float32)  # ratio 0.5, not above 0.5
    (r,) = score_faces([FACE], scores, g, T)
    assert r.candidate is None


def test_look_alikes_without_margin_are_denied() -> None:
    g = gallery(["ann", "ann", "bob", "bob"])
    scores = np.array([[0.9, 0.8, 0.9, 0.7]], np.float32)  # both ratio 1.0
    (r,) = score_faces([FACE], scores, g, T)
    assert r.candidate is None


def test_one_photo_each_two_matches_is_ambiguous_not_the_higher_one() -> None:
    g = gallery(["ann", "bob", "cy"])
    (r,) = score_faces([FACE], np.array([[0.97, 0.93, 0.1]], np.float32), g, T)
    assert r.candidate is None and r.rival == "bob"


def test_one_photo_each_a_near_miss_of_another_person_is_ambiguous() -> None:
    """bob's photo just under the threshold has ratio 0: only the score guard sees him."""
    g = gallery(["ann", "bob", "cy"])
    t = Thresholds(detection=0.7, verification=0.5, margin=0.2, score_margin=2.0)
    (r,) = score_faces([FACE], np.array([[0.9, 0.65, 0.1]], np.float32), g, t)  # log-odds 2.2 vs 0.6
    assert r.candidate is None and r.rival == "bob"
    (clear,) = score_faces([FACE], np.array([[0.9, 0.3, 0.1]], np.float32), g, t)  # 2.2 vs -0.8
    assert clear.candidate == "ann" and clear.rival is None


def test_ambiguous_face_is_denied_with_both_names_in_the_reason() -> None:
    g = gallery(["ann", "bob"])
    dm = DecisionMaker(DecisionConfig(), "cam")
    decisions = []
    for i in range(5):
        (r,) = score_faces([FACE], np.array([[0.97, 0.95]], np.float32), g, T)
        decisions.append(dm.update(i, i / 10, [r]))
    denied = [d for d in decisions if d is not None]
    assert [d.outcome for d in denied] == [Outcome.DENY]
    assert denied[0].reason == "ambiguous: close to both ann and bob"


def test_quorum_is_the_score_of_the_kth_best_photo() -> None:
    """With verification 0.5: 1 of 1, 2 of 3, 3 of 4 photos must match; quorum = that photo's score."""
    g = gallery(["ann", "ann", "ann", "bob", "cy", "cy", "cy", "cy"])
    row = np.array([0.2, 0.9, 0.6, 0.4, 0.9, 0.8, 0.7, 0.1], np.float32)
    quorums = quorum_scores(row, g.person_of, g.photo_counts, T_RATIO.verification)
    assert dict(zip(g.people, np.round(quorums, 3).tolist(), strict=True)) == {"ann": 0.6, "bob": 0.4, "cy": 0.7}
    (r,) = score_faces([FACE], row[None], g, T_RATIO)
    assert [(p.person, round(p.quorum, 3)) for p in r.people] == [("cy", 0.7), ("ann", 0.6)]  # best, runner-up


def test_only_the_people_a_decision_looks_at_are_reported() -> None:
    """Best, runner-up by ratio, closest by quorum: a record per enrolled person per face was the cost."""
    g = gallery(["ann", "ann", "bob", "bob", "cy", "dan", "eve"])
    # bob: ratio 0.5, quorum 0.3 (his 2nd best); eve: ratio 0, quorum 0.45; cy and dan: neither.
    row = np.array([[0.9, 0.8, 0.55, 0.3, 0.2, 0.1, 0.45]], np.float32)
    t = Thresholds(detection=0.5, verification=0.5, margin=0.2, score_margin=0.0)
    (r,) = score_faces([FACE], row, g, t)
    assert [p.person for p in r.people] == ["ann", "bob", "eve"]


def test_empty_gallery_verifies_no_one() -> None:
    (r,) = score_faces([FACE], np.zeros((1, 0), np.float32), Gallery.empty(4), T)
    assert r.candidate is None and r.best is None


def result(person: str | None, ratio: float = 1.0) -> list[FaceResult]:
    ps = (PersonScore(person or "ann", ratio if person else 0.1, 0.9 if person else 0.2, 4),)
    return [FaceResult(FACE, ps, person)]


def test_grant_needs_k_of_n_frames_then_cools_down() -> None:
    cfg = DecisionConfig(confirm_frames=3, confirm_window=5, grant_cooldown_s=5.0)
    dm = DecisionMaker(cfg, "test")
    outcomes = []
    for i in range(12):  # 30 fps: 12 frames is 0.4 s, inside the cooldown
        d = dm.update(i, i / 30, result("ann"))
        outcomes.append(d)
    grants = [d for d in outcomes if d is not None]
    assert len(grants) == 1 and grants[0].outcome is Outcome.GRANT and grants[0].person == "ann"
    assert grants[0].frame == 2  # the third agreeing frame
    # Still at the door when the cooldown ends: the frames seen seconds ago do not vote;
    # the next grant needs K fresh frames.
    assert dm.update(200, 5.5, result("ann")) is None
    assert dm.update(201, 5.6, result("ann")) is None
    again = dm.update(202, 5.7, result("ann"))
    assert again is not None and again.outcome is Outcome.GRANT and again.frame == 202


def _granted_then_stalled() -> DecisionMaker:
    """ann stands at the door for a second (one grant, then the window refills); the camera then stalls."""
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5, grant_cooldown_s=5.0), "test")
    grants = [d for i in range(30) if (d := dm.update(i, i / 30, result("ann"))) is not None]
    assert len(grants) == 1
    return dm


def test_an_empty_frame_after_a_stall_grants_no_one() -> None:
    """The review's finding: the first frame after a stall longer than the cooldown granted ann again."""
    dm = _granted_then_stalled()
    assert dm.update(30, 60.0, []) is None


def test_a_stranger_after_a_stall_is_not_granted_as_the_person_seen_before() -> None:
    dm = _granted_then_stalled()
    assert dm.update(30, 60.0, result(None)) is None
    # Nor with the stall shorter than the window's age bound but the cooldown over: the
    # frame that decides must itself show ann.
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5, grant_cooldown_s=0.5), "test")
    for i in range(3):
        dm.update(i, i / 30, result("ann"))
    for i in range(3, 6):
        dm.update(i, 0.3 + i / 30, result("ann"))  # refills during the cooldown
    d = dm.update(6, 1.0, result(None))
    assert d is None or d.outcome is Outcome.DENY


def test_frames_older_than_the_age_bound_do_not_vote() -> None:
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5, confirm_max_age_s=2.0), "test")
    assert dm.update(0, 0.0, result("ann")) is None
    assert dm.update(1, 0.1, result("ann")) is None
    assert dm.update(2, 2.5, result("ann")) is None  # the first two are 2.4 s old
    assert dm.update(3, 2.6, result("ann")) is None
    d = dm.update(4, 2.7, result("ann"))
    assert d is not None and d.outcome is Outcome.GRANT


def test_the_window_counts_frames_with_a_face_only() -> None:
    """README: K of the last N frames *with a face*; faceless frames pushed faces out before."""
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5), "test")
    seq = [result("ann"), [], [], [], [], result("ann"), result("ann")]
    decisions = [dm.update(i, i / 30, r) for i, r in enumerate(seq)]
    assert decisions[-1] is not None and decisions[-1].outcome is Outcome.GRANT


def test_reset_forgets_the_window() -> None:
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5), "test")
    dm.update(0, 0.0, result("ann"))
    dm.update(1, 0.1, result("ann"))
    dm.reset()  # the gallery changed (ann revoked, say), or the camera reconnected
    assert dm.update(2, 0.2, result("ann")) is None


def test_a_reload_keeps_an_active_lockout() -> None:
    cfg = DecisionConfig(confirm_frames=1, confirm_window=1, deny_interval_s=1.0, lockout_denies=2,
                         lockout_window_s=60.0, lockout_s=100.0)
    old = DecisionMaker(cfg, "test")
    for i in range(2):
        old.update(i, float(i * 2), result(None))
    assert old.lockout_left() > 90
    new = DecisionMaker(cfg, "test")
    new.carry_over(old)
    d = new.update(10, 10.0, result("ann"))
    assert d is not None and d.outcome is Outcome.DENY and d.reason.startswith("locked out")


def test_interleaved_frames_without_agreement_do_not_grant() -> None:
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=3, deny_interval_s=60.0), "test")
    seq = [result("ann"), result(None), result("ann"), result(None), result("ann")]
    assert all(dm.update(i, i / 30, r) is None for i, r in enumerate(seq))


def test_denies_are_rate_limited() -> None:
    cfg = DecisionConfig(confirm_frames=2, confirm_window=3, deny_interval_s=10.0)
    dm = DecisionMaker(cfg, "test")
    decisions = [dm.update(i, i / 10, result(None)) for i in range(100)]  # 10 s at 10 fps
    denies = [d for d in decisions if d is not None]
    assert len(denies) == 1 and denies[0].outcome is Outcome.DENY and denies[0].person is None
    assert dm.update(101, 10.2, result(None)) is not None  # the interval has passed


def test_no_faces_no_decision() -> None:
    dm = DecisionMaker(DecisionConfig(), "test")
    assert all(dm.update(i, i, []) is None for i in range(50))


def test_repeated_denies_lock_out_grants_and_say_so() -> None:
    cfg = DecisionConfig(confirm_frames=1, confirm_window=1, deny_interval_s=1.0, lockout_denies=3,
                         lockout_window_s=60.0, lockout_s=100.0)
    dm = DecisionMaker(cfg, "test")
    denies = [dm.update(i, float(i * 2), result(None)) for i in range(3)]
    assert all(d is not None and d.outcome is Outcome.DENY for d in denies)
    assert denies[-1] is not None and "lockout for 100 s after 3 denies" in denies[-1].reason
    locked = dm.update(10, 10.0, result("ann"))
    assert locked is not None and locked.outcome is Outcome.DENY and locked.reason.startswith("locked out")
    assert dm.update(11, 10.5, result("ann")) is None  # rate-limited like any deny
    after = dm.update(12, 105.0, result("ann"))
    assert after is not None and after.outcome is Outcome.GRANT


def test_lockout_can_be_disabled_and_old_denies_expire() -> None:
    dm = DecisionMaker(DecisionConfig(confirm_frames=1, confirm_window=1, deny_interval_s=1.0, lockout_denies=0), "t")
    for i in range(10):
        dm.update(i, float(i * 2), result(None))
    assert dm.update(100, 30.0, result("ann")).outcome is Outcome.GRANT  # type: ignore[union-attr]
    spaced = DecisionMaker(DecisionConfig(confirm_frames=1, confirm_window=1, deny_interval_s=1.0,
                                          lockout_denies=3, lockout_window_s=10.0), "t")
    for i in range(5):
        spaced.update(i, float(i * 20), result(None))  # one deny every 20 s: never 3 within 10 s
    assert spaced.update(100, 200.0, result("ann")).outcome is Outcome.GRANT  # type: ignore[union-attr]


def _face_with_mouth_at(y: float) -> Face:
    return Face(10, 10, 100, 100, 0.9, ((30, 40), (70, 40), (50, 60), (50, y), (10, 50), (90, 50)))


def test_liveness_needs_a_second_of_natural_motion() -> None:
    cfg = DecisionConfig(deny_interval_s=0.5)
    motion_only = LivenessConfig(blink=False, instrument=False, motion=True, motion_window_s=1.0, motion_min=0.02)
    still = DecisionMaker(cfg, "t", motion_only)
    live = DecisionMaker(cfg, "t", motion_only)
    still_out, live_out = [], []
    for i in range(40):  # 30 fps
        ps = (PersonScore("ann", 1.0, 0.9, 4),)
        still_out.append(still.update(i, i / 30, [FaceResult(_face_with_mouth_at(80), ps, "ann")]))
        talking = _face_with_mouth_at(80 + 6 * ((i // 5) % 2))  # the mouth opens and closes
        live_out.append(live.update(i, i / 30, [FaceResult(talking, ps, "ann")]))
    still_d = [d for d in still_out if d is not None]
    live_d = [d for d in live_out if d is not None]
    assert still_d and all(d.outcome is Outcome.SPOOF_SUSPECTED for d in still_d)
    assert "no natural face motion" in still_d[0].reason and still_d[0].extra["check"] == "motion"
    assert live_d and live_d[0].outcome is Outcome.GRANT
    assert live_d[0].ts >= 0.8  # waited for the window, not just K frames


def test_template_check_refuses_a_vote_won_by_lucky_photos() -> None:
    """Two of ann's three photos match, but the face is far from her template: refused."""
    g = gallery(["ann", "ann", "ann", "bob"])
    scores = np.array([[0.9, 0.8, 0.05, 0.1]], np.float32)
    t = Thresholds(detection=0.5, verification=0.34, margin=0.2, score_margin=0.5, template=0.7)
    (far,) = score_faces([FACE], scores, g, t, np.array([[0.4, 0.1]], np.float32))
    assert far.candidate is None
    (near,) = score_faces([FACE], scores, g, t, np.array([[0.8, 0.1]], np.float32))
    assert near.candidate == "ann"
    # Without a template threshold the vote alone decides, as before.
    (off,) = score_faces([FACE], scores, g, Thresholds(0.5, 0.34, 0.2, 0.5))
    assert off.candidate == "ann"


def test_cohort_check_refuses_a_face_that_scores_as_high_against_strangers() -> None:
    """Two of ann's three photos match at 0.9 and 0.8 (log-odds 2.2 and 1.39; the quorum is the
    second). A face whose best strangers reach that too is refused; one that stands out is not."""
    g = gallery(["ann", "ann", "ann", "bob"])
    scores = np.array([[0.9, 0.8, 0.05, 0.1]], np.float32)
    t = Thresholds(detection=0.5, verification=0.34, margin=0.2, score_margin=0.5, cohort=4.0)
    # Strangers' top scores average log-odds -1 with a spread of 0.5: the quorum lies 4.8 spreads above.
    (stands_out,) = score_faces([FACE], scores, g, t, cohort=np.array([[-1.0, 0.5]], np.float32))
    assert stands_out.candidate == "ann" and cohort_z(0.8, np.array([-1.0, 0.5])) == pytest.approx(4.77, abs=0.01)
    # The same scores from a face that resembles every stranger (their best average 0.2): 2.4 spreads.
    (hub,) = score_faces([FACE], scores, g, t, cohort=np.array([[0.2, 0.5]], np.float32))
    assert hub.candidate is None and hub.best is not None and hub.best.person == "ann"
    # No cohort threshold (a model without a cohort): the vote decides.
    (off,) = score_faces([FACE], scores, g, Thresholds(0.5, 0.34, 0.2, 0.5), cohort=np.array([[0.2, 0.5]]))
    assert off.candidate == "ann"
    # A threshold with no statistics to apply it to is a caller's mistake, never a silent pass.
    with pytest.raises(ValueError, match="cohort"):
        score_faces([FACE], scores, g, t)


def test_a_face_closer_to_one_marked_not_them_than_to_their_photos_is_refused() -> None:
    import dataclasses

    g = dataclasses.replace(gallery(["ann", "ann", "ann", "bob"]), negatives=np.zeros((2, 4), np.float32),
                            negative_of=np.array([0, 1]))
    scores = np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)
    (marked,) = score_faces([FACE], scores, g, T_RATIO, None, np.array([[0.95, 0.2]], np.float32))
    assert marked.candidate is None and marked.not_person == "ann" and marked.best is not None
    (own,) = score_faces([FACE], scores, g, T_RATIO, None, np.array([[0.85, 0.99]], np.float32))
    assert own.candidate == "ann" and own.not_person is None  # her best photo (0.9) beats the marked face
    # Saturated scores tie at 1.0 in float32: the marked face wins the tie (deny-leaning).
    saturated = np.array([[1.0, 1.0, 0.7, 0.1]], np.float32)
    (tie,) = score_faces([FACE], saturated, g, T_RATIO, None, np.array([[1.0, 0.2]], np.float32))
    assert tie.candidate is None and tie.not_person == "ann"
    # bob's marked face says nothing about ann.
    (other,) = score_faces([FACE], scores, g, T_RATIO, None, np.array([[0.1, 0.99]], np.float32))
    assert other.candidate == "ann"
    dm = DecisionMaker(DecisionConfig(confirm_frames=1, confirm_window=1), "test")
    d = dm.update(0, 0.0, [marked])
    assert d is not None and d.outcome is Outcome.DENY and d.person is None
    assert d.extra["refusal"] == "not_this_person" and d.extra["verified"] == "ann"
    assert d.reason.startswith("not this person: at least as close to a face marked not ann")


def test_template_is_each_persons_mean_embedding() -> None:
    g = Gallery(embeddings=np.array([[1, 0], [3, 0], [0, 5]], np.float32), person_of=np.array([0, 0, 1]),
                people=("ann", "bob"), photos=tuple(Photo(p, Path(f"{i}.jpg"), str(i))
                                                     for i, p in enumerate(["ann", "ann", "bob"])))
    np.testing.assert_allclose(g.templates, [[2, 0], [0, 5]])
    assert Gallery.empty(4).templates.shape == (0, 4)


BLINK_ONLY = LivenessConfig(blink=True, instrument=False, motion=False, max_wait_s=3.0)
OPEN_EAR, CLOSED_EAR = 0.30, 0.18


def seen(ear: float | None = OPEN_EAR, instrument: str | None = None) -> list[FaceResult]:
    ps = (PersonScore("ann", 1.0, 0.9, 4),)
    return [FaceResult(FACE, ps, "ann", ear=ear, instrument=instrument)]


def run(dm: DecisionMaker, ears: list[float | None], fps: float = 15.0, t0: float = 0.0) -> list[tuple[float, object]]:
    out = []
    for i, e in enumerate(ears):
        d = dm.update(i, t0 + i / fps, seen(e))
        if d is not None:
            out.append((round(t0 + i / fps, 3), d))
    return out


def test_a_grant_waits_for_a_blink_and_comes_with_it() -> None:
    dm = DecisionMaker(DecisionConfig(), "t", BLINK_ONLY)
    ears: list[float | None] = [OPEN_EAR] * 20 + [CLOSED_EAR] * 3 + [OPEN_EAR] * 5  # a 200 ms blink at 1.33 s
    decisions = run(dm, ears)
    assert len(decisions) == 1
    ts, d = decisions[0]
    assert d.outcome is Outcome.GRANT and 1.5 <= ts <= 1.6  # type: ignore[attr-defined]


def test_no_blink_within_the_wait_is_a_suspected_spoof_counted_towards_the_lockout() -> None:
    cfg = DecisionConfig(deny_interval_s=0.0, lockout_denies=2, lockout_window_s=60.0, lockout_s=100.0)
    dm = DecisionMaker(cfg, "t", BLINK_ONLY)
    decisions = run(dm, [OPEN_EAR] * 100)  # a photo: eyes open, never closing, 6.7 s
    outcomes = [d.outcome for _, d in decisions]  # type: ignore[attr-defined]
    assert outcomes[:2] == [Outcome.SPOOF_SUSPECTED] * 2 and set(outcomes[2:]) == {Outcome.DENY}
    assert all(d.reason.startswith("locked out") for _, d in decisions[2:])  # type: ignore[attr-defined]
    first_ts, first = decisions[0]
    assert first_ts == 3.0 and first.extra == {"closest": "ann", "check": "blink"}  # type: ignore[attr-defined]
    assert "no blink within 3 s" in first.reason and first.person is None  # type: ignore[attr-defined]
    assert "lockout for 100 s after 2 denies" in decisions[1][1].reason  # type: ignore[attr-defined]
    assert dm.lockout_left() > 90


def test_a_glance_down_is_not_a_blink() -> None:
    """The shared clip's downward glance: the lids drop as far as in a blink but stay low ~0.9 s."""
    dm = DecisionMaker(DecisionConfig(), "t", BLINK_ONLY)
    ears: list[float | None] = [OPEN_EAR] * 15 + [CLOSED_EAR] * 3 + [0.24] * 11 + [OPEN_EAR] * 40
    decisions = run(dm, ears)
    assert [d.outcome for _, d in decisions] == [Outcome.SPOOF_SUSPECTED]  # type: ignore[attr-defined]


def test_a_blink_before_a_reconnect_does_not_count_after_it() -> None:
    blink: list[float | None] = [OPEN_EAR] * 10 + [CLOSED_EAR] * 2 + [OPEN_EAR] * 3
    kept, reset = (DecisionMaker(DecisionConfig(grant_cooldown_s=5.0, confirm_max_age_s=10.0), "t", BLINK_ONLY)
                   for _ in range(2))
    for dm in (kept, reset):
        assert [d.outcome for _, d in run(dm, blink)] == [Outcome.GRANT]  # type: ignore[attr-defined]
        assert run(dm, blink, t0=2.0) == []  # blinks again during the cooldown
    reset.reset()  # the camera reconnected
    assert [d.outcome for _, d in run(kept, [OPEN_EAR] * 5, t0=6.0)] == [Outcome.GRANT]  # type: ignore[attr-defined]
    assert run(reset, [OPEN_EAR] * 20, t0=6.0) == []  # waits for a new blink


def test_a_face_inside_a_picture_frame_is_a_suspected_spoof() -> None:
    live = LivenessConfig(blink=False, instrument=True, motion=False, instrument_frames=2)
    dm = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5), "t", live)
    framed = "instrument: straight edges around the face on 4 sides (bottom, left, right, top)"
    outs = [dm.update(i, i / 15, seen(instrument=framed if i < 2 else None)) for i in range(6)]
    d = next(o for o in outs if o is not None)
    assert d.outcome is Outcome.SPOOF_SUSPECTED and d.extra["check"] == "instrument" and framed in d.reason
    clean = DecisionMaker(DecisionConfig(confirm_frames=3, confirm_window=5), "t", live)
    outs = [clean.update(i, i / 15, seen(instrument=framed if i == 1 else None)) for i in range(6)]
    assert next(o for o in outs if o is not None).outcome is Outcome.GRANT  # one frame is not enough
