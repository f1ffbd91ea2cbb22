"""Latency of one monitor step: ONNX Runtime (exported graph) against torch eager (Monitor.step).

Measures, on this machine's CPU:

* per-step p50 / p99 at N=1 robot with one intra-op thread, and throughput at N=64 robots,
  for (a) the default detector (small RND + ACE, d=32, B=32, H=8, D=3) and (b) the paper
  size (``RNDScore.paper()``, about 34 M parameters, d=256, B=256, H=16, D=3);
* (c) ACE alone at B=32 and B=256: the sort-based ONNX graph and the numpy ACE;
* a flow-matching-like policy forward of the same size (10 denoising steps of a 3x256 MLP on
  B chunks, torch eager, one thread), to express the monitor's cost as a fraction of the
  policy's own inference time.

RND is fitted with ``max_epochs=1`` on small data: latency does not depend on training.
Medians and ratios come from one run; the machine may be shared, so treat p99 with care.

Usage::

    python -m benchmarks.latency            # full run, writes benchmarks/results/latency.json
    python -m benchmarks.latency --quick    # fewer repetitions, no paper size (smoke test)
    python -m benchmarks.latency --markdown # also rewrite the section in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
import torch

from failguard import ActionChunkEntropy, FailureDetector, RNDScore
from failguard.exporters import export_onnx
from failguard.runtime import OnnxMonitor
from failguard.synthetic import make_rollouts

from ._protocol import summary_us, timed, timed_us

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
DOC = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Latency (ONNX Runtime vs torch)"


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    blocks: int = 10,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Time several callables in alternating blocks; p50 = median of the block medians.

    ``counts`` overrides ``repeats`` (the calls over all blocks) per callable.
    """
    pers = {k: max(3, (counts or {}).get(k, repeats) // blocks) for k in fns}
    for k, f in fns.items():
        for _ in range(min(50, pers[k])):
            f()
    meds: dict[str, list[float]] = {k: [] for k in fns}
    alls: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            ts = timed(f, pers[k])
            meds[k].append(float(np.median(ts)) * 1e6)
            alls[k].extend(ts)
    return {k: {**summary_us(alls[k]), "p50_us": float(np.median(meds[k]))} for k in fns}


def build(kind: str, seed: int = 0) -> tuple[FailureDetector, list[Any], dict[str, int]]:
    """A calibrated detector of size ``kind`` and a few test rollouts."""
    if kind == "default":
        size = {"d": 32, "B": 32, "H": 8, "D": 3}
        rnd = RNDScore(max_epochs=1)
    else:
        size = {"d": 256, "B": 256, "H": 16, "D": 3}
        rnd = RNDScore.paper(max_epochs=1, batch_size=64)
    kw = {
        "embedding_dim": size["d"],
        "n_samples": size["B"],
        "horizon": size["H"],
        "action_dim": size["D"],
        "length": 20,
    }
    det = FailureDetector([rnd, ActionChunkEntropy()], alpha=0.2)
    det.fit(make_rollouts(4, seed=seed, **kw), progress=False)
    det.calibrate(make_rollouts(12, seed=seed + 1, **kw))
    test = make_rollouts(2, kind="failure", seed=seed + 2, **kw)
    return det, test, size


def session(path: Path, threads: int | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed_for(det: FailureDetector, rollouts: list[Any], n: int, t: int) -> dict[str, np.ndarray]:
    rows = [rollouts[i % len(rollouts)] for i in range(n)]
    feed: dict[str, np.ndarray] = {
        f: np.ascontiguousarray(np.stack([getattr(r, f)[t] for r in rows])) for f in det.requires
    }
    feed["t"] = np.full(n, t, dtype=np.int64)
    feed["group"] = np.zeros(n, dtype=np.int64)
    for name in det.names:
        w = 1 if det.window_kind == "cumulative" else det.windows[name]
        feed[f"state_{name}"] = np.zeros((n, w))
    return feed


def policy_forward(b: int, h: int, d_act: int, d_obs: int, steps: int = 10) -> Callable[[], Any]:
    """A flow-matching-like policy: ``steps`` Euler steps of a 3x256 MLP velocity field."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(h * d_act + d_obs + 1, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, h * d_act),
    ).eval()
    obs = torch.randn(1, d_obs).expand(b, d_obs)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            x = torch.randn(b, h * d_act)
            for k in range(steps):
                tt = torch.full((b, 1), k / steps)
                x = x + net(torch.cat([x, obs, tt], dim=1)) / steps
        return x

    return run


def bench_detector(kind: str, repeats: int, tmp: Path) -> dict[str, Any]:
    det, test, size = build(kind)
    path = export_onnx(det, tmp / f"{kind}.onnx")
    r = test[-1]
    t_mid = len(r) // 2
    out: dict[str, Any] = {"size": size, "onnx_bytes": path.stat().st_size}
    if kind != "default":
        out["rnd_parameters"] = det.scores[0].n_parameters  # type: ignore[attr-defined]

    sess = session(path, 1)
    feed1 = feed_for(det, [r], 1, t_mid)
    mon = OnnxMonitor(path, intra_op_threads=1)
    # the outputs OnnxMonitor fetches each step (the per-step floats come packed in "report")
    fetch = list(getattr(mon, "_fetch", ["report", "alarm", "overflow"]))
    args = {"embedding": r.embeddings[t_mid], "action_samples": r.action_samples[t_mid]}
    # side by side, alternating blocks (the machine may be shared): medians of block medians
    pair = interleaved(
        {"bare": lambda: sess.run(fetch, feed1), "step": lambda: mon.step(**args)}, repeats
    )
    out["ort_session_run_n1"] = pair["bare"]
    out["ort_monitor_step_n1"] = pair["step"]
    out["step_over_bare"] = pair["step"]["p50_us"] / pair["bare"]["p50_us"]
    if kind != "default" and "weights" in inspect.signature(export_onnx).parameters:
        for w in ("fp16", "int8"):
            low = OnnxMonitor(export_onnx(det, tmp / f"{kind}_{w}.onnx", weights=w))
            out[f"ort_monitor_step_n1_{w}"] = timed_us(lambda m=low: m.step(**args), repeats, 5)

    torch_mon = det.monitor()
    torch_reps = max(50, repeats // 10) if kind != "default" else repeats
    out["torch_monitor_step_n1"] = timed_us(lambda: torch_mon.step(**args), torch_reps, warmup=10)

    # throughput at N=64: one batched graph call vs the torch scores on 64 rows at once
    n = 64
    feed64 = feed_for(det, test, n, t_mid)
    sess_all = session(path, None)
    reps64 = max(20, repeats // 20)
    ort64 = timed_us(lambda: sess_all.run(fetch, feed64), reps64, warmup=5)
    ort64_1 = timed_us(lambda: sess.run(fetch, feed64), reps64, warmup=5)
    inputs64 = {f: feed64[f] for f in det.requires}
    t64 = timed_us(lambda: [s.score_steps(inputs64) for s in det.scores], reps64, warmup=5)
    out["n64"] = {
        "ort_all_threads": {**ort64, "robot_steps_per_s": n / (ort64["p50_us"] * 1e-6)},
        "ort_1_thread": {**ort64_1, "robot_steps_per_s": n / (ort64_1["p50_us"] * 1e-6)},
        "torch_scores_only": {**t64, "robot_steps_per_s": n / (t64["p50_us"] * 1e-6)},
    }
    # the policy's forward pass side by side with the monitor step (alternating blocks), so
    # that a load change on a shared machine moves both
    policy = policy_forward(size["B"], size["H"], size["D"], size["d"])
    both = interleaved(
        {"policy": policy, "step": lambda: mon.step(**args)},
        max(30, repeats // 20),
        counts={"step": max(30, repeats // 5)},
    )
    out["policy_forward"] = both["policy"]
    out["ort_monitor_step_n1_with_policy"] = both["step"]
    out["step_over_policy_forward"] = both["step"]["p50_us"] / both["policy"]["p50_us"]
    p50 = out["ort_monitor_step_n1"]["p50_us"]
    out["ratios"] = {
        "torch_over_ort_monitor_step": out["torch_monitor_step_n1"]["p50_us"] / p50,
        "torch_over_ort_session_run": out["torch_monitor_step_n1"]["p50_us"]
        / out["ort_session_run_n1"]["p50_us"],
        "ort_step_over_policy_forward": p50 / out["policy_forward"]["p50_us"],
        "torch_step_over_policy_forward": out["torch_monitor_step_n1"]["p50_us"]
        / out["policy_forward"]["p50_us"],
    }
    return out


def bench_ace(b: int, repeats: int, tmp: Path) -> dict[str, Any]:
    h, d = (8, 3) if b <= 32 else (16, 3)
    kw = {"embedding_dim": 8, "n_samples": b, "horizon": h, "action_dim": d, "length": 20}
    ace = ActionChunkEntropy()
    det = FailureDetector([ace], alpha=0.2).fit(make_rollouts(2, seed=0, **kw), progress=False)
    det.calibrate(make_rollouts(10, seed=1, **kw))
    path = export_onnx(det, tmp / f"ace{b}.onnx")
    r = make_rollouts(1, kind="failure", seed=2, **kw)[0]
    sess = session(path, 1)
    feed = feed_for(det, [r], 1, 5)
    inputs = {"action_samples": r.action_samples[5:6]}
    pair = interleaved(
        {"ort": lambda: sess.run(None, feed), "numpy": lambda: ace.score_steps(inputs)}, repeats
    )
    return {
        "size": {"B": b, "H": h, "D": d},
        "ort_session_run_n1": pair["ort"],
        "numpy_score_steps_n1": pair["numpy"],
        "ort_over_numpy": pair["ort"]["p50_us"] / pair["numpy"]["p50_us"],
    }


def bench_cuda(repeats: int) -> dict[str, Any]:
    """Paper-size RND and the policy forward in torch eager on CUDA (no CUDA build of
    onnxruntime is available here, so the exported graph itself is not timed on the GPU).

    Includes the host-to-device copy of the embedding and a synchronisation per step.
    """
    from failguard.scores.rnd import PAPER_OUTPUT, PAPER_PREDICTOR, PAPER_TARGET, RNDNetwork

    dev = torch.device("cuda")
    torch.manual_seed(0)
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0)}
    for d in (32, 256):
        net = RNDNetwork(d, PAPER_TARGET, PAPER_PREDICTOR, PAPER_OUTPUT).to(dev).eval()
        for n in (1, 64):
            x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)

            def step(x: np.ndarray = x, net: RNDNetwork = net) -> float:
                with torch.inference_mode():
                    s = net(torch.from_numpy(x).to(dev, non_blocking=False))
                    return float(s[0].item())  # .item() synchronises

            out[f"rnd_paper_d{d}_n{n}"] = timed_us(step, repeats, warmup=20)
    for b, h in ((32, 8), (256, 16)):
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(
            torch.nn.Linear(h * 3 + 256 + 1, 256),
            torch.nn.GELU(),
            torch.nn.Linear(256, 256),
            torch.nn.GELU(),
            torch.nn.Linear(256, 256),
            torch.nn.GELU(),
            torch.nn.Linear(256, h * 3),
        ).to(dev)
        obs = torch.randn(1, 256, device=dev).expand(b, 256)

        def run(b: int = b, h: int = h, mlp: torch.nn.Module = mlp, obs: Any = obs) -> float:
            with torch.inference_mode():
                x = torch.randn(b, h * 3, device=dev)
                for k in range(10):
                    tt = torch.full((b, 1), k / 10, device=dev)
                    x = x + mlp(torch.cat([x, obs, tt], dim=1)) / 10
                return float(x[0, 0].item())

        out[f"policy_forward_b{b}"] = timed_us(run, max(100, repeats // 5), warmup=10)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def table(res: dict[str, Any]) -> str:
    def f(x: float) -> str:
        return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"

    lines = [
        "| config | ORT graph p50 / p99 (µs) | ORT `OnnxMonitor.step` p50 / p99 (µs) "
        "| torch `Monitor.step` p50 / p99 (µs) | torch / ORT | N=64 ORT (robot-steps/s) "
        "| N=64 torch scores only (robot-steps/s) | policy forward p50 (µs) "
        "| ORT step / policy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("default", "paper"):
        if kind not in res:
            continue
        r = res[kind]
        s = r["size"]
        label = f"{kind} (d={s['d']}, B={s['B']}, H={s['H']}, D={s['D']})"
        lines.append(
            f"| {label} | {f(r['ort_session_run_n1']['p50_us'])} / "
            f"{f(r['ort_session_run_n1']['p99_us'])} | {f(r['ort_monitor_step_n1']['p50_us'])} / "
            f"{f(r['ort_monitor_step_n1']['p99_us'])} | {f(r['torch_monitor_step_n1']['p50_us'])}"
            f" / {f(r['torch_monitor_step_n1']['p99_us'])} | "
            f"{r['ratios']['torch_over_ort_monitor_step']:.1f}x | "
            f"{r['n64']['ort_all_threads']['robot_steps_per_s']:,.0f} | "
            f"{r['n64']['torch_scores_only']['robot_steps_per_s']:,.0f} | "
            f"{f(r['policy_forward']['p50_us'])} | "
            f"{100 * r['ratios']['ort_step_over_policy_forward']:.1f} % |"
        )
    lines += [
        "",
        "| ACE alone | ORT graph p50 / p99 (µs) | numpy ACE p50 / p99 (µs) |",
        "|---|---|---|",
    ]
    for key in sorted((k for k in res if k.startswith("ace_b")), key=lambda k: int(k[5:])):
        if key in res:
            a = res[key]
            s = a["size"]
            lines.append(
                f"| B={s['B']}, H={s['H']}, D={s['D']} | "
                f"{f(a['ort_session_run_n1']['p50_us'])} / "
                f"{f(a['ort_session_run_n1']['p99_us'])} | "
                f"{f(a['numpy_score_steps_n1']['p50_us'])} / "
                f"{f(a['numpy_score_steps_n1']['p99_us'])} |"
            )
    return "\n".join(lines)


def goals(res: dict[str, Any]) -> str:
    """One sentence per latency goal, measured against this run."""
    d = res["default"]
    out = [
        f"Goals, this run: default ORT graph p50 {d['ort_session_run_n1']['p50_us']:.1f} µs "
        f"(`OnnxMonitor.step` {d['ort_monitor_step_n1']['p50_us']:.1f} µs) against a goal of "
        f"30 µs; ORT {d['ratios']['torch_over_ort_monitor_step']:.1f}x faster than torch eager; "
        f"{100 * d['ratios']['ort_step_over_policy_forward']:.1f} % of the policy's own "
        "inference time."
    ]
    if "paper" in res:
        p = res["paper"]
        out.append(
            f" Paper size: {p['ort_session_run_n1']['p50_us'] / 1000:.1f} ms against a goal "
            "of 200 µs, missed: its RND reads about 136 MB of float32 weights per step, which "
            "keeps one CPU core memory-bound far above the goal (ORT is still "
            f"{p['ratios']['torch_over_ort_monitor_step']:.1f}x faster than torch there)."
        )
    if "ace_b256" in res:
        a = res["ace_b256"]
        out.append(
            f" ACE at B=256 in the graph takes {a['ort_session_run_n1']['p50_us']:.0f} µs "
            f"against numpy's {a['numpy_score_steps_n1']['p50_us']:.0f} µs: both sort "
            "(O(B log B)), but numpy's sort is vectorised and onnxruntime's TopK is not."
        )
    return "".join(out)


def write_section(res: dict[str, Any], command: str) -> None:
    m = res["machine"]
    body = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` — {res['date']}, {m['cpu']} ({m['logical_cpus']} logical "
            f"CPUs, shared with other jobs), onnxruntime {m['onnxruntime']}, torch {m['torch']}. "
            "N=1 figures use one intra-op thread; N=64 ORT uses onnxruntime's default threads. "
            "Raw numbers: `benchmarks/results/latency.json`.",
            "",
            table(res),
            "",
            goals(res),
            "",
            "*ORT graph* is `InferenceSession.run` on the exported monitor step, fetching what "
            "`OnnxMonitor` fetches (the packed `report`, `alarm`, `overflow` and the new state); "
            "*OnnxMonitor.step* adds input checks, state keeping and the `Verdict`. "
            "*torch / ORT* is `Monitor.step` over `OnnxMonitor.step`, both from the same run. "
            "*Policy forward* is 10 Euler steps of a 3x256 MLP on B chunks of the same size "
            "(torch eager, one thread). RND was fitted for one epoch (latency only).",
            "",
        ]
    )
    gpu_file = RESULTS.parent / "latency_h100.json"
    if gpu_file.exists():
        g = json.loads(gpu_file.read_text())
        gm, cu = g["machine"], g.get("cuda", {})
        body += "\n".join(
            [
                "",
                f"The same command with `--cuda` on the GPU machine ({cu.get('gpu', 'GPU')}, "
                f"{gm['cpu']}, {gm['logical_cpus']} logical CPUs; onnxruntime {gm['onnxruntime']},"
                f" torch {gm['torch']}), {g['date']} (`benchmarks/results/latency_h100.json`). "
                "That host is virtualised and its timings moved by up to 1.7x between two runs "
                "minutes apart, so compare only ratios within one run. CPU rows first:",
                "",
                table(g),
                "",
                "No CUDA build of onnxruntime is installed there (and its wheel is too large to "
                "carry), so the exported graph was not timed on the GPU. torch eager on CUDA, "
                "per step including the host-to-device copy and a synchronisation:",
                "",
                "| what | p50 (µs) | p99 (µs) |",
                "|---|---|---|",
            ]
            + [
                f"| {k} | {v['p50_us']:,.0f} | {v['p99_us']:,.0f} |"
                for k, v in cu.items()
                if isinstance(v, dict)
            ]
            + [""]
        )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


ACE_BS = (8, 16, 32, 64, 128, 256)


def goal_ratios(res: dict[str, Any]) -> dict[str, float]:
    """Every goal of issue 14 as a ratio measured in this run (lower is better)."""
    d = res["default"]
    out = {
        "OnnxMonitor.step / bare graph (goal <= 1.2)": d["ort_monitor_step_n1"]["p50_us"]
        / d["ort_session_run_n1"]["p50_us"],
        "default step / policy forward (goal <= 0.01)": d.get(
            "step_over_policy_forward",
            d["ort_monitor_step_n1"]["p50_us"] / d["policy_forward"]["p50_us"],
        ),
        "OnnxMonitor.step / torch Monitor.step (goal <= 1/8 = 0.125)": d["ort_monitor_step_n1"][
            "p50_us"
        ]
        / d["torch_monitor_step_n1"]["p50_us"],
    }
    if "paper" in res:
        p = res["paper"]
        for w in ("", "_fp16", "_int8"):
            key = f"ort_monitor_step_n1{w}"
            if key in p:
                label = w[1:] or "fp32"
                out[f"paper {label} step / paper policy forward (goal <= 0.10)"] = (
                    p[key]["p50_us"] / p["policy_forward"]["p50_us"]
                )
    for b in ACE_BS:
        if f"ace_b{b}" in res:
            out[f"ACE ORT / numpy, B={b} (goal <= 1)"] = res[f"ace_b{b}"]["ort_over_numpy"]
    return out


def absolute_us(res: dict[str, Any]) -> dict[str, float]:
    """The p50 times (µs) behind the goal ratios, for the before/after table."""
    d = res["default"]
    out = {
        "default: bare ORT graph": d["ort_session_run_n1"]["p50_us"],
        "default: OnnxMonitor.step": d["ort_monitor_step_n1"]["p50_us"],
        "default: torch Monitor.step": d["torch_monitor_step_n1"]["p50_us"],
    }
    if "policy_forward" in d:
        out["benchmark policy forward"] = d["policy_forward"]["p50_us"]
    if "paper" in res:
        p = res["paper"]
        for w in ("", "_fp16", "_int8"):
            if f"ort_monitor_step_n1{w}" in p:
                out[f"paper {w[1:] or 'fp32'}: OnnxMonitor.step"] = p[f"ort_monitor_step_n1{w}"][
                    "p50_us"
                ]
        out["paper-size policy forward"] = p["policy_forward"]["p50_us"]
    return out


def compare_table(runs: dict[str, list[dict[str, float]]]) -> str:
    """Median of each goal ratio over repeated runs, one column per package."""
    labels = list(runs)
    goals = [g for g in runs[labels[-1]][0] if all(g in r[0] for r in runs.values())]
    goals += [g for g in runs[labels[-1]][0] if g not in goals]
    lines = ["| goal | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for g in goals:
        cells = []
        for lab in labels:
            vals = [r[g] for r in runs[lab] if g in r]
            cells.append(f"{np.median(vals):.3g}" if vals else "—")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    """This script over two packages (``--baseline`` and this checkout's ``src``), in
    alternating subprocesses, ``--rounds`` times each: the before/after table in one run."""
    packages = {"baseline": args.baseline.resolve(), "this checkout": ROOT / "src"}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in packages}
    times: dict[str, list[dict[str, float]]] = {k: [] for k in packages}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for label, src in packages.items():
                out = Path(tmp) / f"{i}_{label.replace(' ', '_')}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.latency",
                    "--out",
                    str(out),
                    "--repeats",
                    str(args.repeats),
                ]
                if args.quick:
                    cmd.append("--quick")
                if args.no_paper:
                    cmd.append("--no-paper")
                # that package's failguard, and this checkout's benchmarks (src/ holds no
                # `benchmarks`, the root no `failguard`)
                path = os.pathsep.join([str(src), str(ROOT)])
                env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
                subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
                res = json.loads(out.read_text())
                runs[label].append(goal_ratios(res))
                times[label].append(absolute_us(res))
                print(f"round {i + 1}/{args.rounds}: {label} done", file=sys.stderr)
    table_md = compare_table(runs)
    print(table_md)
    print()
    print(compare_table(times).replace("| goal |", "| p50 (µs) |"))
    # labels only: committed results carry no machine paths
    result = {
        "packages": {"baseline": args.baseline.name, "this checkout": "src"},
        "machine": machine(),
        "runs": runs,
        "p50_us": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, no paper size")
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--no-paper", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cuda", action="store_true", help="also time paper RND on CUDA")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite the docs from the saved JSON"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a failguard 'src' folder (e.g. of a git worktree at the baseline commit): time "
        "it and this checkout in alternating runs and print the goal ratios side by side",
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per package (--baseline)")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        if args.out == RESULTS:
            args.out = RESULTS.parent / "latency_compare.json"
        return run_compare(args)
    if args.markdown_only:
        saved = json.loads(args.out.read_text())
        write_section(saved, "python -m benchmarks.latency --markdown")
        return saved
    torch.set_num_threads(1)
    repeats = 200 if args.quick else args.repeats
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        res["default"] = bench_detector("default", repeats, Path(tmp))
        print(json.dumps(res["default"]["ratios"]), file=sys.stderr)
        for b in (32, 256) if args.quick else ACE_BS:
            res[f"ace_b{b}"] = bench_ace(b, repeats, Path(tmp))
        if not (args.quick or args.no_paper):
            res["paper"] = bench_detector("paper", max(300, repeats // 5), Path(tmp))
        if args.cuda and torch.cuda.is_available():
            res["cuda"] = bench_cuda(max(200, repeats // 5))
            print(json.dumps(res["cuda"], indent=1), file=sys.stderr)
    print(table(res))
    res["goal_ratios"] = goal_ratios(res)
    print("\n".join(f"{k}: {v:.3g}" for k, v in res["goal_ratios"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.markdown:
        write_section(res, "python -m benchmarks.latency --markdown")
    return res


if __name__ == "__main__":
    main()
