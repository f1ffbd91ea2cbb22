"""failguard.distributed on a local Ray cluster: the same results as the in-process engine.

Marked ``ray`` (a cluster start and actor pools take tens of seconds on 2 cores); .ci/run
runs them with ``pytest -m ray``.
"""

from __future__ import annotations

import json
import os
import signal
import warnings

import numpy as np
import pytest

from conftest import make_detector
from failguard import ArtifactError, evaluate, iter_rollouts
from failguard.cli import main
from failguard.health import check_calibration
from failguard.logs import rollout_to_bytes
from failguard.scores import ActionChunkEntropy, RNDScore
from failguard.streaming import calibrate_from_results, iter_results
from failguard.synthetic import make_rollouts
from test_streaming import same_calibration

ray = pytest.importorskip("ray")
distributed = pytest.importorskip("failguard.distributed")

pytestmark = pytest.mark.ray
KW = {"length": 30, "embedding_dim": 8, "n_samples": 8, "horizon": 4, "action_dim": 2}


def rows(results):
    """Exact comparable form of results (NaN == NaN, every float to the last bit)."""
    return [json.dumps(r.to_row()) for r in results]


def _write(directory, rollouts, start=0):
    directory.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rollouts):
        (directory / f"r{start + i:06d}.safetensors").write_bytes(rollout_to_bytes(r))
    return directory


@pytest.fixture(scope="module", autouse=True)
def cluster():
    distributed.init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    cal = make_rollouts(60, seed=1, **KW) + make_rollouts(20, kind="ood_benign", seed=7, **KW)
    test = (
        make_rollouts(15, seed=2, **KW)
        + make_rollouts(5, kind="ood_benign", seed=8, **KW)
        + make_rollouts(15, kind="failure", seed=3, **KW)
        + make_rollouts(5, kind="stuck", seed=4, **KW)
    )
    return {"root": root, "cal": _write(root / "cal", cal), "test": _write(root / "test", test)}


@pytest.fixture(scope="module")
def fitted():
    return make_detector(alpha=0.1).fit(make_rollouts(8, seed=0, **KW), progress=False)


def test_ray_calibration_metrics_and_health_equal_in_process(fitted, logs):
    # One Ray pass with curves gives what every threshold style needs.
    run = distributed.score(fitted, logs["cal"], curves=True, alarms=False, batch_size=8)
    assert run.n_files == 80 and not run.skipped and len(run.workers) >= 1
    assert [r.source for r in run.results] == sorted(str(p) for p in logs["cal"].iterdir())
    cal = list(iter_rollouts(logs["cal"]))
    for params in (
        {},
        {"threshold": "band"},
        {"threshold": "per_step", "calibration": "joint"},
        {"guarantee": "pac", "alpha": 0.2},
        {"mondrian": True, "alpha": 0.25},
    ):
        local = fitted.with_params(**params).calibrate(cal)
        remote = calibrate_from_results(fitted.with_params(**params), run.results)
        same_calibration(local, remote)

    det = fitted.with_params().calibrate(cal)
    test = list(iter_rollouts(logs["test"]))
    scored = distributed.score(det, logs["test"], num_workers=2, batch_size=4)
    assert distributed.evaluate(det, scored).to_dict() == evaluate(det, test).to_dict()
    ok = distributed.FleetScores([r for r in scored.results if r.success])
    assert (
        distributed.check_health(det, ok).to_dict()
        == check_calibration(det, [r for r in test if r.success]).to_dict()
    )
    # Parquet round trip keeps every number
    path = distributed.write_parquet(scored.results, logs["root"] / "res.parquet")
    back = distributed.read_parquet(path)
    horizon = det.longest_calibration_
    assert any(r.n_steps > horizon for r in back)  # the clock matters: without_clock is used
    back_run = distributed.FleetScores(back)
    assert distributed.evaluate(det, back_run).to_dict() == evaluate(det, test).to_dict()
    # an fsspec URI reads the same files
    uri = distributed.score(det, f"file://{logs['test']}", num_workers=1, batch_size=16)
    assert rows(uri.results) == rows(scored.results)


def test_cli_engine_ray_output_equals_in_process(fitted, logs, tmp_path, capsys):
    det = fitted.with_params().calibrate(list(iter_rollouts(logs["cal"])))
    det.save(tmp_path / "det")
    outs = {}
    for engine in ("inprocess", "ray"):
        extra = ["--engine", engine] + (["--num-cpus", "2"] if engine == "ray" else [])
        d = tmp_path / engine
        assert (
            main(["-q", "calibrate", str(tmp_path / "det"), str(logs["cal"]), "-o", str(d), *extra])
            == 0
        )
        assert (
            main(["-q", "evaluate", str(d), str(logs["test"]), "--json", str(d / "m.json"), *extra])
            == 0
        )
        main(["-q", "health", str(d), str(logs["test"]), "--json", str(d / "h.json"), *extra])
        assert (
            main(["-q", "score", str(d), str(logs["test"]), "-o", str(d / "r.jsonl"), *extra]) == 0
        )
        outs[engine] = {
            name: (d / name).read_bytes()
            for name in ("config.json", "model.safetensors", "m.json", "h.json", "r.jsonl")
        }
    assert outs["inprocess"] == outs["ray"]
    metrics = json.loads(outs["ray"]["m.json"])
    assert metrics["overall"]["n_failure"] == 20


def test_corrupt_file_is_named_and_the_others_are_scored(fitted, logs, tmp_path, capsys):
    rs = make_rollouts(200, seed=11, **KW)
    d = _write(tmp_path / "many", rs)
    bad = d / "r000123.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated mid-file
    run = distributed.score(fitted, d, alarms=False, batch_size=16)
    assert len(run.results) == 199 and [p for p, _ in run.skipped] == [str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = list(iter_results(fitted, iter_rollouts(d, errors=[]), alarms=False))
    assert rows(local) == rows(run.results)
    with pytest.raises(ArtifactError, match="r000123"):
        distributed.score(fitted, d, alarms=False, batch_size=16, strict=True)
    det = tmp_path / "det"
    fitted.save(det)
    argv = ["-q", "score", str(det), str(d), "-o", str(tmp_path / "x.jsonl"), "--engine", "ray"]
    assert main(argv) == 0
    assert "r000123.safetensors" in capsys.readouterr().err
    assert main([*argv, "--strict"]) == 1
    assert "r000123" in capsys.readouterr().err


def test_killing_a_worker_mid_run_neither_loses_nor_double_counts(tmp_path):
    # A heavier RND so that the run lasts long enough to kill a worker in the middle of it.
    det = make_detector(
        alpha=0.1,
        scores=[
            RNDScore(max_epochs=1, target_hidden=(512,), predictor_hidden=(1024, 512)),
            ActionChunkEntropy(),
        ],
    ).fit(make_rollouts(8, seed=0, **KW), progress=False)
    d = _write(tmp_path / "kill", make_rollouts(600, seed=21, **KW))
    expected = list(iter_results(det, iter_rollouts(d), alarms=False))
    killed: list[int] = []

    def kill_once(n_done, pid):
        if n_done == 60 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = distributed.score(det, d, num_workers=1, alarms=False, batch_size=4, callback=kill_once)
    assert killed, "the run ended before a worker could be killed"
    assert rows(run.results) == rows(expected)
    assert sum(run.workers.values()) == 600  # every file once
    assert len(run.workers) >= 2  # the killed worker was replaced (a new process id)
    np.testing.assert_array_equal(
        [r.peak_windowed["rnd"] for r in run.results], [e.peak_windowed["rnd"] for e in expected]
    )
