"""A small flow-matching action-chunk policy trained by behaviour cloning (CPU, minutes).

The policy has two parts:

- an observation encoder (MLP) whose output, the *embedding*, conditions the action head;
  this is the vector failguard's RND-OE score watches;
- a flow-matching action head: a velocity field v(x, τ, e) over flattened action chunks,
  integrated from Gaussian noise at τ = 0 to an action chunk at τ = 1 with Euler steps.

Weights are saved with safetensors (config and normalisers in the header); no pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

__all__ = ["FlowPolicy", "PolicyConfig", "load_policy", "save_policy", "train_policy"]


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes and training settings of :class:`FlowPolicy`."""

    obs_dim: int = 21
    act_dim: int = 4
    horizon: int = 8
    exec_horizon: int = 4
    embed_dim: int = 64
    hidden: int = 256
    time_features: int = 16
    flow_steps: int = 10
    train_steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3


class FlowPolicy(nn.Module):
    """Observation encoder plus flow-matching chunk head.

    Parameters
    ----------
    config : PolicyConfig
        Sizes.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = nn.Sequential(
            nn.Linear(c.obs_dim, c.hidden),
            nn.Mish(),
            nn.Linear(c.hidden, c.hidden),
            nn.Mish(),
            nn.Linear(c.hidden, c.embed_dim),
        )
        flat = c.horizon * c.act_dim
        self.head = nn.Sequential(
            nn.Linear(flat + c.embed_dim + c.time_features, c.hidden),
            nn.Mish(),
            nn.Linear(c.hidden, c.hidden),
            nn.Mish(),
            nn.Linear(c.hidden, c.hidden),
            nn.Mish(),
            nn.Linear(c.hidden, flat),
        )
        self.register_buffer("obs_mean", torch.zeros(c.obs_dim))
        self.register_buffer("obs_std", torch.ones(c.obs_dim))
        self.register_buffer("act_mean", torch.zeros(c.act_dim))
        self.register_buffer("act_std", torch.ones(c.act_dim))
        freqs = torch.exp(torch.linspace(0.0, math.log(100.0), c.time_features // 2))
        self.register_buffer("freqs", freqs)

    def _time(self, tau: torch.Tensor) -> torch.Tensor:
        arg = tau[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Embedding of raw observations, shape (N, embed_dim)."""
        return self.encoder((obs - self.obs_mean) / self.obs_std)

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Flow velocity for flattened normalised chunks ``x`` at flow time ``tau``."""
        return self.head(torch.cat([x, emb, self._time(tau)], dim=1))

    @torch.no_grad()
    def act(
        self, obs: NDArray[np.float32], n_samples: int, generator: torch.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embed one observation and sample ``n_samples`` action chunks.

        Returns
        -------
        embedding : ndarray of shape (embed_dim,)
        chunks : ndarray of shape (n_samples, horizon, act_dim)
            In the environment's action units.
        """
        c = self.config
        emb = self.embed(torch.as_tensor(obs, dtype=torch.float32)[None])
        embs = emb.expand(n_samples, -1)
        x = torch.randn(n_samples, c.horizon * c.act_dim, generator=generator)
        dt = 1.0 / c.flow_steps
        for k in range(c.flow_steps):
            tau = torch.full((n_samples,), k * dt)
            x = x + dt * self.velocity(x, tau, embs)
        chunks = x.view(n_samples, c.horizon, c.act_dim) * self.act_std + self.act_mean
        return emb[0].numpy(), chunks.numpy()


def chunk_dataset(
    episodes: list[tuple[NDArray[np.float32], NDArray[np.float32]]], horizon: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Turn (observations, actions) episodes into (obs, chunk) pairs; chunks are padded with
    the episode's last action."""
    obs_all, chunk_all = [], []
    for obs, act in episodes:
        padded = np.concatenate([act, np.repeat(act[-1:], horizon - 1, axis=0)])
        idx = np.arange(len(act))[:, None] + np.arange(horizon)[None, :]
        obs_all.append(obs)
        chunk_all.append(padded[idx])
    return np.concatenate(obs_all), np.concatenate(chunk_all)


def train_policy(
    episodes: list[tuple[NDArray[np.float32], NDArray[np.float32]]],
    config: PolicyConfig,
    seed: int,
    desc: str = "train",
) -> FlowPolicy:
    """Behaviour cloning with the conditional flow-matching loss (linear paths).

    Parameters
    ----------
    episodes : list of (obs (T, obs_dim), actions (T, act_dim))
        Expert demonstrations.
    config : PolicyConfig
        Sizes and optimiser settings.
    seed : int
        Seed of initialisation, batches and noise (training is deterministic on one thread).
    desc : str
        Progress-bar label.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    obs_np, chunks_np = chunk_dataset(episodes, config.horizon)
    policy = FlowPolicy(config)
    obs = torch.as_tensor(obs_np)
    chunks = torch.as_tensor(chunks_np)
    policy.obs_mean.copy_(obs.mean(0))
    policy.obs_std.copy_(obs.std(0).clamp_min(1e-3))
    flat_act = chunks.reshape(-1, config.act_dim)
    policy.act_mean.copy_(flat_act.mean(0))
    policy.act_std.copy_(flat_act.std(0).clamp_min(1e-2))
    target = ((chunks - policy.act_mean) / policy.act_std).reshape(len(chunks), -1)
    opt = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.train_steps)
    n = len(obs)
    for _ in tqdm(range(config.train_steps), desc=desc, mininterval=5.0):
        idx = torch.randint(0, n, (config.batch_size,), generator=gen)
        x1 = target[idx]
        x0 = torch.randn(x1.shape, generator=gen)
        tau = torch.rand(config.batch_size, generator=gen)
        xt = (1 - tau[:, None]) * x0 + tau[:, None] * x1
        pred = policy.velocity(xt, tau, policy.embed(obs[idx]))
        loss = ((pred - (x1 - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    policy.eval()
    return policy


def save_policy(policy: FlowPolicy, path: Path) -> None:
    """Write weights and config to one safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(asdict(policy.config))})


def load_policy(path: Path) -> FlowPolicy:
    """Read a policy written by :func:`save_policy`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    policy = FlowPolicy(PolicyConfig(**json.loads(meta["config"])))
    policy.load_state_dict(load_file(str(path)))
    policy.eval()
    return policy
