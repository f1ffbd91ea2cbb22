"""Aggregate per-(task, seed) results into tables, JSON and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._protocol import mean_std

__all__ = ["summarise", "write_outputs"]

METRICS = (
    "twa",
    "balanced_accuracy",
    "tpr",
    "tnr",
    "detection_time",
    "lead_time_steps",
    "roc_auc",
    "far_id",
)


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _test_metrics(res: dict[str, Any], clock: bool = True) -> dict[str, float]:
    """Task-level test metrics; ``clock=False``: alarms after the longest calibration success
    removed (all NaN when the report has no such metrics)."""
    test = res["test"]
    overall = test["overall"] if clock else test.get("no_clock") or {}
    groups = test["per_group"] if clock else test.get("no_clock_per_group") or {}
    m = {k: _num(overall.get(k)) for k in METRICS if k != "far_id"}
    sid = groups.get("success/id")
    m["far_id"] = _num(sid["alarm_rate"]) if sid else float("nan")
    return m


def _group_rates(res: dict[str, Any], clock: bool = True) -> dict[str, float]:
    """Alarm rate per (outcome × ID/OOD) and per (outcome × condition)."""
    out: dict[str, float] = {}
    pooled: dict[str, list[float]] = {}
    per_group = res["test"]["per_group"] if clock else res["test"].get("no_clock_per_group") or {}
    for key, g in per_group.items():
        outcome, group = key.split("/", 1)
        out[key] = _num(g["alarm_rate"])
        coarse = f"{outcome}/{'ID' if group == 'id' else 'OOD'}"
        pooled.setdefault(coarse, [0.0, 0.0])
        pooled[coarse][0] += g["alarm_rate"] * g["n"]
        pooled[coarse][1] += g["n"]
    for coarse, (alarms, n) in pooled.items():
        out[coarse] = alarms / n if n else float("nan")
    return out


def _first_n(
    cond_dir: Path, info: dict[str, Any], cfg: Any, label: str, task: str
) -> dict[str, Any]:
    """Outcomes of the rollouts the evaluation reads (the first ones of a larger directory)."""
    from failguard import read_rollout

    from .run import condition_sizes

    n = condition_sizes(cfg, label, task).get(cond_dir.name)
    if n is None or info["rollouts"] <= n:
        return info
    files = sorted(cond_dir.glob("rollout_*.safetensors"))[:n]
    successes = sum(int(bool(read_rollout(f).success)) for f in files)
    return {**info, "rollouts": n, "successes": successes, "recorded": info["rollouts"]}


def summarise(cfg: Any, results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Mean ± std over split seeds of the task-averaged test metrics, per method and α."""
    summary: dict[str, Any] = {"config": {k: v for k, v in vars(cfg).items() if k != "extra"}}
    outcomes: dict[str, Any] = {}
    for label in ("b32", "b256"):
        for task_dir in sorted((out / "rollouts" / label).glob("*")):
            for cond_dir in sorted(task_dir.glob("*")):
                done = cond_dir / "_done.json"
                if done.is_file():
                    info = json.loads(done.read_text())
                    info = _first_n(cond_dir, info, cfg, label, task_dir.name)
                    outcomes.setdefault(label, {}).setdefault(task_dir.name, {})[cond_dir.name] = (
                        info
                    )
    summary["rollout_outcomes"] = outcomes
    for label, by_task in results.items():
        tasks = sorted(by_task)
        seeds = sorted({s for t in tasks for s in by_task[t]})
        methods = list(next(iter(by_task[tasks[0]].values()))["methods"])
        block: dict[str, Any] = {"tasks": tasks, "seeds": seeds, "methods": {}}
        for method in methods:
            mblock: dict[str, Any] = {}
            alphas = list(by_task[tasks[0]][seeds[0]]["methods"][method])
            for alpha in alphas:
                per_seed: dict[str, list[float]] = {k: [] for k in METRICS}
                per_seed_nc: dict[str, list[float]] = {k: [] for k in METRICS}
                per_task: dict[str, dict[str, list[float]]] = {}
                groups: dict[str, list[float]] = {}
                groups_nc: dict[str, list[float]] = {}
                chosen: dict[str, list[Any]] = {}
                for seed in seeds:
                    task_vals: dict[str, list[float]] = {k: [] for k in METRICS}
                    task_vals_nc: dict[str, list[float]] = {k: [] for k in METRICS}
                    for task in tasks:
                        res = by_task[task][seed]["methods"][method][alpha]
                        if "test" not in res:
                            continue
                        m = _test_metrics(res)
                        m_nc = _test_metrics(res, clock=False)
                        for k in METRICS:
                            task_vals[k].append(m[k])
                            task_vals_nc[k].append(m_nc[k])
                            per_task.setdefault(task, {}).setdefault(k, []).append(m[k])
                        for g, v in _group_rates(res).items():
                            groups.setdefault(g, []).append(v)
                        for g, v in _group_rates(res, clock=False).items():
                            groups_nc.setdefault(g, []).append(v)
                        chosen.setdefault(task, []).append(
                            {
                                "seed": seed,
                                **{
                                    k: res[k]
                                    for k in ("windows", "threshold", "k", "scores", "combine")
                                    if k in res
                                },
                            }
                        )
                    for k in METRICS:
                        vals = [v for v in task_vals[k] if not math.isnan(v)]
                        per_seed[k].append(float(np.mean(vals)) if vals else float("nan"))
                        vals = [v for v in task_vals_nc[k] if not math.isnan(v)]
                        per_seed_nc[k].append(float(np.mean(vals)) if vals else float("nan"))
                sweep = _sweep(by_task, tasks, seeds, method, alpha)
                mblock[alpha] = {
                    "overall": {k: mean_std(v) for k, v in per_seed.items()},
                    "overall_no_clock": {k: mean_std(v) for k, v in per_seed_nc.items()},
                    "per_group_alarm_rate_no_clock": {
                        g: mean_std(v) for g, v in sorted(groups_nc.items())
                    },
                    "per_task": {
                        t: {k: mean_std(v) for k, v in d.items()} for t, d in per_task.items()
                    },
                    "per_group_alarm_rate": {g: mean_std(v) for g, v in sorted(groups.items())},
                    "chosen": chosen,
                    "sweep": sweep,
                }
            block["methods"][method] = mblock
        summary[label] = block
    return summary


def _sweep(
    by_task: dict[str, Any], tasks: list[str], seeds: list[int], method: str, alpha: str
) -> list[dict[str, Any]]:
    """α sweep: per seed the mean over tasks, then mean ± std over seeds (as the tables)."""
    keys = ("tpr", "tnr", "far_id", "detection_time", "twa", "balanced_accuracy")
    per_seed: dict[float, dict[str, list[float]]] = {}
    for seed in seeds:
        rows: dict[float, dict[str, list[float]]] = {}
        for task in tasks:
            res = by_task[task][seed]["methods"][method][alpha]
            for entry in res.get("test", {}).get("sweep", []):
                if "error" in entry:
                    continue
                row = rows.setdefault(float(entry["alpha"]), {})
                for k in keys:
                    row.setdefault(k, []).append(_num(entry.get(k)))
                # TNR on in-distribution successes: what the guarantee bounds (>= 1 - α).
                row.setdefault("tnr_id", []).append(1.0 - _num(entry.get("far_id")))
        for a, row in rows.items():
            if len(row["tpr"]) < len(tasks):
                continue  # some task could not be calibrated at this α: leave the point out
            agg = per_seed.setdefault(a, {})
            for k in (*keys, "tnr_id"):
                vals = [v for v in row[k] if not math.isnan(v)]
                agg.setdefault(k, []).append(float(np.mean(vals)) if vals else float("nan"))
    return [
        {"alpha": a, **{k: mean_std(v) for k, v in row.items()}}
        for a, row in sorted(per_seed.items())
    ]


def _fmt(d: dict[str, Any] | None, digits: int = 2) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _label(method: str) -> str:
    from .evaluate import METHODS

    if method == "select":
        return "**fg.select's choice**"
    return METHODS[method].label or method


def markdown_table(summary: dict[str, Any], label: str, alpha: str, clock: bool = True) -> str:
    """Markdown results table of one sample size at one α (``clock=False``: without the
    clock)."""
    block = summary[label]
    which = "overall" if clock else "overall_no_clock"
    lines = [
        "| method | TWA | balanced acc | TPR | TNR | DT | lead (steps) | FAR on ID successes |"
        " ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, mblock in block["methods"].items():
        o = mblock[alpha][which]
        lines.append(
            f"| {_label(method)} | {_fmt(o['twa'])} | "
            f"{_fmt(o['balanced_accuracy'])} | {_fmt(o['tpr'])} | {_fmt(o['tnr'])} | "
            f"{_fmt(o['detection_time'])} | {_fmt(o['lead_time_steps'], 1)} | "
            f"{_fmt(o['far_id'])} | {_fmt(o['roc_auc'])} |"
        )
    return "\n".join(lines)


def group_table(
    summary: dict[str, Any],
    label: str,
    alpha: str,
    methods: Sequence[str] | None = None,
    detail: bool = False,
    clock: bool = True,
) -> str:
    """Alarm rate per (outcome × ID/OOD), or per (outcome × condition) with ``detail``."""
    block = summary[label]["methods"]
    methods = list(block) if methods is None else methods
    which = "per_group_alarm_rate" if clock else "per_group_alarm_rate_no_clock"
    present = {g for m in methods if m in block for g in block[m][alpha][which]}
    coarse = ("success/ID", "success/OOD", "fail/ID", "fail/OOD")
    if detail:
        groups = sorted(
            (g for g in present if g not in coarse),
            key=lambda g: (g.startswith("fail"), g.split("/")[1] != "id", g),
        )
    else:
        groups = [g for g in coarse if g in present]
    lines = ["| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for m in methods:
        if m not in block:
            continue
        rates = block[m][alpha][which]
        lines.append(f"| {_label(m)} | " + " | ".join(_fmt(rates.get(g)) for g in groups) + " |")
    return "\n".join(lines)


def outcome_table(summary: dict[str, Any], label: str = "b32") -> str:
    """Successes / rollouts per task and condition."""
    outcomes = summary["rollout_outcomes"].get(label, {})
    conds = sorted({c for t in outcomes.values() for c in t}, key=lambda c: (c != "id", c))
    lines = ["| task | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for task, by_cond in outcomes.items():
        cells = [
            f"{by_cond[c]['successes']}/{by_cond[c]['rollouts']}" if c in by_cond else "–"
            for c in conds
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(summary: dict[str, Any], path: Path, label: str = "b32") -> None:
    """TPR, TNR and detection time against α (mean ± std over seeds of task averages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import METHODS

    block = summary[label]["methods"]
    first_alpha = next(iter(next(iter(block.values()))))
    # The guarantee bounds false alarms on in-distribution successes only. Summaries that
    # hold that TNR get the 1 - α line beside it; older ones (TNR over every success, benign
    # OOD ones included) get no line, since it does not bound that TNR.
    id_only = all("tnr_id" in row for m in block.values() for row in m[first_alpha]["sweep"])
    tnr_key = "tnr_id" if id_only else "tnr"
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for method in ("fiper", "fiper_joint", "or", "rnd_oe", "ace", "fiper_reference"):
        if method not in block:
            continue
        sweep = block[method][first_alpha]["sweep"]
        if not sweep:
            continue
        a = [row["alpha"] for row in sweep]
        for ax, key in zip(axes, ("tpr", tnr_key, "detection_time"), strict=True):
            mean = np.array([_num(row[key]["mean"]) for row in sweep])
            std = np.array([_num(row[key]["std"]) for row in sweep])
            ax.plot(a, mean, marker="o", label=METHODS[method].label)
            ax.fill_between(a, mean - std, mean + std, alpha=0.15)
    if id_only:
        grid = np.linspace(0.0, 0.35, 8)
        axes[1].plot(grid, 1 - grid, "k--", lw=1, label="1 − α (guaranteed mean, ID successes)")
    titles = (
        "TPR (failures caught)",
        "TNR, in-distribution successes" if id_only else "TNR, all successes (incl. benign OOD)",
        "detection time (lower = earlier)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("α")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    # One legend for the figure, below the panels, so that it covers no curve.
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(
        f"MetaWorld, settings chosen on validation at α={first_alpha}; "
        "thresholds recalibrated per α"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_setting(chosen: dict[str, Any]) -> str:
    """A readable title for a chosen setting: windows per indicator, threshold style.

    >>> describe_setting({"windows": {"rnd": 10, "ace": 5}, "threshold": "band"})
    'windows RND-OE 10, ACE 5; band threshold'
    """
    names = {"rnd": "RND-OE", "ace": "ACE"}
    w = chosen["windows"]
    windows = (
        ", ".join(f"{names.get(k, k)} {v}" for k, v in w.items()) if isinstance(w, dict) else str(w)
    )
    return f"windows {windows}; {chosen['threshold']} threshold"


def plot_traces(cfg: Any, summary: dict[str, Any], out: Path, path: Path) -> None:
    """Windowed FIPER scores, thresholds and alarms for a test success and a test failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import chosen_detector
    from .policy import PolicyConfig
    from .run import condition_sizes, load_task_rollouts

    task = cfg.tasks[0]
    seed = cfg.seeds[0]
    alpha = str(cfg.alphas[0])
    chosen = summary["b32"]["methods"]["fiper"][alpha]["chosen"][task][0]
    rollouts = load_task_rollouts(out, "b32", task, condition_sizes(cfg, "b32", task))
    det, splits = chosen_detector(
        rollouts,
        seed,
        cfg.n_fit,
        cfg.n_cal,
        "fiper",
        chosen["windows"],
        chosen["threshold"],
        float(alpha),
        PolicyConfig().exec_horizon,
    )
    test = splits["test"]
    traces = det.traces(test)
    horizon = det.longest_calibration_  # the longest calibration success
    pick = []
    succ = [i for i, t in enumerate(traces) if t.success and not t.predicted_failure]
    succ = [i for i in succ if traces[i].group == "id"] or succ
    fail = [i for i, t in enumerate(traces) if not t.success and t.predicted_failure]
    fail = [i for i in fail if traces[i].group != "id"] or fail
    fail = fail or [i for i, t in enumerate(traces) if not t.success]
    if succ:
        pick.append(succ[0])
    if fail:
        pick.append(fail[0])
    fig, axes = plt.subplots(2, max(len(pick), 1), figsize=(11, 5.5), squeeze=False)
    names = {"rnd": "RND-OE", "ace": "ACE"}
    for col, i in enumerate(pick):
        tr, r = traces[i], test[i]
        for row, name in enumerate(("rnd", "ace")):
            ax = axes[row, col]
            t = np.arange(len(tr))
            ax.plot(t, tr.windowed[name], label=f"windowed {names[name]}")
            ax.plot(t, tr.thresholds[name], "k--", label="threshold")
            if horizon is not None and horizon < len(tr):
                # Past here no calibration success was still running: time-varying
                # thresholds repeat their last value, and a long rollout meets the level of
                # the longest successes.
                ax.axvline(
                    horizon - 0.5, color="grey", ls=":", lw=1.5, label="end of calibration data"
                )
            if tr.first_alarm is not None:
                ax.axvline(tr.first_alarm, color="red", lw=1.5, label="FIPER alarm")
            ax.set_xlabel("policy step")
            if row == 0:
                outcome = "success" if tr.success else "failure"
                ax.set_title(f"{task}, {r.group}, {outcome}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(f"FIPER ({describe_setting(chosen)}, α={alpha})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    cfg: Any, summary: dict[str, Any], results: dict[str, Any], out: Path, docs_img: Path | None
) -> None:
    """summary.json, table.md and plots (also into ``docs_img`` when given)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    parts = ["## Rollout outcomes (successes / rollouts), B = 32", outcome_table(summary)]
    for label in ("b32", "b256"):
        if label not in summary:
            continue
        for alpha in summary[label]["methods"]["fiper"]:
            parts += [
                f"## {label}, α = {alpha} (test; mean ± std over split seeds)",
                markdown_table(summary, label, alpha),
                f"### {label}, α = {alpha}, without the clock",
                markdown_table(summary, label, alpha, clock=False),
                f"### alarm rate per group, {label}, α = {alpha}",
                group_table(summary, label, alpha),
                f"### alarm rate per condition, {label}, α = {alpha}",
                group_table(summary, label, alpha, detail=True),
                f"### alarm rate per condition, {label}, α = {alpha}, without the clock",
                group_table(summary, label, alpha, detail=True, clock=False),
            ]
    text = "\n\n".join(parts) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_sweep(summary, plots / "robot_alpha_sweep.png")
    plot_traces(cfg, summary, out, plots / "robot_traces.png")
    if docs_img is not None:
        import shutil

        docs_img.mkdir(parents=True, exist_ok=True)
        for name in ("robot_alpha_sweep.png", "robot_traces.png"):
            shutil.copy(plots / name, docs_img / name)
        update_docs(summary, docs_img.parent / "BENCHMARKS.md")


SECTION_TITLE = "## Robot benchmark (MetaWorld)"
START, END = "<!-- robot:start -->", "<!-- robot:end -->"


def docs_tables(summary: dict[str, Any]) -> str:
    """The generated part of the docs section: outcomes, result tables, per-group rates."""
    cfg = summary["config"]
    parts = [
        "Generated by `python -m benchmarks.robot.run --docs`; numbers from "
        "`benchmarks/results/robot/summary.json`.",
        "**Rollouts** (successes / rollouts, B = 32; episode seeds disjoint from the "
        "demonstrations):",
        outcome_table(summary),
    ]
    for label, title in (
        ("b32", "B = 32 sampled chunks"),
        ("b256", "B = 256 sampled chunks (paper configuration, subset)"),
    ):
        if label not in summary:
            continue
        for alpha in summary[label]["methods"]["fiper"]:
            parts += [
                f"**Test results, {title}, α = {alpha}**: mean ± std over "
                f"{len(summary[label]['seeds'])} split/score seeds of the mean over the tasks "
                f"{', '.join(summary[label]['tasks'])}. DT: detection time (lower = earlier); "
                "FAR on ID successes: alarm rate on held-out in-distribution successes.",
                markdown_table(summary, label, alpha),
                f"*Without the clock* ({title}, α = {alpha}): the same detectors with every "
                "alarm at or after the length of the longest calibration success removed.",
                markdown_table(summary, label, alpha, clock=False),
            ]
    alpha0 = str(cfg["alphas"][0])
    parts += [
        f"**Alarm rate per group** (B = 32, α = {alpha0}; mean ± std over tasks × seeds). "
        "A good detector is quiet in the success columns and loud in the fail columns.",
        group_table(summary, "b32", alpha0),
        group_table(summary, "b32", alpha0, detail=True),
        f"**Alarm rate per condition without the clock** (B = 32, α = {alpha0}):",
        group_table(summary, "b32", alpha0, detail=True, clock=False),
        "![FIPER traces](img/robot_traces.png)",
        "![TPR, TNR and DT against alpha](img/robot_alpha_sweep.png)",
    ]
    return "\n\n".join(parts)


def update_docs(summary: dict[str, Any], path: Path) -> None:
    """Replace the generated block of the robot section of ``docs/BENCHMARKS.md`` (only it).

    The section is created at the end of the file if it does not exist yet.
    """
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{START}\n{docs_tables(summary)}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    elif SECTION_TITLE in text:
        head, tail = text.split(SECTION_TITLE, 1)
        text = head + SECTION_TITLE + "\n\n" + block + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION_TITLE}\n\n{block}\n"
    path.write_text(text)
