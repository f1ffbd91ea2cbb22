"""Former home of the fusion helpers; they live in :mod:`failguard.core.kernel` now."""

from __future__ import annotations

from .core.kernel import fuse, fusion_rank, parse_combine

__all__ = ["fuse", "fusion_rank", "parse_combine"]
