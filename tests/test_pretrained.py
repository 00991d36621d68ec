"""ImageNet weights from an installed package: a strict load that must classify real photos."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from models.data.registry import DatasetSpec
from models.data.splits import make_splits, split_indices
from models.nets import create_model, freeze_modules
from models.nets.pretrained import load_pretrained, pretrained_weights
from models.presets import preset_setup
from models.protocol import model_from_checkpoint, train_reference
from models.train.checkpoint import file_sha256, load_checkpoint

ARCH = "tf_efficientnet_lite0"
# ImageNet-1k class indices: 698 palace, 985 daisy
PHOTOS = {"china.jpg": 698, "flower.jpg": 985}


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    return create_model(ARCH, num_outputs=1000, image_size=224, pretrained="imagenet").eval()


@pytest.mark.parametrize(("photo", "label"), PHOTOS.items())
def test_loaded_network_recognises_a_photo(
    imagenet_model: torch.nn.Module, photo: str, label: int
) -> None:
    config = timm.data.resolve_model_data_config(imagenet_model)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    image = timm.data.create_transform(**config)(Image.fromarray(load_sample_image(photo)))
    with torch.no_grad():
        probs = imagenet_model(image.unsqueeze(0)).softmax(-1)[0]
    assert int(probs.argmax()) == label
    assert float(probs[label]) > 0.2  # a random or misaligned network gives ~0.001


def test_the_remap_is_strict_and_positional() -> None:
    weights = pretrained_weights("imagenet", ARCH)
    assert weights.sha256 == file_sha256(weights.path)
    source = torch.load(weights.path, map_location="cpu", weights_only=True)
    model = create_model(ARCH, 1000, 224, pretrained="imagenet")
    assert len(source) == len(model.state_dict()) == 296
    for tensor, loaded in zip(source.values(), model.state_dict().values(), strict=True):
        assert torch.equal(tensor, loaded)
    other = create_model("resnet18", 1000, 64)
    with pytest.raises(ValueError, match="tensors"):
        load_pretrained(other, weights)
    with pytest.raises(ValueError, match="not for 'resnet18'"):
        create_model("resnet18", 17, 64, pretrained="imagenet")
    with pytest.raises(ValueError, match="unknown pretrained"):
        create_model(ARCH, 17, 64, pretrained="faces")


def test_a_task_head_is_fresh_and_the_trunk_pretrained() -> None:
    imagenet = create_model(ARCH, 1000, 96, pretrained="imagenet")
    model = create_model(ARCH, 17, 96, pretrained="imagenet")
    assert model.get_classifier().out_features == 17
    torch.testing.assert_close(model.conv_stem.weight, imagenet.conv_stem.weight)


def test_frozen_modules_keep_their_weights_and_statistics() -> None:
    model = freeze_modules(create_model(ARCH, 5, 64, pretrained="imagenet"), ["conv_stem", "bn1"])
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("bn1.")}
    model.train()
    model(torch.randn(4, 3, 64, 64) * 3 + 1).sum().backward()
    assert model.conv_stem.weight.grad is None and not model.conv_stem.weight.requires_grad
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.blocks[0][0].conv_dw.weight.grad is not None
    with pytest.raises(ValueError, match="no such modules"):
        freeze_modules(model, ["blocks.99"])


def test_a_pretrained_checkpoint_records_its_weights_and_rebuilds_frozen(tmp_path) -> None:
    setup = preset_setup(
        "pretrained", dataset_name="synthfaces", image_size=32, synth_identities=12, epochs=1
    )
    from models.data.registry import load_dataset

    assert setup.dataset == DatasetSpec(image_size=32, num_identities=12)
    data = load_dataset(setup.dataset)
    splits = make_splits(data.identities, data.keys, 2, 0)
    indices = split_indices(data, splits)
    path = tmp_path / "original.pth"
    model, _, _ = train_reference(
        setup, data, splits, indices, "original", torch.device("cpu"), path, progress=False
    )
    checkpoint = load_checkpoint(path)
    recorded = checkpoint.config["pretrained"]
    assert recorded["name"] == "imagenet"
    assert recorded["sha256"] == pretrained_weights("imagenet", ARCH).sha256
    rebuilt = model_from_checkpoint(checkpoint)
    assert not rebuilt.conv_stem.weight.requires_grad
    imagenet = create_model(ARCH, 1000, 32, pretrained="imagenet")
    torch.testing.assert_close(rebuilt.conv_stem.weight, imagenet.conv_stem.weight)
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32))).float()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), model.eval()(images))


def test_the_preset_refuses_another_network() -> None:
    with pytest.raises(ValueError, match="tf_efficientnet_lite0 with imagenet"):
        preset_setup("pretrained", dataset_name="synthfaces", arch="resnet18")


def test_the_cached_trunk_gives_the_whole_networks_outputs(small_faces) -> None:
    from models.evaluate import evaluate_sets, predict_cached
    from models.nets.trunk import trunk_depth
    from models.protocol import trunk_cache

    setup = preset_setup("pretrained", dataset_name="synthfaces", image_size=32, epochs=2)
    cache = trunk_cache(setup, small_faces, torch.device("cpu"))
    assert cache is not None and cache.depth == 5
    splits = make_splits(small_faces.identities, small_faces.keys, 2, 0)
    indices = split_indices(small_faces, splits)
    model, _, _ = train_reference(
        setup, small_faces, splits, indices, "original", torch.device("cpu"), None, False, cache
    )
    assert cache.fits(model)  # training moved only the tail
    sets = {"test": indices.test[:40]}
    whole = evaluate_sets(model, small_faces, "attributes", sets, cache.transform, cache.device)
    cached = evaluate_sets(
        model, small_faces, "attributes", sets, cache.transform, cache.device, cache=cache
    )
    assert cached["test"].score == pytest.approx(whole["test"].score, abs=1e-3)
    np.testing.assert_allclose(cached["test"].losses, whole["test"].losses, rtol=1e-4, atol=1e-5)
    logits, _ = predict_cached(model, cache, small_faces, "attributes", indices.test[:3])
    assert logits.shape == (3, 17)

    with torch.no_grad():
        model.conv_stem.weight.add_(0.1)  # a changed trunk no longer fits: the whole net runs
    assert not cache.fits(model)
    assert trunk_depth(model, ("conv_stem", "blocks.0")) is None


def test_cached_loss_signals_score_the_same_augmented_views(small_faces) -> None:
    from models.protocol import build_model, loss_signal, trunk_cache

    setup = preset_setup("pretrained", dataset_name="synthfaces", image_size=32)
    cache = trunk_cache(setup, small_faces, torch.device("cpu"))
    model = build_model(setup, small_faces).eval()
    rows = list(range(10))
    args = (small_faces, "attributes", rows, 32, torch.device("cpu"))
    whole = loss_signal(model, *args, augmentations=2, seed=3)
    cached = loss_signal(model, *args, augmentations=2, seed=3, cache=cache)
    np.testing.assert_allclose(cached, whole, rtol=1e-4, atol=1e-5)
    assert not np.allclose(cached[0], cached[1])  # two different views
    again = loss_signal(model, *args, augmentations=2, seed=4, cache=cache)
    assert not np.allclose(again, cached)


# small settings that still move parameters; each method's own tests cover what it does
TAIL_METHODS = {
    "scrub": {"epochs": 2, "max_epochs": 1, "lr": 5e-2},
    "metaunlearn": {"meta_epochs": 1, "max_requests_per_epoch": 2, "emb_dim": 4, "hidden": 16},
    "ssd": {},
    "neggrad": {},
}


@pytest.mark.parametrize("name", TAIL_METHODS)
def test_a_method_on_the_tail_computes_what_it_would_on_whole_images(small_faces, name) -> None:
    from models.benchmark.config import BenchmarkConfig
    from models.benchmark.runner import _Pass, _unlearn
    from models.methods import get_method, resolve_config
    from models.protocol import build_model, prepare_method, trunk_cache

    setup = preset_setup("pretrained", dataset_name="synthfaces", image_size=32)
    cache = trunk_cache(setup, small_faces, torch.device("cpu"))
    assert cache is not None
    splits = make_splits(small_faces.identities, small_faces.keys, 2, 0)
    indices = split_indices(small_faces, splits)
    torch.manual_seed(0)
    original = build_model(setup, small_faces).eval()
    assert cache.frozen_in(original)
    method = get_method(name)
    cfg = resolve_config(name, "synthfaces", ARCH, 2, **TAIL_METHODS[name])
    run = _Pass(
        cfg=BenchmarkConfig(setup=setup),
        data=small_faces,
        indices=indices,
        parts=[indices],
        device=torch.device("cpu"),
        requests=2,
        seed=0,
        rmia_sets=None,
        rmia_seed=0,
        cache=cache,
    )

    def erased(on_tail: bool) -> torch.nn.Module:
        this = run if on_tail else replace(run, cache=None)
        artifacts, _ = prepare_method(
            method, cfg, original, small_faces, "attributes", indices, 32, this.cache
        )
        assert (this.tail_depth(method, original) is not None) == on_tail
        return _unlearn(this, method, cfg, original, artifacts, indices)[0]

    tail, whole = erased(True), erased(False)
    moved = 0
    for (key, a), b, c in zip(
        tail.named_parameters(), whole.parameters(), original.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=key)
        moved += int(not torch.equal(a, c))
    assert moved > 0 and cache.fits(tail)
    trainable = copy.deepcopy(original).requires_grad_(True)
    assert not cache.frozen_in(trainable)  # a trunk that could move is never cached
