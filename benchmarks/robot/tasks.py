"""MetaWorld tasks, the multimodal scripted expert and the distribution shifts of the benchmark.

Three tasks that fail in different ways:

- ``push-v3``: the puck is pushed with a closed gripper; failures are a puck that slides off
  the pushing line or a hand that misses it.
- ``pick-place-v3``: grasp a puck and carry it to a goal in the air; failures are missed
  grasps and drops.
- ``door-open-v3``: hook the handle and swing the door open; failures are a missed handle and
  a door too stiff to open within the horizon.

Every condition maps an episode seed to an :class:`EpisodeSpec` (positions, dynamics,
perturbation, sensor noise), so a rollout is fully reproducible from (task, condition, seed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CONDITIONS",
    "TASKS",
    "EpisodeSpec",
    "TaskSpec",
    "ViaPointExpert",
    "make_env",
    "policy_obs",
    "sample_episode",
]

#: Indices of the 39-d MetaWorld observation the policy sees: current frame (hand xyz,
#: gripper opening, object 1 pose, object 2 pose) and the goal.
OBS_INDEX = np.r_[0:18, 36:39]
#: Position entries of the policy observation (hand, object 1, goal) that sensor noise hits.
NOISY_INDEX = np.r_[0:3, 4:7, 18:21]
#: Condition names; ``"id"`` is the training distribution.
CONDITIONS = ("id", "ood-pos", "ood-friction", "ood-push", "ood-noise")


@dataclass(frozen=True)
class TaskSpec:
    """What differs between tasks.

    Attributes
    ----------
    name : str
        MetaWorld environment name.
    policy_class : str
        Name of the scripted expert in ``metaworld.policies``.
    pos_pad : float
        How far (m) outside the training range of the object position the ``ood-pos``
        condition samples, at most.
    dynamics : str
        ``"object"`` (scale the object's mass and friction) or ``"hinge"`` (scale the door
        hinge damping).
    max_steps : int
        Environment steps per episode.
    """

    name: str
    policy_class: str
    pos_pad: float
    dynamics: str
    max_steps: int = 200


TASKS: dict[str, TaskSpec] = {
    "push": TaskSpec("push-v3", "SawyerPushV3Policy", 0.12, "object"),
    "pick-place": TaskSpec("pick-place-v3", "SawyerPickPlaceV3Policy", 0.12, "object"),
    "door-open": TaskSpec("door-open-v3", "SawyerDoorOpenV3Policy", 0.12, "hinge", 240),
}


@dataclass
class EpisodeSpec:
    """Everything random about one episode, drawn from its seed.

    Attributes
    ----------
    rand_vec : ndarray
        MetaWorld's reset vector (object and goal positions).
    mass_scale, friction_scale, damping_scale : float
        Dynamics multipliers (1 = nominal).
    push_step : int or None
        Environment step at which the perturbation hits (``None``: no perturbation).
    push_offset : ndarray
        Displacement (m) applied at ``push_step`` to the object (free objects) or the hand.
    obs_noise : float
        Standard deviation (m) of Gaussian noise on the position entries the policy sees.
    expert_side : int
        Via-point side of the scripted expert (+1 / -1); used for demonstrations only.
    info : dict
        JSON-serialisable summary for rollout metadata.
    """

    rand_vec: NDArray[np.float64]
    mass_scale: float = 1.0
    friction_scale: float = 1.0
    damping_scale: float = 1.0
    push_step: int | None = None
    push_offset: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    obs_noise: float = 0.0
    expert_side: int = 1
    info: dict[str, Any] = field(default_factory=dict)


def _outside(rng: np.random.Generator, low: float, high: float, pad: float) -> float:
    """A value in ``[low - pad, low) ∪ (high, high + pad]``, at least 2 cm outside."""
    dist = rng.uniform(0.02, pad)
    return float(low - dist) if rng.random() < 0.5 else float(high + dist)


def sample_episode(task: TaskSpec, env: Any, condition: str, seed: int) -> EpisodeSpec:
    """Draw the episode of ``condition`` for ``seed`` (deterministic).

    Parameters
    ----------
    task : TaskSpec
        The task.
    env : MetaWorld env
        Used for its reset-space bounds.
    condition : str
        One of :data:`CONDITIONS` or ``"demo"`` (in-distribution, expert side drawn).
    seed : int
        Episode seed.

    Returns
    -------
    EpisodeSpec
    """
    if condition not in (*CONDITIONS, "demo"):
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    rng = np.random.default_rng(
        [seed, CONDITIONS.index(condition) if condition in CONDITIONS else 99]
    )
    low = np.asarray(env._random_reset_space.low, dtype=np.float64)
    high = np.asarray(env._random_reset_space.high, dtype=np.float64)
    rand_vec = rng.uniform(low, high)
    # MetaWorld's push / pick-place reset loops forever on a frozen vector whose object and
    # goal are closer than 15 cm in xy: reject such draws here.
    while rand_vec.size == 6 and np.linalg.norm(rand_vec[:2] - rand_vec[3:5]) < 0.16:
        rand_vec = rng.uniform(low, high)
    spec = EpisodeSpec(rand_vec=rand_vec, expert_side=int(rng.choice([-1, 1])))
    info: dict[str, Any] = {"condition": condition}
    if condition == "ood-pos":
        # object x (index 0) outside its training range; y (index 1) inside or beyond it
        rand_vec[0] = _outside(rng, low[0], high[0], task.pos_pad)
        if high[1] > low[1] and rng.random() < 0.5:
            rand_vec[1] = _outside(rng, low[1], high[1], task.pos_pad / 2)
        if rand_vec.size == 6 and np.linalg.norm(rand_vec[:2] - rand_vec[3:5]) < 0.16:
            rand_vec[4] = rand_vec[1] + 0.16  # keep the goal reachable (and the reset finite)
        info["object_xy"] = [float(rand_vec[0]), float(rand_vec[1])]
    elif condition == "ood-friction":
        if task.dynamics == "object":
            spec.mass_scale = float(np.exp(rng.uniform(np.log(2.0), np.log(12.0))))
            spec.friction_scale = float(np.exp(rng.uniform(np.log(0.05), np.log(0.6))))
        else:
            spec.damping_scale = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
        info.update(
            mass_scale=spec.mass_scale,
            friction_scale=spec.friction_scale,
            damping_scale=spec.damping_scale,
        )
    elif condition == "ood-push":
        spec.push_step = int(rng.integers(25, 70))
        angle = rng.uniform(0, 2 * np.pi)
        size = rng.uniform(0.04, 0.12)
        spec.push_offset = np.array([np.cos(angle) * size, np.sin(angle) * size, 0.0])
        info.update(push_step=spec.push_step, push_offset=spec.push_offset.tolist())
    elif condition == "ood-noise":
        spec.obs_noise = float(rng.uniform(0.002, 0.012))
        info["obs_noise"] = spec.obs_noise
    spec.info = info
    return spec


def make_env(task: TaskSpec, seed: int = 0) -> Any:
    """Create the goal-observable MetaWorld environment of ``task``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task.name}-goal-observable"](seed=seed)
    env.max_path_length = max(env.max_path_length, task.max_steps + 1)
    model = env.model
    env._failguard_nominal = {  # nominal dynamics, restored before every episode
        "body_mass": model.body_mass.copy(),
        "geom_friction": model.geom_friction.copy(),
        "dof_damping": model.dof_damping.copy(),
        "body_inertia": model.body_inertia.copy(),
    }
    return env


def _object_body(env: Any) -> int:
    return int(env.model.body("obj").id)


def reset_episode(env: Any, task: TaskSpec, spec: EpisodeSpec) -> NDArray[np.float64]:
    """Apply ``spec`` to ``env`` and reset it; returns the first raw observation."""
    model = env.model
    nominal = env._failguard_nominal
    model.body_mass[:] = nominal["body_mass"]
    model.body_inertia[:] = nominal["body_inertia"]
    model.geom_friction[:] = nominal["geom_friction"]
    model.dof_damping[:] = nominal["dof_damping"]
    if task.dynamics == "object":
        body = _object_body(env)
        model.body_mass[body] *= spec.mass_scale
        model.body_inertia[body] *= spec.mass_scale
        # MuJoCo combines the friction of two touching geoms with max(), so scaling only the
        # object's friction barely matters: scale the sliding friction of every geom.
        model.geom_friction[:, 0] *= spec.friction_scale
    else:
        joint = model.joint("doorjoint")
        model.dof_damping[model.jnt_dofadr[joint.id]] *= spec.damping_scale
    env._last_rand_vec = spec.rand_vec.copy()
    env._freeze_rand_vec = True
    obs, _ = env.reset()
    return np.asarray(obs, dtype=np.float64)


def apply_perturbation(env: Any, task: TaskSpec, spec: EpisodeSpec) -> None:
    """Displace the object (free objects) by ``spec.push_offset``, or shut the door and
    displace the hand."""
    if task.dynamics == "object":
        qpos = env.data.qpos.copy()
        adr = int(env.model.jnt_qposadr[env.model.joint("objjoint").id])
        qpos[adr : adr + 2] += spec.push_offset[:2]
        qvel = env.data.qvel.copy()
        qvel[:] = 0.0
        env.set_state(qpos, qvel)
    else:
        # the door is slammed shut and the hand knocked away: the policy must re-hook it
        qpos = env.data.qpos.copy()
        qpos[int(env.model.jnt_qposadr[env.model.joint("doorjoint").id])] = 0.0
        env.set_state(qpos, np.zeros_like(env.data.qvel))
        env.data.mocap_pos[0, :2] += spec.push_offset[:2] * 2.5


def policy_obs(
    raw: NDArray[np.float64], spec: EpisodeSpec, rng: np.random.Generator
) -> NDArray[np.float32]:
    """The observation the learned policy sees (with the condition's sensor noise)."""
    obs = raw[OBS_INDEX].astype(np.float64)
    if spec.obs_noise > 0:
        obs[NOISY_INDEX] += rng.normal(0.0, spec.obs_noise, size=NOISY_INDEX.size)
    return obs.astype(np.float32)


class ViaPointExpert:
    """MetaWorld's scripted expert with a left/right via-point on the approach.

    Before handing over to the scripted policy, the hand first travels to a via-point
    half-way to the object, shifted sideways by ``side * offset`` along x and lifted. The two
    sides give two equally valid approach paths, so the demonstrations are bimodal.

    Parameters
    ----------
    task : TaskSpec
        The task (selects the scripted policy).
    side : {-1, 1}
        Which way the via-point is shifted.
    offset : float, default=0.1
        Sideways shift of the via-point (m).
    """

    def __init__(self, task: TaskSpec, side: int, offset: float = 0.1) -> None:
        from metaworld import policies

        self.scripted: Callable[[NDArray[np.float64]], NDArray[np.float32]] = getattr(
            policies, task.policy_class
        )().get_action
        self.side = side
        self.offset = offset
        self.via: NDArray[np.float64] | None = None

    def reset(self, raw: NDArray[np.float64]) -> None:
        """Place the via-point for the episode that starts at observation ``raw``."""
        hand, target = raw[0:3], raw[4:7]
        via = hand + 0.5 * (target - hand)
        via[0] += self.side * self.offset
        via[2] = max(hand[2], target[2] + 0.1)
        self.via = via

    def __call__(self, raw: NDArray[np.float64]) -> NDArray[np.float32]:
        """Expert action (4-d, in [-1, 1]) for raw observation ``raw``."""
        if self.via is not None:
            delta = self.via - raw[0:3]
            if np.linalg.norm(delta) < 0.02:
                self.via = None
            else:
                act = np.zeros(4, dtype=np.float32)
                act[:3] = np.clip(10.0 * delta, -1.0, 1.0)
                act[3] = -1.0
                return act
        return np.clip(self.scripted(raw), -1.0, 1.0).astype(np.float32)
