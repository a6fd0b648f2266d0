"""The LMDB graph cache: equal to the in-memory dataset, never stale, never executable.

Everything runs on the first 10 structures of ``examples/ff`` (10 atoms each, radius_graph),
so a cache builds in about half a second. The crash test kills a real build subprocess with
SIGKILL; the pickle test plants a payload that would create a file if it were ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from alignn_lmdb import cache as cache_module
from alignn_lmdb import manifest as manifest_module
from alignn_lmdb.cache import leftovers, record_key
from alignn_lmdb.codec import decode_record, encode_record
from alignn_lmdb.manifest import make_manifest, read_manifest, records_hash
from alignn_lmdb.provider import LmdbDatasetProvider
from torch.utils.data import DataLoader

from alignn_core.config.loader import load_config
from alignn_core.data.samples import make_collate, record_targets
from alignn_core.default_plugins.memory_dataset import MemoryDatasetProvider
from alignn_core.errors import ConfigError, DataError, UserError
from alignn_core.io.id_prop import DataKeys, read_dataset
from alignn_core.plugins import get_registry
from alignn_core.structures import Structure

REPO = Path(__file__).resolve().parents[3]
FF = REPO / "examples" / "ff"
PACKAGE = REPO / "plugins" / "alignn-lmdb" / "src" / "alignn_lmdb"
N_RECORDS = 10
SMALL_MODEL = {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16,
               "embedding_features": 16}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A copy of examples/ff cut to its first structures (with the example's config)."""
    folder = tmp_path_factory.mktemp("ff10")
    entries = json.loads((FF / "id_prop.json").read_text())[:N_RECORDS]
    (folder / "id_prop.json").write_text(json.dumps(entries))
    config = json.loads((FF / "config.json").read_text())
    config.update({"epochs": 1, "batch_size": 4, "num_workers": 0, "progress": False})
    config["model"].update(SMALL_MODEL)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def setup(data_dir):
    config = load_config(data_dir / "config.json").config
    backend = get_registry().graph_backends["torch"]
    records = read_dataset(data_dir, DataKeys.from_config(config), config.model.loss_weights())
    return records, backend, config.graph_settings


def _open(setup, cache_dir, read_existing=False, settings=None, indices=None, **kwargs):
    records, backend, default_settings = setup
    provider = kwargs.pop("provider", None) or LmdbDatasetProvider()
    return provider.open(
        records, indices=indices if indices is not None else [7, 1, 3, 5, 0],
        backend=kwargs.pop("backend", backend), settings=settings or default_settings,
        split="train", cache_dir=cache_dir, read_existing=read_existing, **kwargs,
    )  # fmt: skip


def _values(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor()]
    env.close()
    return values


# -- equality with the in-memory dataset ---------------------------------------------------------
def test_round_trip_equals_the_memory_dataset(setup, tmp_path):
    records, backend, settings = setup
    indices = [7, 1, 3, 5, 0]
    cached = _open(setup, tmp_path, indices=indices, target_scale=2.0)
    memory = MemoryDatasetProvider().open(records, indices=indices, backend=backend,
                                          settings=settings, split="train",
                                          target_scale=2.0)  # fmt: skip
    assert len(cached) == len(memory) == 5
    for a, b in zip(cached, memory, strict=True):
        assert (a.id, a.index) == (b.id, b.index)
        ga, gb = backend.to_arrays(a.graph), backend.to_arrays(b.graph)
        assert list(ga) == list(gb)
        for name in ga:
            assert ga[name].dtype == gb[name].dtype and ga[name].shape == gb[name].shape, name
            assert np.array_equal(ga[name], gb[name]), name
        assert list(a.targets) == list(b.targets) == ["target", "forces", "stress"]
        for name in a.targets:
            ta, tb = a.targets[name], np.asarray(b.targets[name])
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, name
            assert np.array_equal(ta, tb), name
            assert a.targets[name].flags.writeable
    # batches collate the same way (the trainer's collate_fn)
    collate = make_collate(backend.collate, torch.float32)
    batch_a, batch_b = collate(list(cached)), collate(list(memory))
    assert torch.equal(batch_a.graph.lg_cos, batch_b.graph.lg_cos)
    assert torch.equal(batch_a.targets["forces"], batch_b.targets["forces"])
    manifest = read_manifest(tmp_path / "train")
    assert manifest["complete"] is True and manifest["count"] == 5
    assert manifest["settings_fingerprint"] == settings.fingerprint()


def test_map_grows_from_a_tiny_start(setup, tmp_path):
    provider = LmdbDatasetProvider(map_size=16 << 10)  # 4 pages; the data is ~40x more
    dataset = _open(setup, tmp_path, provider=provider)
    assert (tmp_path / "train" / "data.mdb").stat().st_size > 10 * (16 << 10)
    assert [s.id for s in dataset] == [setup[0][i].id for i in [7, 1, 3, 5, 0]]


def test_parallel_build_is_byte_identical(setup, tmp_path):
    _open(setup, tmp_path / "serial", indices=list(range(N_RECORDS)))
    _open(setup, tmp_path / "pool", indices=list(range(N_RECORDS)), workers=2)
    assert _values(tmp_path / "serial" / "train") == _values(tmp_path / "pool" / "train")


def test_worker_processes_read_their_own_environment(setup, tmp_path):
    dataset = _open(setup, tmp_path)
    dataset[0]  # open the environment in the parent first: workers must not reuse it
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=lambda s: s)
    ids = [sample.id for batch in loader for sample in batch]
    assert ids == [dataset[i].id for i in range(len(dataset))]


# -- manifest: reuse only on an exact match ------------------------------------------------------
class _CountingBackend:
    """The torch backend, counting builds, optionally claiming another version."""

    def __init__(self, backend, version=None):
        self._backend, self.builds = backend, 0
        self.name, self.version = backend.name, version or backend.version

    def build(self, structure, settings):
        self.builds += 1
        return self._backend.build(structure, settings)

    def build_many(self, structures, settings):
        self.builds += len(structures)
        return self._backend.build_many(structures, settings)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_matching_cache_is_reused_without_building(setup, tmp_path):
    _open(setup, tmp_path)
    data = tmp_path / "train" / "data.mdb"
    before = data.stat().st_ino, data.stat().st_mtime_ns
    counting = _CountingBackend(setup[1])
    ticks = []
    dataset = _open(setup, tmp_path, read_existing=True, backend=counting,
                    progress=lambda: ticks.append(1))  # fmt: skip
    assert counting.builds == 0 and len(ticks) == len(dataset) == 5
    assert (data.stat().st_ino, data.stat().st_mtime_ns) == before
    # read_existing false rebuilds (upstream's default)
    _open(setup, tmp_path, backend=counting)
    assert counting.builds == 5 and data.stat().st_ino != before[0]


def test_mismatch_names_every_differing_field(setup, tmp_path):
    records, backend, settings = setup
    _open(setup, tmp_path)
    changed = settings.model_copy(update={"cutoff": 5.0, "max_neighbors": 8})
    with pytest.raises(ConfigError) as info:
        _open(setup, tmp_path, read_existing=True, settings=changed, target_scale=2.0,
              backend=_CountingBackend(backend, version="test-other"))  # fmt: skip
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'train'} was built from different inputs (")
    expected = (
        f'backend_version: cache "{backend.version}", run "test-other"',
        "cutoff: cache 4.0, run 5.0",
        "max_neighbors: cache 12, run 8",
        "target_scale: cache null, run 2.0",
        "records_sha256: cache ",
    )
    for part in expected:
        assert part in message
    assert message.endswith("set read_existing to false to rebuild it")
    # same settings, other records / order: named as such, nothing else
    with pytest.raises(ConfigError) as info:
        _open(setup, tmp_path, read_existing=True, indices=[7, 1, 3, 5, 2])
    assert "indices_sha256" in str(info.value) and "cutoff" not in str(info.value)
    moved = [records[i] for i in range(N_RECORDS)]
    moved[3] = type(moved[3])(**{**vars(moved[3]), "target": moved[3].target + 1e-9})
    with pytest.raises(ConfigError, match=r"\(records_sha256: cache \w{12}, run \w{12}\)"):
        _open((moved, backend, settings), tmp_path, read_existing=True)


# -- crash safety ---------------------------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from pathlib import Path
from alignn_core.config.loader import load_config
from alignn_core.io.id_prop import DataKeys, read_dataset
from alignn_core.plugins import get_registry
from alignn_lmdb import cache
from alignn_lmdb.manifest import make_manifest

data, out = Path(sys.argv[1]), Path(sys.argv[2])
config = load_config(data / "config.json").config
records = read_dataset(data, DataKeys.from_config(config), config.model.loss_weights())
backend, settings = get_registry().graph_backends["torch"], config.graph_settings
indices = [7, 1, 3, 5, 0]
cache.CHUNK_RECORDS = 1  # commit every record: the kill lands with data on disk
done = []

def progress():
    done.append(1)
    if len(done) == 3:
        print("MIDWAY", flush=True)
        time.sleep(120)

manifest = make_manifest(backend=backend, settings=settings, split="train", records=records,
                         indices=indices, target_scale=None)
cache.build_cache(out / "train", manifest, records, indices, backend=backend,
                  settings=settings, progress=progress)
"""


def test_killed_build_is_never_taken_for_complete(setup, data_dir, tmp_path, capsys):
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data_dir), str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout.readline().strip() == "MIDWAY"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    path = tmp_path / "train"
    assert not path.exists()
    (left,) = leftovers(path)
    assert left.kind == "building" and left.pid == process.pid and not left.alive
    assert read_manifest(left.path)["complete"] is False
    with pytest.raises(ConfigError, match="the cache is incomplete: a build was interrupted"):
        _open(setup, tmp_path, read_existing=True)
    capsys.readouterr()
    dataset = _open(setup, tmp_path)  # read_existing false: says so, cleans up, rebuilds
    assert "an earlier build was interrupted" in capsys.readouterr().err
    assert leftovers(path) == [] and len(dataset) == 5 and dataset[4].id == setup[0][0].id


def test_incomplete_manifest_is_refused(setup, tmp_path):
    _open(setup, tmp_path)
    manifest = read_manifest(tmp_path / "train")
    (tmp_path / "train" / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ConfigError, match="incomplete"):
        _open(setup, tmp_path, read_existing=True)


def test_failed_build_leaves_the_previous_cache_and_no_debris(setup, tmp_path, monkeypatch):
    _open(setup, tmp_path)
    before = _values(tmp_path / "train")

    def disk_full(env, chunk):
        raise lmdb.DiskError("mdb_put: No space left on device")

    monkeypatch.setattr(cache_module, "_put_chunk", disk_full)
    with pytest.raises(UserError, match=r"could not write the train graph cache in .*: no space "
                                        r"left on the device, after .* MB; the partial cache was "
                                        r"removed"):  # fmt: skip
        _open(setup, tmp_path, indices=[0, 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    assert _values(tmp_path / "train") == before


def test_a_real_write_failure_is_clear(setup, tmp_path):
    """A file size limit (``ulimit -f``) makes the kernel refuse the writes, as a full disk does."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limits[1]))
    try:
        with pytest.raises(UserError) as info:
            _open(setup, tmp_path / "cache", indices=list(range(N_RECORDS)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    message = str(info.value)
    assert message.startswith(f"could not write the train graph cache in {tmp_path / 'cache'}: ")
    assert "the partial cache was removed" in message and "\n" not in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_foreign_folder_is_never_replaced(setup, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="exists and is not an LMDB cache; refusing to replace"):
        _open(setup, tmp_path)
    assert (tmp_path / "train" / "thesis.tex").read_text() == "precious"


# -- not executable -------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_record_is_refused_without_running(setup, tmp_path, run_cli):
    # the payload is live: unpickling it does create its file
    witness = tmp_path / "witness"
    pickle.loads(pickle.dumps(_Payload(witness))).close()
    assert witness.exists()

    dataset = _open(setup, tmp_path / "cache")
    marker = tmp_path / "pwned"
    env = lmdb.open(str(tmp_path / "cache" / "train"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(record_key(0), pickle.dumps(_Payload(marker)))
    env.close()
    with pytest.raises(DataError, match=r"record 0: not an alignn-lmdb record \(starts with "
                                        r"b'\\x80.*refusing to decode it"):  # fmt: skip
        dataset[0]
    assert dataset[1].id == setup[0][1].id
    dataset.close()
    code, out, err = run_cli("cache", "verify", tmp_path / "cache")
    assert code == 2 and "not an alignn-lmdb record" in out + err
    assert not marker.exists()


def test_source_never_unpickles():
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle" not in text, path


def test_codec_refuses_hostile_headers():
    record = encode_record("x", 3, {"a": np.arange(6, dtype=">i4").reshape(2, 3)},
                           {"target": np.float64(1.5)})  # fmt: skip
    decoded = decode_record(record, "r", check_crc=True)
    assert decoded.graph["a"].dtype == np.dtype("<i4") and decoded.graph["a"][1, 2] == 5
    assert decoded.targets["target"].shape == () and decoded.id == "x" and decoded.index == 3
    with pytest.raises(TypeError, match="numeric dtypes only"):
        encode_record("x", 0, {"a": np.array([object()])}, {})

    def tampered(change):
        length = int.from_bytes(record[8:12], "little")
        header = json.loads(record[12 : 12 + length])
        change(header)
        raw = json.dumps(header).encode()
        return record[:8] + len(raw).to_bytes(4, "little") + raw + record[12 + length :]

    cases = {
        "non-numeric dtype": lambda h: h["graph"][0].__setitem__(1, "|O"),
        "points outside the record": lambda h: h["graph"][0].__setitem__(3, 10**6),
        "does not match": lambda h: h["graph"][0].__setitem__(2, [100]),
        "invalid shape": lambda h: h["graph"][0].__setitem__(2, [-1]),
        "lacks the sample id": lambda h: h.pop("id"),
    }
    for reason, change in cases.items():
        with pytest.raises(DataError, match=reason):
            decode_record(tampered(change), "r")
    flipped = record[:-1] + bytes([record[-1] ^ 1])
    with pytest.raises(DataError, match="checksum mismatch"):
        decode_record(flipped, "r", check_crc=True)


# -- CLI and an end-to-end run --------------------------------------------------------------------
@pytest.fixture
def run_cli(capsys):
    from alignn_core.cli.app import main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_cache_cli_build_info_verify(data_dir, tmp_path, run_cli):
    cache = tmp_path / "cache"
    code, out, err = run_cli("cache", "build", data_dir / "config.json", "--cache-dir", cache,
                             "--workers", "2")  # fmt: skip
    assert code == 0, err
    assert [p.name for p in sorted(cache.iterdir())] == ["test", "train", "val"]
    assert f"{cache / 'train'}: 8 records" in out
    code, out, err = run_cli("cache", "info", cache)
    assert code == 0, err
    assert "records" in out and "size on disk" in out and "radius_graph" in out
    code, out, _ = run_cli("cache", "info", cache / "train", "--json")
    (described,) = json.loads(out)
    assert described["entries"] == described["manifest"]["count"] == 8
    assert described["disk_bytes"] > 0 and described["manifest"]["complete"] is True
    code, out, err = run_cli("cache", "verify", cache)
    assert code == 0, err
    assert out.count("ok: ") == 3 and f"ok: {cache / 'train'}: 8 records decode" in out
    # a record the manifest does not list
    (first,) = _values(cache / "val")
    env = lmdb.open(str(cache / "val"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(record_key(1), first)
    env.close()
    code, out, err = run_cli("cache", "verify", cache)
    assert code == 2 and "lists 1 records but the LMDB holds 2 entries" in out
    code, _, err = run_cli("cache", "info", tmp_path / "nothing")
    assert code == 2 and "no such cache folder" in err


def test_run_with_use_lmdb_builds_then_reuses_the_cache(data_dir, tmp_path, run_cli):
    """Two runs sharing ``cache_dir``: the first builds (read by a DataLoader worker process), the
    second reuses it untouched and trains the bitwise-same model. (Equality with the in-memory
    dataset is checked sample by sample above; a third run would double this test's time.)"""
    config = json.loads((data_dir / "config.json").read_text())
    # energies only: force/stress training costs seconds per batch and tests nothing cache-related
    config["model"].update({"calculate_gradient": False, "gradwise_weight": 0.0,
                            "stresswise_weight": 0.0})  # fmt: skip
    cache = tmp_path / "shared-cache"
    weights = {}
    for name, changes in {
        "build": {"num_workers": 1},
        "reuse": {"read_existing": True},
    }.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**config, "use_lmdb": True, "cache_dir": str(cache),
                                    **changes}))  # fmt: skip
        if name == "reuse":
            before = read_manifest(cache / "train")["built_at"], (cache / "train").stat().st_ino
        code, _, err = run_cli("run", path, "--root-dir", data_dir, "--output-dir",
                               tmp_path / name)  # fmt: skip
        assert code == 0, err
        weights[name] = torch.load(tmp_path / name / "best_model.pt", weights_only=True)
    assert before == (read_manifest(cache / "train")["built_at"], (cache / "train").stat().st_ino)
    assert all(torch.equal(weights["build"][k], weights["reuse"][k]) for k in weights["build"])
    assert [p.name for p in sorted(cache.iterdir())] == ["test", "train", "val"]
    assert not (tmp_path / "build" / "cache").exists()


def test_manifest_records_what_built_it(setup):
    records, backend, settings = setup
    a = make_manifest(backend=backend, settings=settings, split="val", records=records,
                      indices=[1, 2], target_scale=None)  # fmt: skip
    b = make_manifest(backend=backend, settings=settings, split="val", records=records,
                      indices=[2, 1], target_scale=None)  # fmt: skip
    assert a["records_sha256"] != b["records_sha256"] and a["indices_sha256"] != b["indices_sha256"]
    assert a["settings"] == settings.model_dump() and a["backend"] == "torch"


def _records_hash_as_documented(records, indices, target_scale) -> str:
    """records_sha256 written out from its definition: per record the id and a NUL, then each
    array as ``dtype.str`` + shape + its C-order bytes (structure, then targets by name)."""
    digest = hashlib.sha256()
    for index in indices:
        record = records[index]
        s = record.structure
        digest.update(record.id.encode() + b"\0")
        arrays = [s.numbers, s.positions, s.cell, np.asarray(s.pbc)]
        named = [(None, a) for a in arrays]
        named += list(record_targets(record, target_scale).items())
        for name, value in named:
            if name is not None:
                digest.update(name.encode() + b"\0")
            value = np.asarray(value)
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(value.tobytes())  # C order whatever the layout
    return digest.hexdigest()


@pytest.mark.parametrize("flush_bytes", [1, 3000, 4 << 20])
def test_records_hash_keeps_its_definition_for_any_memory_layout(setup, monkeypatch, flush_bytes):
    # caches built by earlier versions must keep opening: the hash is a stable format, however
    # the stream is cut into the joins it is hashed in
    monkeypatch.setattr(manifest_module._RecordDigest, "FLUSH_BYTES", flush_bytes)
    records, _, _ = setup
    assert records_hash(records, [3, 0, 1], 2.5) == _records_hash_as_documented(
        records, [3, 0, 1], 2.5
    )
    # the same values laid out non-contiguously (Fortran order, strided views) hash the same
    original = records[0]
    transposed = Structure(
        numbers=original.structure.numbers[::-1][::-1],
        positions=np.asfortranarray(original.structure.positions),
        cell=np.asfortranarray(original.structure.cell),
        pbc=original.structure.pbc,
    )
    assert not transposed.positions.flags.c_contiguous
    strided = replace(original, structure=transposed,
                      forces=np.asfortranarray(original.forces))  # fmt: skip
    assert records_hash([strided], [0], None) == records_hash([original], [0], None)
    assert records_hash([strided], [0], None) == _records_hash_as_documented([strided], [0], None)
    scalar = replace(original, target=np.asarray(original.target).reshape(()))  # a 0-d target
    assert records_hash([scalar], [0], None) == _records_hash_as_documented([scalar], [0], None)
    assert records_hash([scalar], [0], None) != records_hash([original], [0], None)
