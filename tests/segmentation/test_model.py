"""Model directories: UNETR from config, sha256 verification, refusal of mismatching weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR

from segmentation.errors import ModelConfigError, ModelIntegrityError, ModelWeightsMismatchError
from segmentation.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelConfig,
    build_network,
    load_model,
    read_config,
    save_model_dir,
)
from segmentation.train import demo_config


def tiny_config(feature_size: int = 4, hidden_size: int = 48) -> ModelConfig:
    return demo_config(
        spacing_mm=2.0, patch=32, feature_size=feature_size, hidden_size=hidden_size, num_heads=4
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config()
    return save_model_dir(build_network(cfg), cfg, tmp_path / "tiny")


def test_network_is_the_monai_unetr_of_the_config() -> None:
    cfg = tiny_config()
    net = build_network(cfg)
    ref = UNETR(1, 1, (32, 32, 32), feature_size=4, hidden_size=48, mlp_dim=192, num_heads=4)
    assert isinstance(net, UNETR)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)


def test_paper_size_unetr_has_92_8_million_parameters() -> None:
    data = tiny_config().to_dict()
    data["architecture"].update(img_size=[96, 96, 96], feature_size=16, hidden_size=768, mlp_dim=3072,
                                num_heads=12, out_channels=2)  # fmt: skip
    data["inference"]["roi_size"] = [96, 96, 96]
    net = build_network(ModelConfig.from_dict(data))
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(92.8e6, rel=0.005)


def test_save_and_load_round_trip(model_dir: Path) -> None:
    files = {p.name for p in model_dir.iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME} <= files
    data = json.loads((model_dir / CONFIG_NAME).read_text())
    # Checksum recorded = checksum of the bytes on disk (computed here independently).
    assert data["weights_sha256"] == hashlib.sha256((model_dir / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert data["label"] == "demo — not for clinical use"
    assert {"torch", "monai"} <= set(data["versions"])
    loaded = load_model(model_dir)
    torch.manual_seed(0)
    fresh = build_network(tiny_config())
    for key, value in fresh.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value)
    assert not loaded.network.training
    assert loaded.config.preprocessing.spacing_mm == (2.0, 2.0, 2.0)
    # with_postprocessing changes only the named fields and keeps the weights.
    changed = loaded.with_postprocessing(threshold=0.3, rim_completion=None)
    assert changed.config.postprocessing.threshold == 0.3 and changed.network is loaded.network
    assert changed.config.preprocessing == loaded.config.preprocessing
    assert (
        changed.config.postprocessing.min_lesion_volume_mm3
        == loaded.config.postprocessing.min_lesion_volume_mm3
    )
    assert loaded.config.postprocessing.threshold != 0.3


def test_tampered_weights_are_refused(model_dir: Path) -> None:
    raw = bytearray((model_dir / WEIGHTS_NAME).read_bytes())
    raw[-10] ^= 0xFF
    (model_dir / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(model_dir)


def test_missing_weights_file_is_refused(model_dir: Path) -> None:
    (model_dir / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelIntegrityError, match="no weights.pt"):
        load_model(model_dir)


def test_wrong_size_weights_are_refused_even_with_a_valid_checksum(tmp_path: Path) -> None:
    # Weights of a wider network (feature 8) saved under a config that says feature 4: sha256 matches
    # the file, but the tensors do not fit.
    wide = build_network(tiny_config(feature_size=8))
    out = save_model_dir(wide, tiny_config(feature_size=4), tmp_path / "m")
    with pytest.raises(ModelWeightsMismatchError, match="wrong size"):
        load_model(out)


def test_config_not_matching_weights_is_refused(model_dir: Path) -> None:
    data = json.loads((model_dir / CONFIG_NAME).read_text())
    data["architecture"]["hidden_size"] = 96  # the weights were trained with 48
    data["architecture"]["mlp_dim"] = 384
    (model_dir / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelWeightsMismatchError, match="do not match the architecture"):
        load_model(model_dir)


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    cfg = tiny_config()
    net = build_network(cfg)
    out = save_model_dir(net, cfg, tmp_path / "m")
    state = dict(net.state_dict())
    state.pop("out.conv.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, out / WEIGHTS_NAME)
    data = json.loads((out / CONFIG_NAME).read_text())
    data["weights_sha256"] = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
    (out / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(
        ModelWeightsMismatchError, match=r"missing.*out\.conv\.conv\.weight.*unexpected.*extra\.weight"
    ):
        load_model(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("architecture"), "architecture"),
        (lambda d: d["architecture"].update(img_size=[40, 40, 40]), "multiples of 16"),
        (lambda d: d["architecture"].update(out_channels=3), "out_channels"),
        (lambda d: d["architecture"].update(depth=12), "unknown architecture keys"),
        (lambda d: d["inference"].update(roi_size=[64, 64, 64]), "roi_size"),
        (lambda d: d["preprocessing"].update(spacing=[1, 1, 1]), "preprocessing"),
        (lambda d: d.update(weights_sha256=""), "weights_sha256"),
        # Malformed values fail at load time with the field named, not minutes into inference.
        (lambda d: d.setdefault("postprocessing", {}).update(threshold="0.5"), "postprocessing.threshold"),
        (lambda d: d.setdefault("postprocessing", {}).update(threshold=1.5), "postprocessing.threshold"),
        (lambda d: d.setdefault("postprocessing", {}).update(min_lesion_volume_mm3=-1), "min_lesion_volume"),
        (lambda d: d["inference"].update(mode="foo"), "inference.mode"),
        (lambda d: d["inference"].update(sw_batch_size=0), "sw_batch_size"),
        (lambda d: d["inference"].update(overlap=1.0), "inference.overlap"),
        (lambda d: d["preprocessing"].update(orientation="XYZ"), "orientation"),
    ],
)
def test_bad_configs_are_refused(model_dir: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((model_dir / CONFIG_NAME).read_text())
    edit(data)
    (model_dir / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=message):
        load_model(model_dir)


def test_missing_or_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelConfigError, match="cannot read"):
        read_config(tmp_path)


def test_config_round_trip_keeps_provenance() -> None:
    data = tiny_config().to_dict()
    data["training"] = {"seed": 3}
    data["metrics"] = {"test": {"dice": 0.5}}
    cfg = ModelConfig.from_dict(data)
    assert cfg.extra["training"] == {"seed": 3}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_detection_threshold_round_trips_and_is_absent_when_unset() -> None:
    from dataclasses import replace

    from segmentation.model import PostprocessConfig

    plain = tiny_config()
    assert "detection_threshold" not in plain.to_dict()["postprocessing"]  # older readers see no change
    with_hysteresis = replace(plain, postprocessing=PostprocessConfig(0.4, 30.0, 0.95))
    again = ModelConfig.from_dict(json.loads(json.dumps(with_hysteresis.to_dict())))
    assert again.postprocessing == PostprocessConfig(
        threshold=0.4, min_lesion_volume_mm3=30.0, detection_threshold=0.95
    )
