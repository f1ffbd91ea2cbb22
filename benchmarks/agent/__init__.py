"""The LunarLander agent benchmark: ``python -m benchmarks.agent.run``."""
