"""Wrap a LeRobot-style policy so that every new action chunk is monitored (and recorded).

A LeRobot policy (``ACTPolicy``, ``DiffusionPolicy``, ``PI0Policy``, ...) is a
``torch.nn.Module`` with

- ``reset()``: clear the action queue at the start of an episode;
- ``select_action(batch)``: return one action ``(1, D)``; when its action queue is empty it
  runs inference, predicts a chunk of H actions and queues the first ``n_action_steps``;
- ``predict_action_chunk(batch)``: the chunk ``(N, H, D)`` for a batch of N observations.

:class:`LeRobotPolicyWrapper` keeps that interface. One FIPER step is one policy inference,
so the wrapper runs the monitor **once per new chunk**, not once per queued action. It never
changes what the policy returns: its own work runs after the policy's ``select_action``,
under ``torch.no_grad()`` inside ``torch.random.fork_rng`` with its own seed, so the policy's
random stream, queues and outputs are exactly those of the unwrapped policy.

How the B chunks and the embedding are obtained depends on the policy:

- **LeRobot's** ``DiffusionPolicy`` (recognised by its parts: ``policy._queues``,
  ``policy.config.n_obs_steps`` and ``policy.diffusion`` with ``_prepare_global_conditioning``
  and ``conditional_sample``). Its ``predict_action_chunk`` reads the policy's observation
  queues, not the batch it is given, and only ``select_action`` stacks the camera images into
  ``observation.images``. So after ``select_action`` has queued the current observation, the
  wrapper stacks the queues (the last ``n_obs_steps`` observations), encodes them once with
  ``_prepare_global_conditioning`` and draws the B chunks in **one** batched
  ``conditional_sample`` call conditioned on that encoding, keeping the ``n_action_steps``
  actions from the current step on, as ``predict_action_chunk`` does. The default embedding
  is that conditioning vector **of the current frame** (state, image features and
  environment state of the newest of the ``n_obs_steps`` observations): the input the
  denoiser is conditioned on. With ``embed_module`` (e.g. ``"diffusion.rgb_encoder"``) it is
  that submodule's output for the current frame (all cameras).
- **Any other policy**: ``predict_action_chunk`` on the observation repeated B times along
  the batch dimension, and the embedding from ``embed`` or from a forward hook on
  ``embed_module``. A policy that answers a repeated batch with a single chunk is sampled
  one call at a time (B times slower; a warning says so: pass ``sample_chunks``).

Real usage (LeRobot itself is not a dependency of failguard; ``scripts/lerobot_integration.sh``
runs this against LeRobot 0.4.4)::

    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors
    from failguard import FailureDetector
    from failguard.integrations import LeRobotPolicyWrapper

    policy = DiffusionPolicy.from_pretrained("lerobot/diffusion_pusht").eval()
    preprocess, postprocess = make_pre_post_processors(policy.config, "lerobot/diffusion_pusht")

    # 1. Deploy in record mode to collect successful rollouts (no detector needed).
    wrapped = LeRobotPolicyWrapper(policy, n_samples=32, record_dir="logs/pusht")
    wrapped.reset()
    ...  # action = postprocess(wrapped.select_action(preprocess(observation)))
    wrapped.end_episode(success=True)

    # 2. failguard fit logs/pusht -o detector/   (or FailureDetector().fit(...).calibrate(...))

    # 3. Deploy in monitor mode.
    wrapped = LeRobotPolicyWrapper(policy, detector=FailureDetector.load("detector"),
                                   n_samples=32, on_alarm=lambda v: robot.stop())
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..exceptions import ConfigError, ParameterError, RolloutError
from ..types import Verdict
from .generic import (
    AlarmHook,
    MonitoringSession,
    SessionOptions,
    check_chunks,
    check_n_samples,
    flat_float32,
    to_numpy,
)

if TYPE_CHECKING:
    from pathlib import Path

    from typing_extensions import Unpack

    from ..detector import FailureDetector

__all__ = ["LeRobotPolicyWrapper", "repeat_batch"]

Batch = Mapping[str, Any]


def repeat_batch(batch: Batch, n: int) -> dict[str, Any]:
    """Repeat every entry of a batch-size-1 observation ``n`` times along dimension 0.

    Tensors with a leading dimension of 1 are expanded (no copy); lists of length 1 (e.g. a
    language ``"task"``) are repeated; anything else is passed through unchanged.

    Examples
    --------
    >>> import torch
    >>> b = repeat_batch({"observation.state": torch.zeros(1, 3), "task": ["push"]}, 4)
    >>> tuple(b["observation.state"].shape), b["task"]
    ((4, 3), ['push', 'push', 'push', 'push'])
    """
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1:
            out[k] = v.expand(n, *v.shape[1:])
        elif isinstance(v, list) and len(v) == 1:
            out[k] = v * n
        else:
            out[k] = v
    return out


def _hooked_tensor(output: Any) -> torch.Tensor:
    """The tensor a hooked submodule returned (the first element of a tuple or list)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ParameterError(
            f"The hooked submodule returned a {type(output).__name__}; pass "
            "hook_transform=... (output -> tensor of shape (d,)) or embed=... instead."
        )
    return output


def _default_hook_transform(output: Any) -> torch.Tensor:
    output = _hooked_tensor(output)
    return output[0] if output.ndim >= 2 else output


def _lerobot_diffusion(policy: Any) -> Any:
    """LeRobot's inner ``DiffusionModel`` when ``policy`` is built like LeRobot's
    ``DiffusionPolicy`` (duck-typed: LeRobot is never imported), else None."""
    model = getattr(policy, "diffusion", None)
    n_obs_steps = getattr(getattr(policy, "config", None), "n_obs_steps", None)
    if (
        model is None
        or not isinstance(getattr(policy, "_queues", None), Mapping)
        or isinstance(n_obs_steps, bool)
        or not isinstance(n_obs_steps, int)
        or n_obs_steps < 1
    ):
        return None
    parts = ("_prepare_global_conditioning", "conditional_sample")
    return model if all(callable(getattr(model, m, None)) for m in parts) else None


class LeRobotPolicyWrapper:
    """Monitor (and/or record) a LeRobot-style policy, once per new action chunk.

    Parameters
    ----------
    policy : torch.nn.Module
        Has ``reset()``, ``select_action(batch)`` and ``predict_action_chunk(batch)``.
    detector : FailureDetector, optional
        Calibrated detector (monitor mode). Omit it and give ``record_dir`` to only record.
    embed : callable ``batch -> tensor``, optional
        The observation embedding for a batch-size-1 observation, shape (1, d) or (d,).
    embed_module : str, optional
        Dotted name of a submodule (``policy.get_submodule(name)``) whose forward output is
        the embedding; a forward hook captures it. Give exactly one of ``embed`` and
        ``embed_module``, or, for LeRobot's ``DiffusionPolicy``, neither: the embedding is
        then the denoiser's conditioning of the current frame. A submodule of a diffusion
        policy's denoiser (``"diffusion.unet"``) is refused: its output is a noise
        prediction, not an observation embedding.
    hook_transform : callable ``output -> tensor``, optional
        Maps the hooked module's output to the embedding of the current observation.
        Default: first element of a tuple output, then row 0 (batch-first outputs); for
        LeRobot's ``DiffusionPolicy`` the rows of the current frame (LeRobot encodes the
        ``n_obs_steps`` frames of one observation as rows ordered by frame, then camera; the
        current frame is last). Pass one for sequence-first or dict outputs.
    n_samples : int, default=32
        B, the number of chunks drawn per policy inference for the action-chunk entropy.
    n_action_steps : int, optional
        Actions executed per chunk. Default: ``policy.config.n_action_steps`` (or 1).
    chunk_boundary : {"auto", "queue", "steps"}, default="auto"
        How a new chunk is recognised. ``"queue"``: the policy's action queue
        (``policy._queues["action"]`` as in Diffusion/VQ-BeT, or ``policy._action_queue`` as
        in ACT) is empty before ``select_action``, i.e. the policy is about to run inference
        (exact, follows the policy's own logic). ``"steps"``: every ``n_action_steps`` calls
        of ``select_action`` since :meth:`reset`. ``"auto"``: the queue if one is found, else
        steps.
    sample_chunks : callable ``(policy, batch, n) -> tensor (n, H, D)``, optional
        Replace the default sampler (one batched ``conditional_sample`` for LeRobot's
        ``DiffusionPolicy``, else ``predict_action_chunk`` on the repeated batch).
    record_dir : str or path-like, optional
        Record every monitored step into rollout logs there (see :meth:`end_episode`).
    on_alarm : callable ``Verdict -> Any``, optional
        Called with every verdict that alarms (at most once per chunk).
    group : str, optional
        Mondrian group and group label of recorded rollouts.
    seed : int, default=0
        Seeds the monitor's own sampling (chunk k of an episode uses ``seed + k``).
    **options
        ``on_error``, ``strict``, ``nonfinite``, ``keep_verdicts``: see
        :class:`~failguard.integrations.MonitoringSession`. The policy's action is
        always returned: a monitoring failure (``embed``, the hook, the sampler, the monitor,
        ``on_alarm``) gives an ``"error"`` verdict; with ``strict=True`` it is raised at the
        next :meth:`select_action` or :meth:`reset`, before the policy runs again.

    Attributes
    ----------
    backend : {"lerobot-diffusion", "generic"}
        How chunks and embeddings are obtained (see the module docstring).
    session : MonitoringSession
        Monitor, recorder and verdict history.
    last_verdict : Verdict or None
        Verdict of the current chunk (kept until the next chunk starts).

    Examples
    --------
    >>> import tempfile, torch
    >>> from failguard.testing import ToyChunkPolicy
    >>> policy = ToyChunkPolicy(obs_dim=4, n_action_steps=4)
    >>> wrapped = LeRobotPolicyWrapper(policy, embed_module="encoder", n_samples=8,
    ...                                record_dir=tempfile.mkdtemp())
    >>> wrapped.reset()
    >>> for t in range(8):
    ...     action = wrapped.select_action({"observation.state": torch.zeros(1, 4)})
    >>> wrapped.n_chunks, tuple(action.shape)
    (2, (1, 2))
    >>> wrapped.end_episode(success=True).name
    'rollout_000000.safetensors'
    """

    def __init__(
        self,
        policy: Any,
        detector: FailureDetector | None = None,
        *,
        embed: Callable[[Batch], Any] | None = None,
        embed_module: str | None = None,
        hook_transform: Callable[[Any], torch.Tensor] | None = None,
        n_samples: int = 32,
        n_action_steps: int | None = None,
        chunk_boundary: str = "auto",
        sample_chunks: Callable[[Any, Batch, int], Any] | None = None,
        record_dir: str | os.PathLike[str] | None = None,
        on_alarm: AlarmHook | None = None,
        group: str | None = None,
        seed: int = 0,
        **options: Unpack[SessionOptions],
    ) -> None:
        for method in ("reset", "select_action"):
            if not callable(getattr(policy, method, None)):
                raise ParameterError(
                    f"policy has no '{method}' method; is it a LeRobot-style policy?"
                )
        diffusion = _lerobot_diffusion(policy)
        if (embed is not None and embed_module is not None) or (
            embed is None and embed_module is None and diffusion is None
        ):
            raise ConfigError(
                "Give exactly one of 'embed' (a callable) and 'embed_module' (LeRobot's "
                "DiffusionPolicy may take neither: its observation conditioning is the default)."
            )
        check_n_samples(detector, n_samples, "LeRobotPolicyWrapper")
        if chunk_boundary not in ("auto", "queue", "steps"):
            raise ConfigError(
                "The 'chunk_boundary' parameter must be one of ('auto', 'queue', 'steps'). "
                f"Got {chunk_boundary!r} instead."
            )
        if (
            sample_chunks is None
            and diffusion is None
            and not callable(getattr(policy, "predict_action_chunk", None))
        ):
            raise ParameterError("policy has no 'predict_action_chunk'; pass sample_chunks=... .")
        if n_action_steps is None:
            config = getattr(policy, "config", None)
            n_action_steps = int(getattr(config, "n_action_steps", 1) or 1)
        if n_action_steps < 1:
            raise ConfigError(f"'n_action_steps' must be >= 1. Got {n_action_steps!r} instead.")
        self.policy = policy
        self._diffusion = diffusion
        self.backend = "generic" if diffusion is None else "lerobot-diffusion"
        self.session = MonitoringSession(detector, record_dir, on_alarm, group, **options)
        self.embed = embed
        self.embed_module = embed_module
        self.hook_transform = hook_transform or (
            _default_hook_transform if diffusion is None else self._current_frame_rows
        )
        self.n_samples = n_samples
        self.n_action_steps = n_action_steps
        self.sample_chunks = sample_chunks
        self.seed = int(seed)
        self._captured: list[Any] = []
        self._capturing = False
        self._hook: Any = None
        self._warned_sequential = False
        if embed_module is not None:
            try:
                module = policy.get_submodule(embed_module)
            except AttributeError as err:
                raise ConfigError(
                    f"policy has no submodule {embed_module!r} ({err}). Submodules: "
                    f"{[n for n, _ in policy.named_modules()][:20]}"
                ) from err
            denoiser = getattr(diffusion, "unet", None)
            if isinstance(denoiser, nn.Module) and any(m is module for m in denoiser.modules()):
                raise ConfigError(
                    f"embed_module={embed_module!r} is (part of) the diffusion denoiser: its "
                    "output is a noise prediction, not an observation embedding. Omit "
                    "embed_module to use the denoiser's conditioning of the current frame, or "
                    "hook the observation encoder (e.g. 'diffusion.rgb_encoder')."
                )
            self._hook = module.register_forward_hook(self._on_forward)
        if chunk_boundary == "queue" and self._queue() is None:
            raise ConfigError(
                "chunk_boundary='queue', but the policy has neither '_queues[\"action\"]' nor "
                "'_action_queue'; use chunk_boundary='steps'."
            )
        self.chunk_boundary = chunk_boundary
        self._t = 0
        self.n_chunks = 0

    # ------------------------------------------------------------------ helpers
    def _on_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._capturing:
            self._captured.append(output)

    def _current_frame_rows(self, output: Any) -> torch.Tensor:
        """Default hook transform of the diffusion backend: the current frame's rows."""
        output = _hooked_tensor(output)
        n_obs_steps = int(self.policy.config.n_obs_steps)
        rows = output.shape[0] if output.ndim >= 1 else 0
        if rows == 0 or rows % n_obs_steps:
            raise RolloutError(
                f"The submodule {self.embed_module!r} returned shape {tuple(output.shape)} for "
                f"one observation of n_obs_steps={n_obs_steps} frames; expected a multiple of "
                f"{n_obs_steps} rows (frame-major, current frame last). Pass hook_transform=... ."
            )
        return output[rows - rows // n_obs_steps :]

    @property
    def _sampler_name(self) -> str:
        """What draws the B chunks, for error messages."""
        if self.sample_chunks is not None:
            return f"sample_chunks(policy, batch, {self.n_samples})"
        if self._diffusion is not None:
            return "The diffusion model's conditional_sample"
        return "The policy's predict_action_chunk"

    def _queue(self) -> Any:
        queues = getattr(self.policy, "_queues", None)
        if isinstance(queues, Mapping) and "action" in queues:
            return queues["action"]
        return getattr(self.policy, "_action_queue", None)

    def _starts_new_chunk(self) -> bool:
        if self.chunk_boundary != "steps":
            queue = self._queue()
            if queue is not None:
                return len(queue) == 0
        return self._t % self.n_action_steps == 0

    @staticmethod
    def _rng_devices() -> list[int]:
        """Every device of the machine's accelerator type: ``torch.manual_seed`` seeds them
        all, so all of them must be forked and restored, not just the policy's."""
        acc = getattr(torch, "accelerator", None)
        if acc is not None:  # torch >= 2.6: CUDA, MPS, XPU, ... alike
            return list(range(acc.device_count())) if acc.is_available() else []
        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []

    def _embedding(self, batch: Batch) -> NDArray[np.float32]:
        if self.embed is not None:
            out = self.embed(batch)
        else:
            if not self._captured:  # the encoder did not run in select_action: run it now
                self._capturing = True
                try:
                    self._sample(batch)
                finally:
                    self._capturing = False
            if not self._captured:
                raise ConfigError(
                    f"The submodule {self.embed_module!r} did not run during inference; "
                    "check embed_module or pass embed=... ."
                )
            out = self.hook_transform(self._captured[0])
        return flat_float32(out)

    def _observe(self, batch: Batch) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The embedding and the B chunks of the step that just started a chunk."""
        if self._diffusion is None:
            return self._embedding(batch), self._sample(batch)
        policy, model, n = self.policy, self._diffusion, self.n_samples
        n_obs_steps = int(policy.config.n_obs_steps)
        # select_action has queued the current observation (images already stacked into
        # "observation.images"): the policy's own input for this chunk, oldest frame first.
        obs = {
            k: torch.stack(list(q), dim=1)
            for k, q in policy._queues.items()
            if k != "action" and len(q) > 0
        }
        self._captured = []
        self._capturing = self.embed_module is not None
        try:
            cond = model._prepare_global_conditioning(obs)
        finally:
            self._capturing = False
        if not isinstance(cond, torch.Tensor) or cond.ndim != 2 or cond.shape[0] != 1:
            raise RolloutError(
                "LeRobotPolicyWrapper monitors one observation at a time (batch size 1); the "
                f"policy's conditioning has shape {tuple(getattr(cond, 'shape', ()))}."
            )
        if self.embed is not None:
            out: Any = self.embed(batch)
        elif self.embed_module is not None:
            if not self._captured:
                raise ConfigError(
                    f"The submodule {self.embed_module!r} did not run while the policy encoded "
                    "the observation; hook the observation encoder or omit embed_module."
                )
            out = self.hook_transform(self._captured[0])
            self._captured = []
        else:  # the denoiser's conditioning, (1, n_obs_steps * F): keep the current frame
            out = cond.reshape(n_obs_steps, -1)[-1]
        embedding = flat_float32(out)
        if self.sample_chunks is not None:
            chunks = to_numpy(self.sample_chunks(policy, batch, n))
        else:  # B chunks in one denoising call, all conditioned on this observation
            sample = model.conditional_sample(n, global_cond=cond.expand(n, -1))
            start = n_obs_steps - 1  # the chunk's first action is the current step's
            chunks = to_numpy(sample[:, start : start + int(policy.config.n_action_steps)])
        return embedding, check_chunks(chunks, n, self._sampler_name)

    def _sample(self, batch: Batch) -> NDArray[np.float32]:
        n = self.n_samples
        if self.sample_chunks is not None:
            chunks = to_numpy(self.sample_chunks(self.policy, batch, n))
        else:
            first = to_numpy(self.policy.predict_action_chunk(repeat_batch(batch, n)))
            parts = [first]
            if first.shape[0] == 1 and n > 1:  # the policy ignored the repeated batch
                if not self._warned_sequential:
                    self._warned_sequential = True
                    warnings.warn(
                        "The policy's predict_action_chunk returned one chunk for a batch "
                        f"repeated {n} times: drawing the {n} chunks one call at a time "
                        f"({n}x the inference cost). Pass sample_chunks=... to batch them.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                parts += [to_numpy(self.policy.predict_action_chunk(batch)) for _ in range(n - 1)]
            chunks = np.concatenate(parts, axis=0)
        return check_chunks(chunks, n, self._sampler_name)

    # ------------------------------------------------------------------ policy interface
    def reset(self, group: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Reset the policy, the monitor and start a new recorded episode."""
        self.session.raise_pending()  # strict: a monitoring failure of the last chunk
        self.policy.reset()
        self.session.reset(group=group, metadata=metadata)
        self._t = 0
        self.n_chunks = 0

    def select_action(self, batch: Batch) -> Any:
        """The policy's action, unchanged; monitors the step when a new chunk starts.

        A monitoring failure never loses the action (see the class docstring); only the
        policy's own exceptions propagate.
        """
        self.session.raise_pending()  # strict: before the policy pops another action
        new_chunk = self._starts_new_chunk()
        self._captured = []
        # the generic backend reuses the policy's own encoder pass; the diffusion one
        # encodes the queued observation itself (see _observe)
        self._capturing = new_chunk and self.embed_module is not None and self._diffusion is None
        try:
            action = self.policy.select_action(batch)
        finally:
            self._capturing = False
        try:
            if new_chunk:
                with torch.no_grad(), torch.random.fork_rng(devices=self._rng_devices()):
                    torch.manual_seed(self.seed + self.n_chunks)
                    embedding, chunks = self._observe(batch)
                self.session.process(embedding=embedding, action_samples=chunks)
        except Exception as err:  # the action is the policy's: it is returned regardless
            self.session.report_error(err, "LeRobotPolicyWrapper (embedding / sampling)")
        finally:
            self._captured = []
            if new_chunk:
                self.n_chunks += 1
            self._t += 1  # the policy has taken this step, whatever the monitor said
        return action

    def predict_action_chunk(self, batch: Batch) -> Any:
        """The policy's own ``predict_action_chunk`` (not monitored)."""
        return self.policy.predict_action_chunk(batch)

    def end_episode(
        self, success: bool | None, metadata: Mapping[str, Any] | None = None
    ) -> Path | None:
        """Finish the episode with its outcome; writes the recorded rollout in record mode."""
        return self.session.end_episode(success, metadata)

    def remove_hook(self) -> None:
        """Detach the forward hook from the policy (the wrapper stops working)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @property
    def last_verdict(self) -> Verdict | None:
        """Verdict of the current chunk, or None before the first (or in record mode)."""
        return self.session.last_verdict

    @property
    def verdicts(self) -> deque[Verdict]:
        """The latest verdicts of this episode (up to ``keep_verdicts``), one per chunk."""
        return self.session.verdicts

    @property
    def alarmed(self) -> bool:
        """Whether any chunk of this episode alarmed."""
        return self.session.alarmed

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: forward to the policy.
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


def __getattr__(name: str) -> Any:
    if name == "ToyChunkPolicy":  # moved to failguard.testing in 0.x; kept importable
        warnings.warn(
            "failguard.integrations.lerobot.ToyChunkPolicy moved to failguard.testing; "
            "import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..testing import ToyChunkPolicy

        return ToyChunkPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
