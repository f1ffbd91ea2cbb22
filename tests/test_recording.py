"""Recorders with many writers, file modes, stale temporary files, rollout checksums (issue 13
items 3 and 10; issue 11 item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from failguard import ArtifactError, Recorder, Rollout, read_rollout, read_rollouts
from failguard.logs import _host_tag, clean_stale_temp_files, write_rollout

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _record(rec: Recorder, writer: int, k: int, steps: int = 3) -> Path:
    rec.start(group="id", metadata={"writer": writer, "k": k})
    for t in range(steps):
        rec.step(embedding=np.full(4, 100 * writer + k + 0.01 * t))
    return rec.end(success=True)


def test_two_recorders_in_one_process_lose_nothing(tmp_path):
    """Before: the index was computed once per recorder and os.replace overwrote (5 of 10
    rollouts lost)."""
    a, b = Recorder(tmp_path), Recorder(tmp_path)
    paths = []
    for k in range(5):
        paths.append(_record(a, 0, k))
        paths.append(_record(b, 1, k))
    assert len(set(paths)) == 10
    got = {(r.metadata["writer"], r.metadata["k"]) for r in read_rollouts(tmp_path)}
    assert got == {(w, k) for w in (0, 1) for k in range(5)}


_WRITER = """
import sys
import numpy as np
sys.path.insert(0, {src!r})
from failguard import Recorder
rec = Recorder({d!r})
w = int(sys.argv[1])
for k in range(15):
    rec.start(metadata={{"writer": w, "k": k}})
    for t in range(3):
        rec.step(embedding=np.full(4, float(k)))
    rec.end(success=True)
"""


def test_concurrent_processes_lose_nothing(tmp_path):
    """Before: two processes lost 15 of 30 rollouts."""
    script = _WRITER.format(src=SRC, d=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=env) for w in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    rollouts = read_rollouts(tmp_path)
    got = {(r.metadata["writer"], r.metadata["k"]) for r in rollouts}
    assert len(rollouts) == 45 and got == {(w, k) for w in range(3) for k in range(15)}
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no leftovers


def test_recorder_never_overwrites_an_existing_file(tmp_path):
    rec = Recorder(tmp_path)
    first = _record(rec, 0, 0)
    before = first.read_bytes()
    rec._next_index = 0  # as if another writer had taken the name after we scanned
    second = _record(rec, 0, 1)
    assert second != first and first.read_bytes() == before


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_respect_the_umask(tmp_path, detector, umask):
    """Before: tempfile.mkstemp made every artifact 0600, whatever the umask."""
    old = os.umask(umask)
    try:
        rec = Recorder(tmp_path / "logs")
        log = _record(rec, 0, 0)
        plain = write_rollout(Rollout(np.zeros((2, 3)), success=True), tmp_path / "one")
        out = detector.save(tmp_path / "det")
        files = [log, plain, out / "config.json", out / "model.safetensors"]
        try:
            from failguard.exporters import export_onnx

            files.append(export_onnx(detector, tmp_path / "monitor.onnx"))
        except ImportError:  # pragma: no cover - onnx is a dev dependency
            pass
    finally:
        os.umask(old)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_stale_temp_files_are_cleaned_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host_tag()
    stale = tmp_path / f".rollout.safetensors.{host}.{dead.pid}.abcd1234.fgtmp"
    live = tmp_path / f".rollout.safetensors.{host}.{os.getpid()}.abcd1234.fgtmp"
    other_host = tmp_path / f".rollout.safetensors.ffffffff.{dead.pid}.abcd1234.fgtmp"
    legacy_old = tmp_path / ".rollout_000001.safetensors.x8k2j3.tmp"
    legacy_new = tmp_path / ".rollout_000002.safetensors.q9w8e7.tmp"
    for f in (stale, live, other_host, legacy_old, legacy_new):
        f.write_bytes(b"partial")
    os.utime(legacy_old, (0, 0))
    Recorder(tmp_path)  # cleans on construction
    left = {f.name for f in tmp_path.iterdir()}
    assert left == {live.name, other_host.name, legacy_new.name}
    assert clean_stale_temp_files(tmp_path) == []


def test_rollout_checksum_names_the_file(tmp_path):
    """Before: 25 of 25 flips in rollout data were read back changed without a word."""
    rng = np.random.default_rng(0)
    r = Rollout(rng.normal(size=(20, 8)), rng.normal(size=(20, 4, 2, 1)), success=True)
    path = write_rollout(r, tmp_path / "r")
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    detected = 0
    positions = rng.integers(8 + header_len, len(raw), size=25)
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        with pytest.raises(ArtifactError, match=str(path)):
            read_rollout(path)
        detected += 1
    assert detected == 25
    path.write_bytes(bytes(raw))
    assert np.array_equal(read_rollout(path).embeddings, r.embeddings)


def test_rollout_without_checksum_still_reads(tmp_path):
    """Logs written before checksums existed still load."""
    from safetensors.numpy import save

    header = {"schema": 1, "success": True, "group": None, "metadata": {}}
    payload = save(
        {"embeddings": np.ones((3, 2), dtype=np.float32)},
        metadata={"failguard": json.dumps(header)},
    )
    (tmp_path / "old.safetensors").write_bytes(payload)
    assert len(read_rollout(tmp_path / "old.safetensors")) == 3


def test_file_systems_without_hard_links_claim_names_exclusively(tmp_path, monkeypatch):
    """Where os.link is unsupported, names are claimed with O_EXCL: still no overwrite."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    a, b = Recorder(tmp_path), Recorder(tmp_path)
    paths = [_record(a, 0, 0), _record(b, 1, 0), _record(a, 0, 1)]
    assert len(set(paths)) == 3
    assert {(r.metadata["writer"], r.metadata["k"]) for r in read_rollouts(tmp_path)} == {
        (0, 0),
        (1, 0),
        (0, 1),
    }
