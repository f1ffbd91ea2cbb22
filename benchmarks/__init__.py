"""failguard's benchmarks, run from the repository root as modules, e.g.
``python -m benchmarks.robot.run --tiny`` or ``python -m benchmarks.core --tiny``.

Shared protocol (splits, selection, mean ± std, timing): :mod:`benchmarks._protocol`.
"""
