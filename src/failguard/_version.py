"""The package version (one place) and the artifact schema version."""

__version__ = "0.1.0"

#: Version of the on-disk layout of detectors (``config.json`` + ``model.safetensors``),
#: rollout logs and the ONNX monitor's metadata. Bumped on any incompatible change.
SCHEMA_VERSION = 1
