"""Property tests: random mutations of valid inputs give a clean error or a valid result, never a
traceback. ``nox -s fuzz`` runs them with many more examples (``FUZZ_EXAMPLES``)."""

from __future__ import annotations

import contextlib
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignn_core.config import load_config
from alignn_core.config.model import LossWeights
from alignn_core.errors import UserError
from alignn_core.io import read_dataset
from tests.conftest import EXAMPLES

EXAMPLES_PER_TEST = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BASE_CONFIG = json.loads((EXAMPLES / "ff" / "config.json").read_text())
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def mutated_configs(draw):
    config = json.loads(json.dumps(BASE_CONFIG))
    for _ in range(draw(st.integers(1, 4))):
        in_model = isinstance(config.get("model"), dict) and draw(st.booleans())
        target = config["model"] if in_model else config
        keys = sorted(target)
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add" or not keys:
            target[draw(st.text(max_size=12))] = draw(JSON_VALUES)
        elif action == "delete":
            target.pop(draw(st.sampled_from(keys)))
        else:
            target[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    return config


@FUZZ
@given(mutated_configs())
def test_config_mutations_never_crash(config):
    try:
        load_config(config)
    except UserError as exc:
        assert str(exc) and "Traceback" not in str(exc)


@FUZZ
@given(text=st.text(max_size=200))
def test_config_text_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(text)
    with contextlib.suppress(UserError):
        load_config(path)


RECORDS = json.loads((EXAMPLES / "ff" / "id_prop.json").read_text())[:2]


@st.composite
def mutated_records(draw):
    records = json.loads(json.dumps(RECORDS))
    record = records[draw(st.integers(0, 1))]
    where = record["atoms"] if draw(st.booleans()) else record
    key = draw(st.sampled_from(sorted(where)))
    if draw(st.booleans()):
        where[key] = draw(JSON_VALUES)
    else:
        where.pop(key)
    return records


@FUZZ
@given(mutated_records())
def test_id_prop_json_mutations_never_crash(tmp_path_factory, records):
    root = tmp_path_factory.mktemp("data")
    (root / "id_prop.json").write_text(json.dumps(records))
    try:
        read_dataset(root, weights=LossWeights(graph=1, forces=1, stress=1))
    except UserError as exc:
        assert str(exc).startswith(str(root))


POSCAR = (EXAMPLES / "props" / "POSCAR-JVASP-10.vasp").read_text()


@FUZZ
@given(st.integers(0, len(POSCAR) - 1), st.text(max_size=6))
def test_poscar_mutations_never_crash(tmp_path_factory, position, insert):
    root = tmp_path_factory.mktemp("poscar")
    (root / "s.vasp").write_text(POSCAR[:position] + insert + POSCAR[position + 1 :])
    (root / "id_prop.csv").write_text("s.vasp,1.0\n")
    with contextlib.suppress(UserError):
        read_dataset(root)
