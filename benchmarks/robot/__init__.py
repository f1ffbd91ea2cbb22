"""The MetaWorld robot benchmark: ``python -m benchmarks.robot.run``."""
