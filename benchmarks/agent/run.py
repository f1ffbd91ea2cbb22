"""Discrete-action agent benchmark: PPO on LunarLander, real shifts, failguard's discrete monitor.

Stages (each cached under ``--out``; delete a stage's files, or pass ``--redo-eval``, to
run it again):

1. **train**: a categorical PPO policy per seed on the default LunarLander-v3 physics
   (``seed<k>/policy/``, safetensors + JSON).
2. **rollouts**: ID and OOD rollouts recorded with :class:`failguard.Recorder`: embedding
   (the actor's second hidden layer), logits, and B = 32 sampled action ids per step
   (``seed<k>/rollouts/``, ``seed<k>/collect.json``).
3. **evaluate**: rollout-disjoint fit / calibration / validation / test splits; windows
   chosen on validation; metrics on test (``seed<k>/eval.json``).

Then ``results.json`` and ``results.md`` aggregate all seeds (mean ± std).

Usage::

    python -m benchmarks.agent.run              # full run, 3 seeds: ~25 min on a busy 2-core VM
    python -m benchmarks.agent.run --tiny --out /tmp/agent   # CI smoke run, about 15 s

``--tiny`` trains PPO for two updates only (to exercise the trainer) and records rollouts
with the reference policy shipped in ``benchmarks/agent/reference_policy/`` (seed 0 of the
full run), because a policy trained for seconds cannot land.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._protocol import mean_std
from .collect import collect_group
from .evaluation import DETECTORS, METRICS, SELECT, evaluate_seed
from .lander import GROUPS
from .ppo import PPOConfig, load_policy, save_policy, train_ppo

HERE = Path(__file__).resolve().parent

REFERENCE_POLICY = HERE / "reference_policy"
DEFAULT_OUT = HERE.parent / "results" / "agent"


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    seeds: tuple[int, ...] = (0, 1, 2)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train_from_scratch: bool = True
    n_id: int = 500
    n_ood: int = 160
    n_fit: int = 150
    n_cal: int = 150
    window_grid: tuple[int, ...] = (1, 5, 20, 40)
    threshold_styles: tuple[str, ...] = ("constant", "per_step", "band")
    alphas: tuple[float, ...] = (0.05, 0.10)
    n_samples: int = 32
    rnd_kwargs: dict[str, Any] = field(default_factory=dict)
    progress_epochs: int = 10
    #: split / score seeds evaluated on each policy seed's rollouts (empty: the policy seed)
    split_seeds: tuple[int, ...] = ()


FULL = Settings(ppo=PPOConfig(total_steps=3_000_000), rnd_kwargs={"max_epochs": 30})
TINY = Settings(
    seeds=(0,),
    ppo=PPOConfig(total_steps=2 * 4 * 128, n_envs=4, n_steps=128, minibatch=128),
    train_from_scratch=False,
    n_id=60,
    n_ood=10,
    n_fit=15,
    n_cal=25,
    window_grid=(1, 5, 10),
    # fg.select cross-fits on halves of the ~28 validation successes: enough for 0.10 only
    alphas=(0.10,),
    rnd_kwargs={"max_epochs": 5},
    progress_epochs=5,
)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside (results carry no machine paths)."""
    try:
        return str(path.resolve().relative_to(HERE.parent.parent.resolve()))
    except ValueError:
        return path.name


def _log(msg: str) -> None:
    print(f"[agent-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_train(settings: Settings, seed: int, out: Path) -> Path:
    """Train (or reuse) the policy of ``seed``; return the directory rollouts should use."""
    pdir = out / f"seed{seed}" / "policy"
    if (pdir / "policy.json").is_file():
        _log(f"seed {seed}: policy cached at {pdir}")
    else:
        cfg = PPOConfig(**{**settings.ppo.__dict__, "seed": seed})
        _log(f"seed {seed}: training PPO for {cfg.total_steps} steps")
        policy, info = train_ppo(cfg, log_every=0 if cfg.total_steps < 100_000 else 25)
        save_policy(policy, pdir, info)
        _log(
            f"seed {seed}: trained in {info['train_seconds']} s, "
            f"return(last 100) {info['mean_return_last100']}"
        )
    if settings.train_from_scratch:
        return pdir
    _log(f"seed {seed}: tiny mode records rollouts with the reference policy {REFERENCE_POLICY}")
    return REFERENCE_POLICY


def stage_rollouts(settings: Settings, seed: int, policy_dir: Path, out: Path) -> Path:
    """Record (or reuse) the rollouts of ``seed``; return the rollout directory."""
    sdir = out / f"seed{seed}"
    rdir = sdir / "rollouts"
    summary_path = sdir / "collect.json"
    if summary_path.is_file() and rdir.is_dir():
        _log(f"seed {seed}: rollouts cached at {rdir}")
        return rdir
    if rdir.exists():  # an interrupted collection: start the stage again
        shutil.rmtree(rdir)
    policy = load_policy(policy_dir)
    summary: dict[str, Any] = {"policy": _shown(policy_dir), "groups": {}}
    t0 = time.time()
    for gi, group in enumerate(GROUPS):
        n = settings.n_id if group == "id" else settings.n_ood
        base_seed = 10_000_000 * (seed + 1) + 100_000 * gi
        info = collect_group(policy, group, n, rdir, base_seed, settings.n_samples)
        summary["groups"][group] = info
        _log(
            f"seed {seed}: {group}: {info['successes']}/{n} successes, outcomes {info['outcomes']}"
        )
    summary["seconds"] = round(time.time() - t0, 1)
    summary_path.write_text(json.dumps(summary, indent=2))
    return rdir


def stage_evaluate(
    settings: Settings,
    seed: int,
    rdir: Path,
    out: Path,
    redo: bool,
    split_seed: int | None = None,
    select: bool = True,
) -> dict[str, Any]:
    """Evaluate (or reuse) the detectors on the rollouts of ``seed``.

    ``split_seed`` (default ``seed``) seeds the split and the scores; other values evaluate
    the same policy's rollouts with another split (``eval_split<k>.json``). ``fg.select``'s
    choice is cached in its own file (``*_select.json``), so either part can be redone alone;
    ``select=False`` uses a cached one but runs none.
    """
    from failguard import read_rollouts

    split = seed if split_seed is None else split_seed
    stem = "eval" if split == seed else f"eval_split{split}"
    parts = [(out / f"seed{seed}" / f"{stem}.json", list(DETECTORS))]
    select_path = out / f"seed{seed}" / f"{stem}_select.json"
    if select or select_path.is_file():
        parts.append((select_path, [SELECT]))
    merged: dict[str, Any] = {}
    rollouts = None
    for path, detectors in parts:
        if path.is_file() and not redo:
            _log(f"seed {seed}: evaluation cached at {path}")
            result: dict[str, Any] = json.loads(path.read_text())
        else:
            if rollouts is None:
                rollouts = read_rollouts(rdir)
            _log(f"seed {seed}, split {split}: evaluating on {len(rollouts)} rollouts")
            t0 = time.time()
            result = evaluate_seed(
                rollouts,
                seed=split,
                n_fit=settings.n_fit,
                n_cal=settings.n_cal,
                window_grid=settings.window_grid,
                alphas=settings.alphas,
                threshold_styles=settings.threshold_styles,
                rnd_kwargs=settings.rnd_kwargs,
                progress_epochs=settings.progress_epochs,
                detectors=detectors,
            )
            result["policy_seed"] = seed
            result["seconds"] = round(time.time() - t0, 1)
            path.write_text(json.dumps(result, indent=2))
        if not merged:
            merged = result
        else:
            for alpha, per_det in result["alpha"].items():
                merged["alpha"].setdefault(alpha, {}).update(per_det)
    return merged


def aggregate(
    settings: Settings, evals: list[dict[str, Any]], collects: list[dict[str, Any]]
) -> dict[str, Any]:
    """Mean ± std over seeds of every test metric and per-group alarm rate."""
    out: dict[str, Any] = {
        "seeds": [e["seed"] for e in evals],
        "policy_seeds": [e.get("policy_seed", e["seed"]) for e in evals],
        "alpha": {},
        "rollouts": {},
    }
    for group in GROUPS:
        rates = [c["groups"][group]["success_rate"] for c in collects]
        out["rollouts"][group] = {
            "per_seed": settings.n_id if group == "id" else settings.n_ood,
            "success_rate": mean_std(rates),
        }
    for alpha in settings.alphas:
        per_det: dict[str, Any] = {}
        names = [n for n in [*DETECTORS, SELECT] if any(n in e["alpha"][str(alpha)] for e in evals)]
        for name in names:
            # seeds where the detector ran and could be calibrated (select may be missing)
            runs = [
                e["alpha"][str(alpha)][name]
                for e in evals
                if "test" in e["alpha"][str(alpha)].get(name, {})
            ]
            if not runs:
                continue
            entry: dict[str, Any] = {
                "windows": [r["windows"] for r in runs],
                "threshold": [r.get("threshold", "constant") for r in runs],
                "k": [r.get("k") for r in runs],
                "test": {m: mean_std([r["test"][m] for r in runs]) for m in METRICS},
                "no_clock": {
                    m: mean_std([r["test"].get("no_clock", {}).get(m) for r in runs])
                    for m in METRICS
                },
                "per_group": {},
                "per_group_no_clock": {},
            }
            if "scores" in runs[0]:
                entry["scores"] = [r.get("scores") for r in runs]
                entry["combine"] = [r.get("combine") for r in runs]
            for r in runs:
                for k, g in r["test"].get("no_clock", {}).get("per_group", {}).items():
                    entry["per_group_no_clock"].setdefault(k, []).append(g["alarm_rate"])
            entry["per_group_no_clock"] = {
                k: mean_std(v) for k, v in sorted(entry["per_group_no_clock"].items())
            }
            keys = sorted({k for r in runs for k in r["test"]["per_group"]})
            for k in keys:
                entry["per_group"][k] = {
                    "alarm_rate": mean_std(
                        [
                            r["test"]["per_group"][k]["alarm_rate"]
                            for r in runs
                            if k in r["test"]["per_group"]
                        ]
                    ),
                    "n": [r["test"]["per_group"].get(k, {}).get("n", 0) for r in runs],
                }
            per_det[name] = entry
        out["alpha"][str(alpha)] = per_det
    out["monitor_replay_matches"] = all(e.get("monitor_replay_matches", False) for e in evals)
    return out


_STYLE = {"constant": "const", "per_step": "step", "band": "band"}


def _chosen(entry: dict[str, Any]) -> str:
    """Chosen threshold style, windows (and vote or scores) per seed, for the tables."""
    parts = []
    for i, (style, wins) in enumerate(zip(entry["threshold"], entry["windows"], strict=True)):
        text = f"{_STYLE.get(style, style)} " + ",".join(str(v) for v in wins.values())
        if "scores" in entry:
            text = f"{'+'.join(entry['scores'][i])} {entry['combine'][i]}: {text}"
        k = entry.get("k", [None] * len(entry["windows"]))[i]
        if k is not None:
            text += f" k={k}"
        parts.append(text)
    return "; ".join(parts)


def _fmt(ms: dict[str, Any]) -> str:
    if ms["mean"] is None:
        return "–"
    if abs(ms["mean"]) >= 10:
        return f"{ms['mean']:.0f} ± {ms['std']:.0f}"
    return f"{ms['mean']:.2f} ± {ms['std']:.2f}"


def to_markdown(agg: dict[str, Any], settings: Settings, command: str) -> str:
    """The results tables, as pasted into docs/BENCHMARKS.md."""
    lines = [f"Command: `{command}`", ""]
    policies = sorted(set(agg.get("policy_seeds", agg["seeds"])))
    if len(policies) == len(agg["seeds"]):
        lines.append(
            f"Seeds: {len(agg['seeds'])} (each: its own PPO policy, rollouts, split, RND)."
        )
    else:
        lines.append(
            f"Policy seeds: {policies}; split/score seeds: {agg['seeds']} (each evaluation: "
            "its own split of the policy's rollouts, RND and progress networks)."
        )
    lines.append("")
    lines.append("| group | rollouts / seed | policy success rate |")
    lines.append("|---|---|---|")
    for g, info in agg["rollouts"].items():
        lines.append(f"| {g} | {info['per_seed']} | {_fmt(info['success_rate'])} |")
    lines.append("")
    cols = (
        "far_id",
        "far_benign_ood",
        "tpr",
        "balanced_accuracy",
        "twa",
        "detection_time",
        "lead_time_steps",
        "roc_auc",
    )
    head = (
        "FAR (held-out ID succ.)",
        "alarms on benign OOD succ.",
        "TPR",
        "balanced acc.",
        "TWA",
        "DT",
        "lead (steps)",
        "ROC-AUC",
    )
    for alpha, per_det in agg["alpha"].items():
        lines.append(f"**α = {alpha}** (test split; mean ± std over seeds)")
        lines.append("")
        lines.append("| detector | threshold, windows (per seed) | " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---|" * len(head))
        for name, entry in per_det.items():
            cells = " | ".join(_fmt(entry["test"][c]) for c in cols)
            lines.append(f"| {name} | {_chosen(entry)} | {cells} |")
        lines.append("")
        lines.append(
            f"**α = {alpha}, without the clock** (every alarm at or after the length of the "
            "longest calibration success removed)"
        )
        lines.append("")
        nc_cols = ("far_id", "far_benign_ood", "tpr", "balanced_accuracy", "twa", "roc_auc")
        lines.append(
            "| detector | FAR (held-out ID succ.) | alarms on benign OOD succ. | TPR | "
            "balanced acc. | TWA | ROC-AUC |"
        )
        lines.append("|---|" + "---|" * len(nc_cols))
        for name, entry in per_det.items():
            cells = " | ".join(_fmt(entry["no_clock"][c]) for c in nc_cols)
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    alpha0 = next(iter(agg["alpha"]))
    lines.append(
        f"Alarm rate per group at α = {alpha0} (test split; for fail groups this is "
        "the TPR, for success groups the false-alarm rate):"
    )
    lines.append("")
    per_det = agg["alpha"][alpha0]
    keys = sorted(
        {k for e in per_det.values() for k in e["per_group"]},
        key=lambda k: (k.startswith("success"), k),
    )
    lines.append("| detector | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for name, entry in per_det.items():
        cells = []
        for k in keys:
            pg = entry["per_group"].get(k)
            cells.append(_fmt(pg["alarm_rate"]) if pg else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Alarm rate per group at α = {alpha0}, without the clock:")
    lines.append("")
    lines.append("| detector | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for name, entry in per_det.items():
        cells = []
        for k in keys:
            pg = entry["per_group_no_clock"].get(k)
            cells.append(_fmt(pg) if pg else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    n_row = per_det[next(iter(per_det))]["per_group"]
    lines.append(
        "Test rollouts per group and seed: "
        + ", ".join(f"{k} {'/'.join(str(n) for n in n_row[k]['n'])}" for k in keys if k in n_row)
        + "."
    )
    lines.append("")
    lines.append(
        "Streaming `Monitor` replay equals the batch detector on sampled test rollouts: "
        f"{'yes' if agg['monitor_replay_matches'] else 'NO'}."
    )
    return "\n".join(lines) + "\n"


def plot(agg: dict[str, Any], out: Path) -> Path | None:
    """Bar chart of per-group alarm rates at the first α (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib not installed; skipping the plot")
        return None
    alpha0 = next(iter(agg["alpha"]))
    per_det = agg["alpha"][alpha0]
    keys = sorted(
        {k for e in per_det.values() for k in e["per_group"]},
        key=lambda k: (k.startswith("success"), k),
    )
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(per_det)
    x = np.arange(len(keys))
    for i, (name, entry) in enumerate(per_det.items()):
        means = [
            entry["per_group"].get(k, {}).get("alarm_rate", {}).get("mean") or 0.0 for k in keys
        ]
        stds = [entry["per_group"].get(k, {}).get("alarm_rate", {}).get("std") or 0.0 for k in keys]
        ax.bar(x + i * width, means, width, yerr=stds, label=name, capsize=2)
    ax.axhline(float(alpha0), color="k", lw=0.8, ls="--", label=f"α = {alpha0}")
    ax.set_xticks(x + 0.4 - width / 2, keys, rotation=30, ha="right")
    ax.set_ylabel("alarm rate (test)")
    ax.set_title("LunarLander: alarm rate per group (fail = TPR, success = false alarms)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "alarm_rates.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_entropy_profile(rdir: Path, out: Path) -> Path | None:
    """Mean action entropy over normalised time: successes vs failures (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from failguard import iter_rollouts
    from failguard.scores import logits_entropy

    grid = np.linspace(0.0, 1.0, 50)
    curves: dict[str, list[np.ndarray]] = {}
    for r in iter_rollouts(rdir):
        assert r.action_logits is not None
        h = logits_entropy(r.action_logits)
        key = f"{'success' if r.success else 'fail'}, {'ID' if r.group == 'id' else 'OOD'}"
        curves.setdefault(key, []).append(np.interp(grid, np.linspace(0, 1, len(h)), h))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in sorted(curves):
        c = np.stack(curves[key])
        ax.plot(grid, c.mean(0), label=f"{key} (n={len(c)})")
        ax.fill_between(grid, *np.percentile(c, [25, 75], axis=0), alpha=0.15)
    ax.set_xlabel("normalised time in rollout")
    ax.set_ylabel("action entropy (bits, max 2)")
    ax.set_title("LunarLander PPO: action entropy over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "entropy_profile.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CI smoke size (under 3 min)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {DEFAULT_OUT}; tiny: <out>/tiny)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument(
        "--split-seeds",
        type=int,
        nargs="+",
        default=None,
        help="evaluate each policy seed's rollouts with these split/score seeds",
    )
    parser.add_argument("--redo-eval", action="store_true", help="ignore cached evaluations")
    parser.add_argument(
        "--no-select", action="store_true", help="run no fg.select pass (cached ones are used)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = TINY if args.tiny else FULL
    if args.seeds:
        settings = Settings(**{**settings.__dict__, "seeds": tuple(args.seeds)})
    if args.split_seeds:
        settings = Settings(**{**settings.__dict__, "split_seeds": tuple(args.split_seeds)})
    out = args.out if args.out is not None else (DEFAULT_OUT / "tiny" if args.tiny else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    evals, collects = [], []
    for seed in settings.seeds:
        policy_dir = stage_train(settings, seed, out)
        rdir = stage_rollouts(settings, seed, policy_dir, out)
        collects.append(json.loads((out / f"seed{seed}" / "collect.json").read_text()))
        for split in settings.split_seeds or (seed,):
            evals.append(
                stage_evaluate(settings, seed, rdir, out, args.redo_eval, split, not args.no_select)
            )
    agg = aggregate(settings, evals, collects)
    command = "python -m benchmarks.agent.run" + (" --tiny" if args.tiny else "")
    if args.seeds:
        command += " --seeds " + " ".join(str(s) for s in settings.seeds)
    if settings.split_seeds:
        command += " --split-seeds " + " ".join(str(s) for s in settings.split_seeds)
    if args.no_select:
        command += " --no-select"
    agg["command"] = command
    agg["settings"] = {
        k: (v.__dict__ if isinstance(v, PPOConfig) else v) for k, v in settings.__dict__.items()
    }
    agg["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(agg, indent=2))
    md = to_markdown(agg, settings, command)
    (out / "results.md").write_text(md)
    plot(agg, out)
    first = out / f"seed{settings.seeds[0]}" / "rollouts"
    if first.is_dir():
        plot_entropy_profile(first, out)
    print(md)
    _log(f"done in {agg['seconds']} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
