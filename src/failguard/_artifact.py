"""A detector's artifact on disk: ``config.json`` (strict schema) and ``model.safetensors``.

:meth:`FailureDetector.save <failguard.FailureDetector.save>` and
:meth:`FailureDetector.load <failguard.FailureDetector.load>` are thin wrappers around
:func:`save_detector` and :func:`load_detector`. No pickle: the config is JSON, the arrays
safetensors, and a SHA-256 over both is checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._version import SCHEMA_VERSION, __version__
from .calibration.calibrator import CalibrationResult
from .calibration.conformal import Profile
from .core.spec import MAX_INPUT_DIM, MAX_INPUT_SIZE, MAX_SCORES, MAX_TABLE_LENGTH
from .exceptions import ArtifactError
from .scores._base import score_from_config

if TYPE_CHECKING:
    from .detector import FailureDetector

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_detector", "save_detector"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Largest config.json that load reads (a saved config is a few kB to a few MB).
MAX_CONFIG_BYTES = 64 * 2**20
_CONFIG_KEYS = {
    "schema",
    "failguard_version",
    "kind",
    "params",
    "scores",
    "n_fit",
    "n_calibration",
    "fit_fingerprints",
    "settings",
    "calibration",
    "groups",
    "sha256",
    "longest_calibration",
    "fit_sources",
    "calibration_fingerprints",
    "calibration_groups",
}
# Keys that configs saved by earlier versions of this schema may lack. A key added to
# FailureDetector.save must be added to _CONFIG_KEYS (and here), or load refuses the file.
_OPTIONAL_KEYS = {
    "failguard_version",
    "sha256",
    "longest_calibration",
    "fit_sources",
    "calibration_fingerprints",
    "calibration_groups",
}
_REQUIRED_KEYS = _CONFIG_KEYS - _OPTIONAL_KEYS
_PARAM_KEYS = {
    "windows",
    "window_kind",
    "combine",
    "threshold",
    "alpha",
    "guarantee",
    "delta",
    "calibration",
    "split",
    "trim",
    "min_support",
    "mondrian",
    "mode",
    "random_state",
}


def _artifact_digest(weights: bytes, config: Mapping[str, Any]) -> str:
    """SHA-256 of the weights file's bytes and of the config (without its own checksum)."""
    h = hashlib.sha256(weights)
    body = {k: v for k, v in config.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def _check_config(config: Any, where: Path) -> None:
    """The strict schema of config.json: keys, types and ranges, before anything is built."""

    def bad(message: str) -> ArtifactError:
        return ArtifactError(f"{where}: {message} The file is corrupt or was edited; re-save it.")

    def is_int(v: Any, lo: int = 0, hi: int = 2**62) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    missing = sorted(_REQUIRED_KEYS - set(config))
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if missing or unknown:
        raise bad(f"missing keys {missing}, unknown keys {unknown}.")
    params = config["params"]
    if not isinstance(params, dict) or set(params) != _PARAM_KEYS:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise bad(f"'params' must hold exactly {sorted(_PARAM_KEYS)}; got {got}.")
    scores = config["scores"]
    if not isinstance(scores, list) or not 1 <= len(scores) <= MAX_SCORES:
        raise bad(f"'scores' must be a list of 1 to {MAX_SCORES} score configs.")
    for i, sc in enumerate(scores):
        if not isinstance(sc, dict) or set(sc) != {"type", "params", "fitted"}:
            raise bad(f"score {i} must hold exactly 'type', 'params' and 'fitted'.")
        if not isinstance(sc["type"], str) or not isinstance(sc["params"], dict):
            raise bad(f"score {i}: 'type' must be a string and 'params' an object.")
        if not isinstance(sc["params"].get("name"), str):
            raise bad(f"score {i}: 'params.name' must be a string.")
        fitted = sc["fitted"]
        shapes = fitted.get("input_shapes") if isinstance(fitted, dict) else None
        if not isinstance(shapes, dict) or not all(
            isinstance(v, list) and 1 <= len(v) <= 4 and all(is_int(x, 1, MAX_INPUT_DIM) for x in v)
            for v in shapes.values()
        ):
            raise bad(f"score {i}: 'fitted.input_shapes' must map fields to lists of sizes.")
        for field, shape in shapes.items():
            if int(np.prod(shape)) > MAX_INPUT_SIZE:
                raise bad(f"score {i}: '{field}' of shape {shape} is absurdly large.")
    windows = params["windows"]
    if not isinstance(windows, dict) or set(windows) != {sc["params"].get("name") for sc in scores}:
        raise bad("'params.windows' must give a window for every score, by name.")
    for key in ("n_fit", "n_calibration"):
        if not is_int(config[key]):
            raise bad(f"'{key}' must be an int >= 0.")
    for key in ("fit_fingerprints", "calibration_fingerprints", "calibration_groups"):
        prints = config.get(key, [])
        if not isinstance(prints, list) or not all(isinstance(p, str) for p in prints):
            raise bad(f"'{key}' must be a list of strings.")
    sources = config.get("fit_sources", [])
    if not isinstance(sources, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in sources
    ):
        raise bad("'fit_sources' must be a list of [source, fingerprint] pairs.")
    longest = config.get("longest_calibration")
    if longest is not None and not is_int(longest):
        raise bad("'longest_calibration' must be an int >= 0 or null.")
    if not isinstance(config["settings"], dict):
        raise bad("'settings' must be an object.")
    if not isinstance(config["groups"], list):
        raise bad("'groups' must be a list.")
    infos = [c for c in (config["calibration"],) if c is not None] + config["groups"]
    for info in infos:
        if not isinstance(info, dict):
            raise bad("every calibration entry must be an object.")
        levels = info.get("levels")
        if not isinstance(levels, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            for v in levels.values()
        ):
            raise bad("'levels' must map indicators to finite numbers.")
        if not is_int(info.get("n_profile")) or not is_int(info.get("n_conformal")):
            raise bad("'n_profile' and 'n_conformal' must be ints >= 0.")
        stats = info.get("statistics")
        if not isinstance(stats, list) or not all(isinstance(k, str) for k in stats):
            raise bad("'statistics' must be a list of names.")
        notes = info.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(k, str) for k in notes):
            raise bad("'notes' must be a list of strings.")
    for info in config["groups"]:
        if not isinstance(info.get("name"), str):
            raise bad("every Mondrian group needs a string 'name'.")


def _check_calibration(res: CalibrationResult, names: Sequence[str], where: str) -> None:
    """Thresholds finite and positive, tables as the stored levels imply (one source of truth)."""
    for n in names:
        table = res.tables[n]
        if table.ndim != 1 or not 1 <= table.shape[0] <= MAX_TABLE_LENGTH:
            raise ArtifactError(f"{where}: the threshold table of {n!r} has shape {table.shape}.")
        if not np.all(np.isfinite(table)) or not np.all(table > 0):
            raise ArtifactError(
                f"{where}: the thresholds of {n!r} must be finite and positive; found "
                f"{table[~(np.isfinite(table) & (table > 0))][:3].tolist()}. The file is corrupt "
                "or was edited; re-save or recalibrate the detector."
            )
        prof = res.profiles[n]
        for label, arr in (("offset", prof.offset), ("scale", prof.scale)):
            if arr.ndim != 1 or arr.shape[0] > MAX_TABLE_LENGTH or not np.all(np.isfinite(arr)):
                raise ArtifactError(f"{where}: the {label} profile of {n!r} is not finite.")
        if n not in res.levels:
            raise ArtifactError(f"{where}: 'calibration.levels' lacks {n!r}.")
        implied = prof.thresholds(res.levels[n])
        if implied.shape != table.shape or not np.allclose(implied, table, rtol=1e-9, atol=0):
            raise ArtifactError(
                f"{where}: 'calibration.levels' in {CONFIG_FILE} ({n!r}: {res.levels[n]}) "
                f"disagrees with the thresholds in {WEIGHTS_FILE}; one of them was edited. "
                "Recalibrate and save the detector again."
            )
    for k, arr in res.statistics.items():
        if arr.ndim != 1 or not np.all(np.isfinite(arr)):
            raise ArtifactError(f"{where}: the calibration statistics {k!r} are not finite.")


def save_detector(det: FailureDetector, path: str | os.PathLike[str]) -> Path:
    """The body of :meth:`FailureDetector.save` (documented there): both files are
    serialised in full, then each is written to a temporary name and renamed into place."""
    from safetensors.numpy import save as st_save

    from .logs import _atomic_write_bytes

    det._require_fitted()
    tensors: dict[str, NDArray[Any]] = {}
    score_configs = []
    for i, s in enumerate(det.scores):
        score_configs.append(s.get_config())
        for k, v in s.get_tensors().items():
            tensors[f"scores.{i}.{k}"] = np.ascontiguousarray(v)

    def pack(prefix: str, res: CalibrationResult) -> dict[str, Any]:
        for kind, mapping in (("tables", res.tables), ("statistics", res.statistics)):
            for name, arr in mapping.items():
                tensors[f"{prefix}.{kind}.{name}"] = np.ascontiguousarray(arr)
        for name, prof in res.profiles.items():
            tensors[f"{prefix}.offset.{name}"] = np.ascontiguousarray(prof.offset)
            tensors[f"{prefix}.scale.{name}"] = np.ascontiguousarray(prof.scale)
        return {
            "levels": res.levels,
            "n_profile": res.n_profile,
            "n_conformal": res.n_conformal,
            "notes": res.notes,
            "statistics": sorted(res.statistics),
        }

    # every key here must be known to load's strict schema (_CONFIG_KEYS)
    config = {
        "schema": SCHEMA_VERSION,
        "failguard_version": __version__,
        "kind": "FailureDetector",
        "params": det.get_params(),
        "scores": score_configs,
        "n_fit": det.n_fit_,
        "n_calibration": det.n_calibration_,
        "longest_calibration": det.longest_calibration_,
        "fit_fingerprints": sorted(det.fitted_state.fit_fingerprints),
        "fit_sources": sorted([c, f] for c, f in det.fitted_state.fit_keys),
        "calibration_fingerprints": sorted(det.fitted_state.calibration_fingerprints),
        "calibration_groups": det.calibration_groups_,
        "settings": asdict(det.settings),
        "calibration": (
            None if det.calibration_ is None else pack("calibration.pooled", det.calibration_)
        ),
        # Groups are stored by position, so any group name is a safe tensor key.
        "groups": [
            {"name": g, **pack(f"calibration.group.{i}", r)}
            for i, (g, r) in enumerate(sorted(det.group_calibration_.items()))
        ],
    }
    weights = st_save(tensors)
    config["sha256"] = _artifact_digest(weights, config)
    text = json.dumps(config, indent=2).encode()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out / WEIGHTS_FILE, weights)
    _atomic_write_bytes(out / CONFIG_FILE, text)
    return out


def load_detector(
    cls: type[FailureDetector], path: str | os.PathLike[str], verify: bool = True
) -> FailureDetector:
    """The body of :meth:`FailureDetector.load` (documented there): schema, checksum,
    thresholds and shapes are verified before the detector is returned."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    d = Path(path)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ArtifactError(
                f"{p}: missing. A saved detector is a directory with "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}."
            )
    if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ArtifactError(
            f"{cfg_path}: {cfg_path.stat().st_size} bytes, over the {MAX_CONFIG_BYTES} a "
            "detector config can need; not a failguard config."
        )
    try:
        config = json.loads(cfg_path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({str(err)[:200]}).") from err
    if not isinstance(config, dict) or config.get("kind") != "FailureDetector":
        raise ArtifactError(f"{cfg_path}: not a failguard FailureDetector config.")
    if config.get("schema") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{cfg_path}: schema version {config.get('schema')!r} (failguard "
            f"{config.get('failguard_version')}), this failguard {__version__} reads "
            f"version {SCHEMA_VERSION}. Re-fit and save with this version."
        )
    try:
        _check_config(config, cfg_path)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        if isinstance(err, ArtifactError):
            raise
        raise ArtifactError(f"{cfg_path}: malformed config ({err!r}).") from err
    try:
        weights = w_path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{w_path}: cannot be read ({err}).") from err
    stored = config.get("sha256")
    if stored is None:
        warnings.warn(
            f"{d}: saved without a checksum (before failguard stored one), so it cannot be "
            "verified. Load it once and save it again (detector.save(path)) to add one.",
            UserWarning,
            stacklevel=2,
        )
    elif verify and _artifact_digest(weights, config) != stored:
        raise ArtifactError(
            f"{d}: checksum mismatch: the SHA-256 of {WEIGHTS_FILE} and {CONFIG_FILE} is not "
            f"the one stored at save time; a file is corrupt or was edited. Restore the "
            "directory from a copy, or fit and save the detector again."
        )
    try:
        tensors = st_load(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{w_path}: not a readable safetensors file ({err}).") from err
    try:
        scores = []
        for i, sc in enumerate(config["scores"]):
            prefix = f"scores.{i}."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            scores.append(score_from_config(sc, own))
        det = cls(scores=scores, **config["params"])

        def unpack(prefix: str, info: dict[str, Any]) -> CalibrationResult:
            names = det.names
            return CalibrationResult(
                tables={n: tensors[f"{prefix}.tables.{n}"] for n in names},
                statistics={k: tensors[f"{prefix}.statistics.{k}"] for k in info["statistics"]},
                profiles={
                    n: Profile(tensors[f"{prefix}.offset.{n}"], tensors[f"{prefix}.scale.{n}"])
                    for n in names
                },
                levels={k: float(v) for k, v in info["levels"].items()},
                n_profile=int(info["n_profile"]),
                n_conformal=int(info["n_conformal"]),
                notes=list(info.get("notes", [])),
            )

        if asdict(det.settings) != config["settings"]:
            raise ArtifactError(
                f"{cfg_path}: 'settings' {config['settings']} disagree with 'params' "
                f"({asdict(det.settings)}); the file was edited. Re-save the detector."
            )
        if config["calibration"] is not None:
            pooled = unpack("calibration.pooled", config["calibration"])
            _check_calibration(pooled, det.names, str(d))
            det.fitted_state.calibration = pooled
        det.fitted_state.group_calibration = {
            info["name"]: unpack(f"calibration.group.{i}", info)
            for i, info in enumerate(config.get("groups", []))
        }
        for res in det.group_calibration_.values():
            _check_calibration(res, det.names, str(d))
        if det.mondrian != bool(det.group_calibration_) and det.calibration_ is not None:
            raise ArtifactError(
                f"{cfg_path}: 'mondrian' is {det.mondrian} but the file holds "
                f"{len(det.group_calibration_)} group calibrations; the file was edited."
            )
        state = det.fitted_state
        state.fitted = True
        state.fit_fingerprints = set(config.get("fit_fingerprints", []))
        state.fit_keys = {(str(c), str(f)) for c, f in config.get("fit_sources", [])}
        state.calibration_fingerprints = set(config.get("calibration_fingerprints", []))
        state.calibration_groups = [str(g) for g in config.get("calibration_groups", [])]
        state.n_fit = int(config.get("n_fit", 0))
        state.n_calibration = int(config.get("n_calibration", 0))
        longest = config.get("longest_calibration")
        state.longest_calibration = None if longest is None else int(longest)
    except ArtifactError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        RuntimeError,
        MemoryError,
        OverflowError,
    ) as err:
        raise ArtifactError(f"{d}: inconsistent detector artifact ({err!r}).") from err
    return det
