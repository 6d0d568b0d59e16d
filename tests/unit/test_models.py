from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgesplit.errors import ModelError
from edgesplit.model import models


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ModelError) as info:
        models.build("resnet9000")
    assert "resnet9000" in str(info.value)
    for name in models.known_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name", models.known_models())
def test_head_and_stem_follow_the_dataset(name: str) -> None:
    model = models.build(name, num_classes=7, in_channels=1)
    with torch.inference_mode():
        y = model(torch.zeros(2, 1, 64, 64))
    assert y.shape == (2, 7)
    assert not model.training


def test_imagenet_weights_missing_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError) as info:
        models.build("mobilenet_v2", weights="imagenet")
    message = str(info.value)
    assert str(tmp_path / "checkpoints") in message
    assert "mobilenet_v2" in message and "--download" in message


def test_imagenet_weights_load_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(3)
    source = models.build("squeezenet1_1", num_classes=1000)
    path = models.imagenet_weights_path("squeezenet1_1")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = models.build("squeezenet1_1", num_classes=10, weights="imagenet")
    assert torch.equal(model.features[0].weight, source.features[0].weight)


def test_checkpoint_round_trip_and_mismatches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("shufflenet_v2_x0_5", num_classes=10)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = models.build("shufflenet_v2_x0_5", num_classes=10, weights=path)
    assert models.state_dict_sha256(loaded) == models.state_dict_sha256(model)

    with pytest.raises(ModelError, match=r"fc\.(weight|bias) has shape"):
        models.build("shufflenet_v2_x0_5", num_classes=3, weights=path)
    with pytest.raises(ModelError, match="does not match the model"):
        models.build("mobilenet_v2", num_classes=10, weights=path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        models.build("shufflenet_v2_x0_5", num_classes=10, weights=corrupt)
    with pytest.raises(ModelError, match="does not exist"):
        models.build("shufflenet_v2_x0_5", weights=tmp_path / "nope.safetensors")


def test_known_models_match_the_zoo_builders() -> None:
    assert sorted(models.zoo()) == models.known_models()
