"""A small PPO (clipped surrogate, GAE) for discrete LunarLander, on CPU.

The actor is an MLP ``8 -> h -> h -> 4`` with tanh activations; its second hidden layer is
the policy's *embedding*, the vector failguard's RND score watches. The critic is a separate
MLP of the same shape. Weights are stored as safetensors plus a JSON config (no pickle).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["PPOConfig", "Policy", "load_policy", "save_policy", "train_ppo"]

OBS_DIM = 8
N_ACTIONS = 4


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (values close to common LunarLander settings)."""

    total_steps: int = 1_000_000
    n_envs: int = 16
    n_steps: int = 512
    epochs: int = 4
    minibatch: int = 256
    lr: float = 3e-4
    gamma: float = 0.999
    gae_lambda: float = 0.98
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    seed: int = 0


def _mlp(n_in: int, hidden: int, n_out: int, out_gain: float) -> nn.Sequential:
    layers = nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, n_out),
    )
    for i, layer in enumerate(m for m in layers if isinstance(m, nn.Linear)):
        nn.init.orthogonal_(layer.weight, gain=out_gain if i == 2 else float(np.sqrt(2.0)))
        nn.init.zeros_(layer.bias)
    return layers


class Policy(nn.Module):
    """Categorical actor with a separate value critic.

    Parameters
    ----------
    hidden : int
        Width of both hidden layers; also the embedding size.
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.actor = _mlp(OBS_DIM, hidden, N_ACTIONS, out_gain=0.01)
        self.critic = _mlp(OBS_DIM, hidden, 1, out_gain=1.0)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's second hidden layer (after tanh): the policy embedding, shape (N, h)."""
        return self.actor[:4](obs)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embedding, logits)`` for a batch of observations."""
        emb = self.embed(obs)
        return emb, self.actor[4](emb)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State value, shape (N,)."""
        return self.critic(obs).squeeze(-1)


def save_policy(policy: Policy, directory: Path, info: dict[str, object]) -> None:
    """Write ``policy.safetensors`` and ``policy.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, str(directory / "policy.safetensors"))
    (directory / "policy.json").write_text(json.dumps({"hidden": policy.hidden, **info}, indent=2))


def load_policy(directory: Path) -> Policy:
    """Read a policy written by :func:`save_policy`."""
    from safetensors.torch import load_file

    info = json.loads((directory / "policy.json").read_text())
    policy = Policy(hidden=int(info["hidden"]))
    policy.load_state_dict(load_file(str(directory / "policy.safetensors")))
    policy.eval()
    return policy


def train_ppo(cfg: PPOConfig, log_every: int = 5) -> tuple[Policy, dict[str, object]]:
    """Train a PPO policy on the in-distribution task (default LunarLander-v3 physics).

    Parameters
    ----------
    cfg : PPOConfig
        Hyper-parameters.
    log_every : int
        Print a progress line every ``log_every`` updates.

    Returns
    -------
    policy : Policy
        The trained policy (eval mode).
    info : dict
        Training summary: steps, wall time, mean return of the last 100 episodes.
    """
    import gymnasium as gym
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    envs = [gym.make("LunarLander-v3") for _ in range(cfg.n_envs)]
    obs = np.stack([e.reset(seed=int(rng.integers(2**31)))[0] for e in envs]).astype(np.float32)
    policy = Policy(cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    n_updates = max(1, cfg.total_steps // (cfg.n_envs * cfg.n_steps))
    shape = (cfg.n_steps, cfg.n_envs)
    buf_obs = np.zeros((*shape, OBS_DIM), np.float32)
    buf_act = np.zeros(shape, np.int64)
    buf_logp = np.zeros(shape, np.float32)
    buf_rew = np.zeros(shape, np.float32)
    buf_done = np.zeros(shape, np.float32)
    buf_val = np.zeros(shape, np.float32)
    ep_ret = np.zeros(cfg.n_envs)
    finished: list[float] = []
    t0 = time.time()
    bar = tqdm(range(n_updates), desc="PPO", unit="update", mininterval=10.0)
    for update in bar:
        frac = 1.0 - update / n_updates
        for group in opt.param_groups:
            group["lr"] = cfg.lr * frac
        policy.eval()
        for t in range(cfg.n_steps):
            with torch.no_grad():
                x = torch.from_numpy(obs)
                _, logits = policy(x)
                dist = torch.distributions.Categorical(logits=logits)
                act = dist.sample()
                buf_logp[t] = dist.log_prob(act).numpy()
                buf_val[t] = policy.value(x).numpy()
            buf_obs[t] = obs
            buf_act[t] = act.numpy()
            for i, env in enumerate(envs):
                o, r, term, trunc, _ = env.step(int(buf_act[t, i]))
                ep_ret[i] += r
                buf_rew[t, i] = r
                # a time-limit truncation is treated as terminal (simple and harmless here)
                buf_done[t, i] = float(term or trunc)
                if term or trunc:
                    finished.append(float(ep_ret[i]))
                    ep_ret[i] = 0.0
                    o, _ = env.reset(seed=int(rng.integers(2**31)))
                obs[i] = o
        with torch.no_grad():
            next_val = policy.value(torch.from_numpy(obs)).numpy()
        adv = np.zeros(shape, np.float32)
        last = np.zeros(cfg.n_envs, np.float32)
        for t in reversed(range(cfg.n_steps)):
            nv = next_val if t == cfg.n_steps - 1 else buf_val[t + 1]
            nonterminal = 1.0 - buf_done[t]
            delta = buf_rew[t] + cfg.gamma * nv * nonterminal - buf_val[t]
            last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
            adv[t] = last
        ret = adv + buf_val
        b_obs = torch.from_numpy(buf_obs.reshape(-1, OBS_DIM))
        b_act = torch.from_numpy(buf_act.reshape(-1))
        b_logp = torch.from_numpy(buf_logp.reshape(-1))
        b_adv = torch.from_numpy(adv.reshape(-1))
        b_ret = torch.from_numpy(ret.reshape(-1))
        policy.train()
        n = b_obs.shape[0]
        for _ in range(cfg.epochs):
            perm = torch.randperm(n)
            for start in range(0, n, cfg.minibatch):
                idx = perm[start : start + cfg.minibatch]
                _, logits = policy(b_obs[idx])
                dist = torch.distributions.Categorical(logits=logits)
                logp = dist.log_prob(b_act[idx])
                ratio = torch.exp(logp - b_logp[idx])
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = -torch.min(ratio * a, torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * a)
                v_loss = 0.5 * (policy.value(b_obs[idx]) - b_ret[idx]).pow(2).mean()
                loss = pg.mean() + cfg.vf_coef * v_loss - cfg.ent_coef * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
        recent = float(np.mean(finished[-100:])) if finished else float("nan")
        bar.set_postfix(ret=f"{recent:.0f}", eps=len(finished), refresh=False)
        if log_every and (update + 1) % log_every == 0:
            steps = (update + 1) * cfg.n_envs * cfg.n_steps
            print(
                f"[ppo] update {update + 1}/{n_updates} steps {steps} "
                f"return(100) {recent:.1f} episodes {len(finished)} "
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
    for env in envs:
        env.close()
    policy.eval()
    info: dict[str, object] = {
        "config": asdict(cfg),
        "steps": n_updates * cfg.n_envs * cfg.n_steps,
        "train_seconds": round(time.time() - t0, 1),
        "episodes": len(finished),
        "mean_return_last100": float(np.mean(finished[-100:])) if finished else None,
    }
    return policy, info
