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
CONDITIONS = (
    "id",
    "ood-pos",
    "ood-friction",
    "ood-push",
    "ood-noise",
    "ood-obstacle",
    "ood-stuck",
    "ood-slow",
)
#: The "stuck but confident" conditions (issue 9): the policy keeps acting as in training,
#: but the world does not move as it expects.
STUCK_CONDITIONS = ("ood-obstacle", "ood-stuck", "ood-slow")


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
    obstacle : ndarray or None
        ``ood-obstacle``, free objects: centre (3) and half-sizes (3) of an unseen static box
        on the table between the object and the goal.
    door_stop : float or None
        ``ood-obstacle``, door: the hinge stops at this opening angle (rad), as if a door
        stop stood in its swing path.
    stick_friction : float
        ``ood-stuck``: dry friction (MuJoCo ``frictionloss``, N or N·m) on the object's free
        joint or the door hinge, so the object sticks to the table / the hinge is seized.
    action_scale : float
        ``ood-slow``: multiplier on the arm's per-step displacement (a slowed actuator).
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
    obstacle: NDArray[np.float64] | None = None
    door_stop: float | None = None
    stick_friction: float = 0.0
    action_scale: float = 1.0
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
    elif condition == "ood-obstacle":
        if task.dynamics == "object":
            # a wall across the object's way to the goal, at 35-65 % of the way; its height
            # decides whether the object can pass (pick-place lifts it, push cannot)
            obj, goal = rand_vec[:3], rand_vec[3:6]
            frac = rng.uniform(0.35, 0.65)
            centre_xy = obj[:2] + frac * (goal[:2] - obj[:2])
            height = rng.uniform(0.02, 0.12)
            direction = (goal[:2] - obj[:2]) / max(1e-9, float(np.linalg.norm(goal[:2] - obj[:2])))
            # a post of random width, off the straight line by a random amount: it may
            # block the way fully, partly, or not at all
            half = np.array([0.015, rng.uniform(0.015, 0.06), height / 2])
            lateral = rng.uniform(-0.08, 0.08)
            centre_xy = centre_xy + lateral * np.array([-direction[1], direction[0]])
            angle = float(np.arctan2(direction[1], direction[0]))
            spec.obstacle = np.array([*centre_xy, height / 2, *half, angle])
            info.update(
                obstacle_height=float(height),
                obstacle_fraction=float(frac),
                obstacle_lateral=float(lateral),
                obstacle_half_width=float(half[1]),
            )
        else:
            spec.door_stop = float(rng.uniform(0.8, 2.0))
            info["door_stop_rad"] = spec.door_stop
    elif condition == "ood-stuck":
        # dry friction on the object / hinge: from "heavy" to "glued"
        low, high = (100.0, 5000.0) if task.dynamics == "object" else (300.0, 30000.0)
        spec.stick_friction = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        info["stick_friction"] = spec.stick_friction
    elif condition == "ood-slow":
        spec.action_scale = float(rng.uniform(0.3, 0.9))
        info["action_scale"] = spec.action_scale
    spec.info = info
    return spec


def make_env(task: TaskSpec, seed: int = 0, obstacle: bool = False) -> Any:
    """Create the goal-observable MetaWorld environment of ``task``.

    With ``obstacle=True`` the MuJoCo model is rebuilt from the task's XML with one extra
    static box body (``fg_obstacle``), parked under the floor until an episode places it.
    The policy never sees it: its observation has no entry for it.
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task.name}-goal-observable"](seed=seed)
    env.max_path_length = max(env.max_path_length, task.max_steps + 1)
    if obstacle and task.dynamics == "object":
        import mujoco

        mjspec = mujoco.MjSpec.from_file(env.fullpath)
        body = mjspec.worldbody.add_body(name="fg_obstacle", pos=[0.0, 0.0, -2.0])
        body.add_geom(
            name="fg_obstacle_geom",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.2, 0.2, 0.2],  # largest size; episodes shrink it (keeps rbound valid)
            rgba=[0.4, 0.4, 0.4, 1.0],
        )
        model = mjspec.compile()
        # MetaWorld rewrites the mocap weld after loading its XML: keep its version
        model.eq_data[:] = env.model.eq_data
        env.model = model
        env.data = mujoco.MjData(model)
    model = env.model
    env._failguard_nominal = {  # nominal dynamics, restored before every episode
        "body_mass": model.body_mass.copy(),
        "geom_friction": model.geom_friction.copy(),
        "dof_damping": model.dof_damping.copy(),
        "body_inertia": model.body_inertia.copy(),
        "dof_frictionloss": model.dof_frictionloss.copy(),
        "jnt_range": model.jnt_range.copy(),
        "jnt_limited": model.jnt_limited.copy(),
        "action_scale": float(env.action_scale),
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
    model.dof_frictionloss[:] = nominal["dof_frictionloss"]
    model.jnt_range[:] = nominal["jnt_range"]
    model.jnt_limited[:] = nominal["jnt_limited"]
    env.action_scale = nominal["action_scale"] * spec.action_scale
    _place_obstacle(env, spec)
    if spec.door_stop is not None:
        joint = model.joint("doorjoint").id
        low, high = model.jnt_range[joint]
        # the door opens towards negative angles in door-open-v3
        model.jnt_limited[joint] = 1
        model.jnt_range[joint] = [max(low, -spec.door_stop), high if high > 0 else 0.0]
    if spec.stick_friction > 0:
        name = "objjoint" if task.dynamics == "object" else "doorjoint"
        joint = model.joint(name).id
        adr = int(model.jnt_dofadr[joint])
        n = 6 if task.dynamics == "object" else 1
        model.dof_frictionloss[adr : adr + n] = spec.stick_friction
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


def _place_obstacle(env: Any, spec: EpisodeSpec) -> None:
    """Move the obstacle box of an ``obstacle=True`` env into place (or under the floor)."""
    try:
        body = env.model.body("fg_obstacle").id
    except KeyError as err:
        if spec.obstacle is not None:
            raise ValueError(
                "this episode has an obstacle: create the env with make_env(..., obstacle=True)"
            ) from err
        return
    geom = env.model.geom("fg_obstacle_geom").id
    if spec.obstacle is None:
        env.model.body_pos[body] = [0.0, 0.0, -2.0]
        return
    centre, half, angle = spec.obstacle[:3], spec.obstacle[3:6], float(spec.obstacle[6])
    env.model.body_pos[body] = centre
    env.model.body_quat[body] = [np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)]
    env.model.geom_size[geom] = half
    env.model.geom_rbound[geom] = float(np.linalg.norm(half))
    env.model.geom_aabb[geom] = [0.0, 0.0, 0.0, *half]


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
