"""LunarLander with real, physical distribution shifts and a task-defined success test.

The in-distribution (ID) task is gymnasium's discrete ``LunarLander-v3`` with its default
physics. Each out-of-distribution (OOD) group changes one real property of the world:

===============  ==================================================================
group            what changes (drawn per rollout from the range below)
===============  ==================================================================
``id``           nothing: gravity -10, no wind, engines at full power
``ood-gravity``  gravity in [-14, -11.5] (training used -10 only)
``ood-wind``     gymnasium's wind model on: wind power in [5, 15], turbulence [0.5, 1.5]
``ood-engine``   main and side engines at 60-85 % of their nominal power
``ood-noise``    Gaussian sensor noise (std 0.03-0.12) on the 6 kinematic observations
``ood-init``     an extra push at reset (force 1500-3000, direction sideways or
                 upwards), so the lander starts outside the training range of initial
                 velocities (gymnasium's own initial force is at most 1000 per axis)
``ood-fade``     the main engine fails slowly: from a step in [30, 150] its power
                 falls linearly, over 100-400 steps, to 15-70 % of nominal
``ood-updraft``  a cushion of rising air over the ground: below a height of 1.5-4
                 world units above the pad an upward force grows linearly towards
                 the ground, up to 0.6-1.8 times the lander's weight; above 1 the
                 lander cannot sink below a hover height with its engines off
===============  ==================================================================

``ood-fade`` and ``ood-updraft`` are the "stuck but confident" groups of issue 9: the
observations stay ordinary, the policy keeps doing what it learned, and the world does not
respond as it expects (it cannot brake, or it cannot come down).

The ranges were set so that each OOD group mixes failures with benign OOD successes (a good
detector should stay quiet on the latter).

Success is defined by the task, not by reward: the episode must end with the lander at rest
(Box2D put its body to sleep), no crash (the hull never touched the ground), and the lander
between the two flags (``|x| <= 0.2`` in the normalised observation, i.e. on the helipad).
Flying off-screen, crashing, or still hovering at the 1000-step time limit are failures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "GROUPS",
    "HELIPAD_HALF_WIDTH",
    "MAX_STEPS",
    "Shift",
    "ShiftedLander",
    "sample_shift",
]

GROUPS: tuple[str, ...] = (
    "id",
    "ood-gravity",
    "ood-wind",
    "ood-engine",
    "ood-noise",
    "ood-init",
    "ood-fade",
    "ood-updraft",
)
HELIPAD_HALF_WIDTH = 0.2
MAX_STEPS = 1000


@dataclass(frozen=True)
class Shift:
    """Physical parameters of one rollout's world.

    Parameters
    ----------
    group : str
        The group label recorded with the rollout (one of :data:`GROUPS`).
    gravity : float
        Vertical gravity (negative is down); gymnasium's default is -10.
    wind_power, turbulence_power : float
        Strength of gymnasium's wind and rotational turbulence; 0 switches wind off.
    engine_scale : float
        Multiplier on the main and side engine power.
    obs_noise : float
        Standard deviation of Gaussian noise added to the 6 kinematic observations.
    init_push : float
        Magnitude of an extra force applied to the lander at reset.
    init_angle : float
        Direction of that force in radians (0 = +x).
    fade_start, fade_steps : int
        ``ood-fade``: the step at which the main engine starts to lose power and how many
        steps it takes to reach ``fade_final`` (0 steps: no fade).
    fade_final : float
        ``ood-fade``: the main engine's final power multiplier.
    updraft_height : float
        ``ood-updraft``: height (world units) above the pad below which the updraft acts
        (0: no updraft).
    updraft_strength : float
        ``ood-updraft``: the updraft's force at the ground, in multiples of the lander's
        weight.
    """

    group: str = "id"
    gravity: float = -10.0
    wind_power: float = 0.0
    turbulence_power: float = 0.0
    engine_scale: float = 1.0
    obs_noise: float = 0.0
    init_push: float = 0.0
    init_angle: float = 0.0
    fade_start: int = 0
    fade_steps: int = 0
    fade_final: float = 1.0
    updraft_height: float = 0.0
    updraft_strength: float = 0.0

    def main_engine_scale(self, step: int) -> float:
        """Power multiplier of the main engine at ``step`` (``ood-fade``; else 1)."""
        if self.fade_steps <= 0 or step <= self.fade_start:
            return 1.0
        frac = min(1.0, (step - self.fade_start) / self.fade_steps)
        return 1.0 + frac * (self.fade_final - 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters (stored in the rollout metadata)."""
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_shift(group: str, rng: np.random.Generator) -> Shift:
    """Draw the world parameters of one rollout of ``group``.

    Parameters
    ----------
    group : str
        One of :data:`GROUPS`.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    Shift
        The parameters.

    Raises
    ------
    ValueError
        For an unknown group.
    """
    if group == "id":
        return Shift(group)
    if group == "ood-gravity":
        return Shift(group, gravity=float(rng.uniform(-14.0, -11.5)))
    if group == "ood-wind":
        return Shift(
            group,
            wind_power=float(rng.uniform(5.0, 15.0)),
            turbulence_power=float(rng.uniform(0.5, 1.5)),
        )
    if group == "ood-engine":
        return Shift(group, engine_scale=float(rng.uniform(0.6, 0.85)))
    if group == "ood-noise":
        return Shift(group, obs_noise=float(rng.uniform(0.03, 0.12)))
    if group == "ood-init":
        # a push mostly sideways or upwards, never straight into the ground
        angle = float(rng.uniform(-0.25 * math.pi, 1.25 * math.pi))
        return Shift(group, init_push=float(rng.uniform(1500.0, 3000.0)), init_angle=angle)
    if group == "ood-fade":
        return Shift(
            group,
            fade_start=int(rng.integers(30, 150)),
            fade_steps=int(rng.integers(100, 400)),
            fade_final=float(rng.uniform(0.15, 0.7)),
        )
    if group == "ood-updraft":
        return Shift(
            group,
            updraft_height=float(rng.uniform(1.5, 4.0)),
            updraft_strength=float(rng.uniform(0.6, 1.8)),
        )
    raise ValueError(f"Unknown group {group!r}; expected one of {GROUPS}.")


@contextlib.contextmanager
def _engine_power(scale: float, main_scale: float = 1.0) -> Iterator[None]:
    """Scale gymnasium's module-level engine constants for the duration of one step
    (``main_scale`` multiplies the main engine on top of ``scale``)."""
    from gymnasium.envs.box2d import lunar_lander as ll

    main, side = ll.MAIN_ENGINE_POWER, ll.SIDE_ENGINE_POWER
    ll.MAIN_ENGINE_POWER, ll.SIDE_ENGINE_POWER = main * scale * main_scale, side * scale
    try:
        yield
    finally:
        ll.MAIN_ENGINE_POWER, ll.SIDE_ENGINE_POWER = main, side


class ShiftedLander:
    """Discrete LunarLander-v3 under a :class:`Shift`, with a task-defined success flag.

    Parameters
    ----------
    shift : Shift
        World parameters of this rollout.
    seed : int
        Seed of the environment (terrain, initial impulse, wind phase) and of the noise.

    Examples
    --------
    >>> env = ShiftedLander(Shift("id"), seed=0)  # doctest: +SKIP
    >>> obs = env.reset()
    >>> obs, reward, done = env.step(0)
    """

    def __init__(self, shift: Shift, seed: int) -> None:
        import gymnasium as gym

        self.shift = shift
        self.seed = int(seed)
        self._env = gym.make(
            "LunarLander-v3",
            continuous=False,
            enable_wind=shift.wind_power > 0.0 or shift.turbulence_power > 0.0,
            wind_power=shift.wind_power if shift.wind_power > 0 else 15.0,
            turbulence_power=shift.turbulence_power if shift.turbulence_power > 0 else 1.5,
            max_episode_steps=MAX_STEPS,
        )
        # gymnasium bounds the constructor argument to (-12, 0); the world itself accepts any
        # gravity, and reset() builds the Box2D world from this attribute.
        self._env.unwrapped.gravity = shift.gravity  # type: ignore[attr-defined]
        self._noise_rng = np.random.default_rng(self.seed + 7919)
        self.steps = 0
        self.outcome = "running"

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        out = np.asarray(obs, dtype=np.float32).copy()
        #: the lander's true (x, y) position, before any sensor noise (``Rollout.states``)
        self.position = out[:2].copy()
        if self.shift.obs_noise > 0.0:
            out[:6] += self._noise_rng.normal(0.0, self.shift.obs_noise, size=6).astype(np.float32)
        return out

    def reset(self) -> np.ndarray:
        """Start the rollout; returns the (possibly noisy) first observation."""
        obs, _ = self._env.reset(seed=self.seed)
        if self.shift.init_push > 0.0:
            lander = self._env.unwrapped.lander  # type: ignore[attr-defined]
            force = (
                self.shift.init_push * math.cos(self.shift.init_angle),
                self.shift.init_push * math.sin(self.shift.init_angle),
            )
            lander.ApplyForceToCenter(force, True)
        self.steps = 0
        self.outcome = "running"
        return self._observe(obs)

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Apply one discrete action (0 noop, 1 left, 2 main, 3 right).

        Returns
        -------
        obs : numpy.ndarray
            Next (possibly noisy) observation.
        reward : float
            gymnasium's shaped reward (used for training only).
        done : bool
            Whether the rollout is over; then :attr:`success` and :attr:`outcome` are final.
        """
        main_scale = self.shift.main_engine_scale(self.steps)
        if self.shift.updraft_strength > 0.0:
            self._apply_updraft()
        if self.shift.engine_scale != 1.0 or main_scale != 1.0:
            with _engine_power(self.shift.engine_scale, main_scale):
                obs, reward, terminated, truncated, _ = self._env.step(int(action))
        else:
            obs, reward, terminated, truncated, _ = self._env.step(int(action))
        self.steps += 1
        if terminated or truncated:
            self.outcome = self._classify(np.asarray(obs), bool(terminated))
        return self._observe(obs), float(reward), bool(terminated or truncated)

    def _apply_updraft(self) -> None:
        """Push the lander up in the cushion of air over the ground (``ood-updraft``).

        Box2D clears forces after every world step, so the force is applied before each.
        """
        u = self._env.unwrapped
        lander = u.lander  # type: ignore[attr-defined]
        height = float(lander.position[1]) - float(u.helipad_y)  # type: ignore[attr-defined]
        depth = 1.0 - height / self.shift.updraft_height
        if depth <= 0.0:
            return
        weight = float(lander.mass) * abs(self.shift.gravity)
        force = self.shift.updraft_strength * min(1.0, depth) * weight
        lander.ApplyForceToCenter((0.0, force), True)

    def _classify(self, obs: np.ndarray, terminated: bool) -> str:
        u = self._env.unwrapped
        if not terminated:
            return "timeout"
        if u.game_over:  # type: ignore[attr-defined]
            return "crash"
        if abs(float(obs[0])) >= 1.0:
            return "off-screen"
        if u.lander.awake:  # type: ignore[attr-defined]
            return "not-at-rest"
        if abs(float(obs[0])) > HELIPAD_HALF_WIDTH:
            return "outside-flags"
        return "landed"

    @property
    def success(self) -> bool:
        """True iff the rollout ended landed safely between the flags and at rest."""
        return self.outcome == "landed"

    def close(self) -> None:
        """Release the environment."""
        self._env.close()
