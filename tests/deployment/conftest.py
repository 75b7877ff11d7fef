"""The deployment tests use the pipeline tests' synthetic patient, tiny model and storage fixtures."""

from tests.pipeline.conftest import media_root, slow_tiny_model_dir, synthetic_patient  # noqa: F401
