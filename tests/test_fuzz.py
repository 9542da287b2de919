"""Property-based tests: arbitrary input gives a result or a clear error, never a crash."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from accessd.config import ConfigError, parse_config
from accessd.imageio import ImageError, decode_image
from train.pairs import PairListError, parse_pairs

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=3), max_leaves=8)
keys = st.sampled_from(["source", "detector", "model", "gallery", "decision", "actions", "audit", "state_dir",
                        "log_level", "bogus"])
subkeys = st.sampled_from(["uri", "model", "min_confidence", "path", "providers", "dir", "detection_threshold",
                           "verification_threshold", "margin", "confirm_frames", "confirm_window", "hooks",
                           "webhooks", "argv", "on", "url", "timeout_s", "extra"])
configs = st.dictionaries(keys, st.dictionaries(subkeys, values, max_size=4) | values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(configs)
def test_config_loader_accepts_or_names_the_key(data: dict[str, object]) -> None:
    try:
        parse_config(data, Path("/srv/accessd"))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            key = problem.split(":", 1)[0]
            assert key, problem
            assert key.split(".")[0].split("[")[0] in {*data, "top level"} or key == "top level", problem


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_yaml_text_never_crashes_the_loader(text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    try:
        parse_config(data, Path("/srv"))
    except ConfigError:
        pass


pair_lines = st.lists(
    st.lists(st.text(alphabet="ab_1 \t0", min_size=0, max_size=6), min_size=1, max_size=5).map("\t".join),
    max_size=6,
).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(pair_lines)
def test_pair_parser_parses_or_names_the_line(text: str) -> None:
    try:
        pairs = parse_pairs(text, "fuzz.txt")
    except PairListError as exc:
        assert str(exc).startswith("fuzz.txt")
        return
    for pair in pairs.pairs:
        assert pair.a.endswith(".jpg") and pair.b.endswith(".jpg")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_decode_or_raise_image_error(data: bytes) -> None:
    try:
        image = decode_image(data, "fuzz.bin")
    except ImageError as exc:
        assert str(exc).startswith("fuzz.bin")
        return
    assert image.ndim == 3 and image.shape[2] == 3


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=512), st.integers(0, 3000))
def test_corrupted_real_jpeg_decodes_or_raises_image_error(noise: bytes, offset: int) -> None:
    from tests.conftest import SAMPLES

    original = (SAMPLES / "obama-240p.jpg").read_bytes()
    data = original[:offset] + noise + original[offset + len(noise):]
    try:
        decode_image(data, "broken.jpg")
    except ImageError as exc:
        assert "broken.jpg" in str(exc)
