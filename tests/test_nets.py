"""The timm factory: task-sized heads, separate features and logits, local weights only."""

from __future__ import annotations

import pytest
import torch

from models.nets import create_model, data_config, features_and_logits


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("test_resnet", 32),
        ("resnet18", 64),
        ("vit_tiny_patch16_224", 64),
        ("vit_base_patch16_224", 32),
    ],
)
def test_head_sized_from_task_and_features_separate(arch: str, size: int) -> None:
    model = create_model(arch, num_outputs=17, image_size=size).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pooled, logits = features_and_logits(model, images)
        assert logits.shape == (2, 17)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(logits, model(images))
    assert data_config(model, size)["input_size"] == (3, size, size)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("no_such_net", 3, 32)


def test_local_weights_load_backbone_and_resize_head(tmp_path) -> None:
    source = create_model("test_resnet", num_outputs=1000, image_size=32)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_model("test_resnet", num_outputs=8, image_size=32, weights=path)
    torch.testing.assert_close(model.conv1[0].weight, source.conv1[0].weight)
    assert model.get_classifier().out_features == 8
    with pytest.raises(FileNotFoundError):
        create_model("test_resnet", 8, 32, weights=tmp_path / "missing.pth")


def test_networks_have_channels_last_weights_that_survive_a_state_dict_round_trip() -> None:
    model = create_model("test_resnet", 3, 32)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    again = create_model("test_resnet", 3, 32)
    again.load_state_dict(state)
    weight = next(m.weight for m in again.modules() if isinstance(m, torch.nn.Conv2d))
    assert weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(images), model.eval()(images))
