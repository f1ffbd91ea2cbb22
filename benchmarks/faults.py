"""Fault probe: what failguard does with extreme inputs, faults in integrations, concurrent
writers and threads, and corrupted artifacts (the cases of issue 13).

Each case runs the library as a user would and prints one outcome line. It uses only the
public API that existed before the fixes, so the same script runs against an older checkout
(``PYTHONPATH=/path/to/old/src python -m benchmarks.faults``) for a before/after table.

Usage::

    python -m benchmarks.faults [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

import failguard as fg
from failguard import ActionChunkEntropy, FailureDetector, RNDScore
from failguard.synthetic import make_rollouts

torch.set_num_threads(1)
warnings.simplefilter("ignore")
CASES: list[tuple[str, Callable[[], str]]] = []
TMP = Path(tempfile.mkdtemp(prefix="fg_faults_"))


def case(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def deco(fn: Callable[[], str]) -> Callable[[], str]:
        CASES.append((name, fn))
        return fn

    return deco


def err_name(e: BaseException) -> str:
    fg_err = isinstance(e, fg.FailguardError)
    return f"{type(e).__name__}{'' if fg_err else ' (not a FailguardError)'}"


KW = {"length": 40, "n_discrete": 5}
DET = FailureDetector([RNDScore(max_epochs=3), ActionChunkEntropy()], alpha=0.1)
DET.fit(make_rollouts(8, seed=0, **KW), progress=False).calibrate(make_rollouts(40, seed=1, **KW))
FAILS = make_rollouts(10, kind="failure", seed=4, **KW)


def _exported(name: str) -> tuple[Path, Any]:
    """DET exported to TMP/name, and the OnnxMonitor class (onnx is imported by ONNX cases
    only, so the other cases run without it)."""
    from failguard.exporters import export_onnx
    from failguard.runtime import OnnxMonitor

    return export_onnx(DET, TMP / name), OnnxMonitor


def _failing() -> tuple[Any, int]:
    for r in FAILS:
        tr = DET.score(r)
        if tr.first_alarm is not None and tr.first_alarm > 2:
            return r, tr.first_alarm
    raise RuntimeError("no late-alarming failure")


def _extreme(value: float, engine: str) -> str:
    r, first = _failing()
    clean = sum(DET.score(r).alarm)
    if engine == "onnx":
        path, OnnxMonitor = _exported(f"m{value}.onnx")
        mon: Any = OnnxMonitor(path)
    else:
        mon = DET.monitor()
    alarms, refused, other = 0, 0, ""
    for t in range(len(r)):
        e = np.array(r.embeddings[t])
        if t == first - 1:
            e[:] = value
        try:
            v = mon.step(embedding=e, action_samples=r.action_samples[t])
            alarms += bool(v.alarm)
            if t == first - 1:
                other = f"step accepted: alarm={v.alarm}, fused={v.fused_ratio:.3g}"
        except Exception as ex:
            refused += 1
            other = f"step refused ({err_name(ex)})"
            mon_t = getattr(mon, "t", None)
            other += f", state kept={mon_t == t}"
            v2 = mon.step(embedding=r.embeddings[t], action_samples=r.action_samples[t])
            alarms += bool(v2.alarm)
    return f"{other}; alarms {alarms}/{clean} of the clean run"


for _v in (1e20, 3e38):
    for _eng in ("torch", "onnx"):
        case(f"{_eng} Monitor.step, one embedding of {_v:g} before the first alarm")(
            (lambda v, eng: lambda: _extreme(v, eng))(_v, _eng)
        )


@case("batch FailureDetector.score of a rollout with one 3e38 step")
def _batch() -> str:
    r, first = _failing()
    emb = np.array(r.embeddings)
    emb[first - 1] = 3e38
    try:
        tr = DET.score(r.replace(embeddings=emb))
    except Exception as ex:
        return f"refused ({err_name(ex)})"
    return f"scored: {int(tr.alarm.sum())} alarms (clean {int(DET.score(r).alarm.sum())})"


# ---------------------------------------------------------------- integrations
def _lerobot(kind: str) -> str:
    from failguard.integrations import LeRobotPolicyWrapper, ToyChunkPolicy
    from failguard.integrations.lerobot import repeat_batch

    logs = TMP / f"toy_{kind}"
    policy = ToyChunkPolicy(obs_dim=4, n_action_steps=4)
    rec = LeRobotPolicyWrapper(policy, embed_module="encoder", n_samples=8, record_dir=logs)

    def obs(t: int, s: float) -> dict:
        x = torch.tensor([[np.sin(0.2 * t), np.cos(0.2 * t), 0.5 * np.sin(0.1 * t), 0.0]])
        return {"observation.state": (s * x).float()}

    torch.manual_seed(0)
    for ep in range(30):
        rec.reset()
        for t in range(40):
            rec.select_action(obs(t + ep, 0.3))
        rec.end_episode(success=True)
    rs = fg.read_rollouts(logs)
    det = FailureDetector([RNDScore(max_epochs=3), ActionChunkEntropy()], windows=3, alpha=0.1)
    det.fit(rs[:8], progress=False).calibrate(rs[8:])
    calls: list[int] = []

    def embed(batch: dict) -> Any:
        calls.append(1)
        e = policy.encoder(batch["observation.state"])[0].detach().numpy()
        if len(calls) == 3 and kind == "embed raises":
            raise RuntimeError("driver")
        if len(calls) == 3 and kind == "NaN embedding":
            return np.full_like(e, np.nan)
        return e

    def sample(pol: Any, batch: dict, n: int) -> Any:
        out = pol.predict_action_chunk(repeat_batch(batch, n))
        if len(calls) == 3 and kind == "NaN chunks":
            out = out.clone()
            out[0, 0, 0] = float("nan")
        return out

    def on_alarm(v: Any) -> None:
        raise RuntimeError("hook")

    kw: dict = {"embed": embed, "sample_chunks": sample}
    if kind == "on_alarm raises":
        kw["on_alarm"] = on_alarm
    scale = 3.0 if kind == "on_alarm raises" else 0.3
    plain = ToyChunkPolicy(obs_dim=4, n_action_steps=4)
    torch.manual_seed(7)
    plain.reset()
    want = [plain.select_action(obs(t, scale)) for t in range(40)]
    wrapped = LeRobotPolicyWrapper(policy, det, n_samples=8, **kw)
    torch.manual_seed(7)
    wrapped.reset()
    got, escaped = [], 0
    for t in range(40):
        try:
            got.append(wrapped.select_action(obs(t, scale)))
        except Exception:
            escaped += 1
    same = len(got) == 40 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    return (
        f"{len(got)}/40 actions returned, {escaped} exceptions escaped, "
        f"actions identical to the unwrapped policy: {same}"
    )


for _k in ("embed raises", "NaN embedding", "NaN chunks", "on_alarm raises"):
    case(f"LeRobotPolicyWrapper: {_k}")((lambda k: lambda: _lerobot(k))(_k))


@case("PolicyAdapter.step: embed raises")
def _adapter() -> str:
    from failguard.integrations import PolicyAdapter

    def embed(o: Any) -> Any:
        raise RuntimeError("driver")

    ad = PolicyAdapter(embed=embed, sample=lambda o, n: np.zeros((n, 8, 3)), detector=DET)
    ad.reset()
    try:
        v = ad.step(None)
    except Exception as ex:
        return f"raised {err_name(ex)}"
    return f"returned a verdict: alarm={v.alarm}, status={getattr(v, 'status', '?')}"


@case("FailguardEnv.step: embed raises once")
def _env() -> str:
    import gymnasium as gym

    from failguard.integrations import FailguardEnv, PolicyAdapter

    r = make_rollouts(12, seed=0, length=20)
    det = FailureDetector([RNDScore(max_epochs=2)], alpha=0.2)
    det.fit([x.replace(embeddings=x.embeddings[:, :4]) for x in r[:4]], progress=False)
    det.calibrate([x.replace(embeddings=x.embeddings[:, :4]) for x in r[4:]])
    count = [0]

    def embed(o: Any) -> Any:
        count[0] += 1
        if count[0] == 3:
            raise RuntimeError("driver")
        return o

    env = FailguardEnv(gym.make("CartPole-v1"), PolicyAdapter(embed=embed, detector=det))
    env.reset(seed=0)
    lost = 0
    for _ in range(5):
        try:
            env.step(0)
        except Exception:
            lost += 1
    return f"{lost} of 5 transitions lost to an exception"


# ---------------------------------------------------------------- recording
def _rec(rec: Any, w: int, k: int) -> None:
    rec.start(metadata={"w": w, "k": k})
    for t in range(3):
        rec.step(embedding=np.full(4, float(t)))
    rec.end(success=True)


@case("two Recorders in one process, one directory, 10 rollouts")
def _two_rec() -> str:
    d = TMP / "two"
    a, b = fg.Recorder(d), fg.Recorder(d)
    for k in range(5):
        _rec(a, 0, k)
        _rec(b, 1, k)
    return f"{len(fg.read_rollouts(d))}/10 rollouts kept"


@case("two processes recording 15 rollouts each into one directory")
def _two_proc() -> str:
    d = TMP / "procs"
    src = str(Path(fg.__file__).resolve().parents[1])
    script = (
        f"import sys; sys.path.insert(0, {src!r}); import numpy as np; import failguard as fg\n"
        f"rec = fg.Recorder({str(d)!r})\n"
        "for k in range(15):\n"
        "    rec.start(); [rec.step(embedding=np.zeros(4)) for _ in range(3)]\n"
        "    rec.end(success=True)\n"
    )
    ps = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    for p in ps:
        p.wait()
    return f"{len(fg.read_rollouts(d))}/30 rollouts kept"


@case("file modes under umask 022 (config.json, model.safetensors, rollout log)")
def _modes() -> str:
    old = os.umask(0o022)
    try:
        out = DET.save(TMP / "modes")
        rec = fg.Recorder(TMP / "modes_logs")
        _rec(rec, 0, 0)
    finally:
        os.umask(old)
    files = [out / "config.json", out / "model.safetensors", *(TMP / "modes_logs").iterdir()]
    return ", ".join(sorted({oct(f.stat().st_mode & 0o777) for f in files}))


@case("stale temp file of a killed writer")
def _stale() -> str:
    d = TMP / "stale"
    d.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    legacy = d / ".rollout_000000.safetensors.abc123.tmp"
    legacy.write_bytes(b"x")
    os.utime(legacy, (0, 0))
    fg.Recorder(d)
    return "cleaned" if not legacy.exists() else "left behind"


# ---------------------------------------------------------------- artifacts
def _edited(change: Callable[[dict], None], tensors: Callable[[dict], None] | None = None) -> str:
    from safetensors.numpy import load_file, save

    d = TMP / f"edit{len(list(TMP.iterdir()))}"
    DET.save(d)
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        t = load_file(str(d / "model.safetensors"))
        tensors(t)
        (d / "model.safetensors").write_bytes(save(t))
    try:
        det = FailureDetector.load(d)
    except Exception as ex:
        return f"refused ({err_name(ex)})"
    return f"loaded silently (windows={det.windows}, combine={det.combine})"


case("config.json without params.windows")(lambda: _edited(lambda c: c["params"].pop("windows")))
case("config.json without params.combine")(lambda: _edited(lambda c: c["params"].pop("combine")))
case("config.json: combine edited to 'or'")(
    lambda: _edited(lambda c: c["params"].__setitem__("combine", "or"))
)
case("config.json: windows edited")(
    lambda: _edited(lambda c: c["params"].__setitem__("windows", {"rnd": 2, "ace": 10}))
)
case("config.json: calibration.levels edited")(
    lambda: _edited(lambda c: c["calibration"]["levels"].__setitem__("rnd", 0.001))
)
for _bad in (float("nan"), 0.0, -1.0):
    case(f"threshold table set to {_bad}")(
        (
            lambda b: (
                lambda: _edited(
                    lambda c: None,
                    lambda t: t.__setitem__(
                        "calibration.pooled.tables.rnd",
                        np.full_like(t["calibration.pooled.tables.rnd"], b),
                    ),
                )
            )
        )(_bad)
    )


@case("config.json: predictor width 2e6 (absurd size)")
def _absurd() -> str:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = _edited(lambda c: c["scores"][0]["params"].__setitem__("predictor_hidden", [2000000]))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{out}; peak RSS +{after - before:.0f} MiB"


@case("config.json: JSON nested 100000 deep")
def _deep() -> str:
    d = DET.save(TMP / "deep")
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    try:
        FailureDetector.load(d)
    except BaseException as ex:
        return f"refused ({err_name(ex)})"
    return "loaded"


@case("60 single-bit flips in model.safetensors weights")
def _flips() -> str:
    d = DET.save(TMP / "flips")
    raw = (d / "model.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    hdr = int.from_bytes(raw[:8], "little")
    detected = changed = 0
    ref = DET.raw_scores(FAILS[0])["rnd"]
    for pos in rng.integers(8 + hdr, len(raw), size=60):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        (d / "model.safetensors").write_bytes(bytes(bad))
        try:
            det = FailureDetector.load(d)
        except Exception:
            detected += 1
            continue
        changed += not np.array_equal(det.raw_scores(FAILS[0])["rnd"], ref)
    return f"{detected}/60 detected, {changed} loaded with changed scores"


@case("60 single-bit flips in monitor.onnx")
def _onnx_flips() -> str:
    path, OnnxMonitor = _exported("flip.onnx")
    raw = path.read_bytes()
    rng = np.random.default_rng(1)
    r = FAILS[0]
    ref = OnnxMonitor(path).step(embedding=r.embeddings[0], action_samples=r.action_samples[0])
    detected = changed = 0
    for pos in rng.integers(0, len(raw), size=60):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        try:
            m = OnnxMonitor(path)
            v = m.step(embedding=r.embeddings[0], action_samples=r.action_samples[0])
        except Exception:
            detected += 1
            continue
        changed += v.scores != ref.scores or v.thresholds != ref.thresholds
    return f"{detected}/60 detected, {changed} loaded with changed numbers"


@case("25 single-bit flips in a rollout log's data")
def _log_flips() -> str:
    from failguard.logs import write_rollout

    path = write_rollout(FAILS[0], TMP / "flip_log")
    raw = path.read_bytes()
    rng = np.random.default_rng(2)
    hdr = int.from_bytes(raw[:8], "little")
    detected = silent = 0
    names = False
    for pos in rng.integers(8 + hdr, len(raw), size=25):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        try:
            fg.read_rollout(path)
        except Exception as ex:
            detected += 1
            names = str(path) in str(ex)
            continue
        silent += 1
    return f"{detected}/25 detected (message names the file: {names}), {silent} read silently"


@case("monitor.onnx metadata 'names' reversed")
def _names() -> str:
    import onnx

    path, OnnxMonitor = _exported("names.onnx")
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "failguard":
            m = json.loads(p.value)
            m["names"].reverse()
            p.value = json.dumps(m)
    onnx.save(model, str(path))
    try:
        mon = OnnxMonitor(path)
    except Exception as ex:
        return f"refused ({err_name(ex)})"
    r = FAILS[0]
    v = mon.step(embedding=r.embeddings[0], action_samples=r.action_samples[0])
    return f"loaded; verdict labels {list(v.scores)} (rnd value under 'ace': {v.scores['ace']:.3f})"


# ---------------------------------------------------------------- threads, memory, misc
@case("two threads sharing one Monitor, 500 steps each")
def _threads() -> str:
    mon = DET.monitor()
    r = FAILS[0]
    steps: list[int] = []
    errors: list[str] = []

    def run() -> None:
        for t in range(500):
            try:
                steps.append(
                    mon.step(
                        embedding=r.embeddings[t % 40], action_samples=r.action_samples[t % 40]
                    ).step
                )
            except Exception as ex:
                errors.append(type(ex).__name__)

    ths = [threading.Thread(target=run) for _ in range(2)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    dup = len(steps) - len(set(steps))
    return (
        f"{dup} duplicated step indices, {len(errors)} refused "
        f"({sorted(set(errors))}), final t={mon.t} for {len(steps)} accepted"
    )


@case("PolicyAdapter, 20000 steps: verdicts kept")
def _memory() -> str:
    from failguard.integrations import PolicyAdapter

    r = FAILS[0]
    ad = PolicyAdapter(
        embed=lambda o: r.embeddings[0],
        sample=lambda o, n: r.action_samples[0],
        detector=DET,
    )
    ad.reset()
    for _ in range(20000):
        ad.step(None)
    return f"{len(ad.verdicts)} verdicts held"


@case("Monitor.step with a torch tensor that requires grad")
def _grad() -> str:
    try:
        DET.monitor().step(
            embedding=torch.ones(32, requires_grad=True), action_samples=np.zeros((32, 8, 3))
        )
    except Exception as ex:
        return f"raised {err_name(ex)}"
    return "accepted"


@case("OnnxMonitor.reset_robot(True) in a batch of 4")
def _reset_robot() -> str:
    path, OnnxMonitor = _exported("rr.onnx")
    m = OnnxMonitor(path)
    m.reset_batch(4)
    r = FAILS[0]
    m.step_batch(
        embedding=np.stack([r.embeddings[0]] * 4),
        action_samples=np.stack([r.action_samples[0]] * 4),
    )
    try:
        m.reset_robot(True)  # type: ignore[arg-type]
    except Exception as ex:
        return f"refused ({err_name(ex)}); steps {m._t.tolist()}"
    return f"accepted; robots' step counters now {m._t.tolist()}"


@case("OnnxMonitor.step_batch with one NaN robot of 3")
def _batch_nan() -> str:
    path, OnnxMonitor = _exported("bn.onnx")
    m = OnnxMonitor(path)
    m.reset_batch(3)
    r = FAILS[0]
    e = np.stack([r.embeddings[0]] * 3)
    e[1] = np.nan
    try:
        bv = m.step_batch(embedding=e, action_samples=np.stack([r.action_samples[0]] * 3))
    except Exception as ex:
        return f"whole batch refused ({err_name(ex)})"
    return f"robots scored: {getattr(bv, 'status', None)}"


@case("OnnxMonitor: one action sample 1e12 away (torch accepts)")
def _spread() -> str:
    path, OnnxMonitor = _exported("sp.onnx")
    m = OnnxMonitor(path)
    r = FAILS[0]
    a = np.array(r.action_samples[0])
    a[0] = 1e12
    DET.monitor().step(embedding=r.embeddings[0], action_samples=a)
    try:
        m.step(embedding=r.embeddings[0], action_samples=a)
    except Exception as ex:
        return f"refused ({err_name(ex)})"
    return "accepted"


@case("CLI evaluate with a corrupted config.json")
def _cli() -> str:
    from failguard.cli import main

    d = DET.save(TMP / "cli_det")
    (d / "config.json").write_text('{"kind": "FailureDetector", "schema": 1, "params": 5}')
    logs = TMP / "cli_logs"
    for i, r in enumerate(FAILS[:2]):
        fg.write_rollout(r, logs / f"r{i}")
    try:
        code = main(["evaluate", str(d), str(logs)])
    except BaseException as ex:
        return f"traceback ({type(ex).__name__})"
    return f"exit code {code}, no traceback"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="failguard fault probe")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for name, fn in CASES:
        try:
            out = fn()
        except Exception as ex:  # the probe itself failed on this version
            out = f"probe error: {type(ex).__name__}: {str(ex)[:120]}"
            traceback.print_exc(limit=1)
        results[name] = out
        print(f"{name} | {out}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
