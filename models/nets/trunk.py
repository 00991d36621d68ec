"""A frozen leading part of a network (its trunk) and its outputs cached per data-set row.

When preparation froze a network's stem and first stages at their ImageNet values, nothing the
network learns, and nothing an unlearning method changes, touches them: every model of a
benchmark shares the trunk's output on a (test-transformed) image. Computing it once per image
and running only the rest of the network (the tail) makes training, evaluation and the loss
signals several times cheaper. Only networks whose frozen modules are exactly the start of
their forward pass are split (timm's EfficientNets: `conv_stem`, `bn1`, `blocks.0..k-1`);
others run whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from models.device import autocast

Transform = Callable[[torch.Tensor], torch.Tensor]
LoadImage = Callable[[int], torch.Tensor]


def trunk_depth(model: nn.Module, frozen: Sequence[str]) -> int | None:
    """How many stages the frozen trunk holds, or None when `frozen` is not a splittable start."""
    blocks = getattr(model, "blocks", None)
    if not frozen or not all(hasattr(model, n) for n in ("conv_stem", "bn1", "conv_head", "bn2")):
        return None
    if not isinstance(blocks, nn.Sequential):
        return None
    depth = len(frozen) - 2
    expected = {"conv_stem", "bn1", *(f"blocks.{i}" for i in range(depth))}
    if set(frozen) != expected or not 0 <= depth <= len(blocks):
        return None
    return depth


def frozen_depth(model: nn.Module) -> int | None:
    """The depth of the trunk a model has frozen (`freeze_modules`), read from its parameters:
    the stem and the leading stages that have no trainable parameter. None when nothing is."""
    names = []
    for name in ("conv_stem", "bn1"):
        module = getattr(model, name, None)
        if not isinstance(module, nn.Module):
            return None
        names.append(name)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return None
    if any(p.requires_grad for p in model.conv_stem.parameters()):  # type: ignore[union-attr]
        return None
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            break
        names.append(f"blocks.{i}")
    return trunk_depth(model, names)


def trunk_signature(model: nn.Module, depth: int) -> str:
    """A digest of the trunk's weights and statistics: equal digests, equal trunk outputs."""
    digest = hashlib.sha256()
    modules = {"conv_stem": model.conv_stem, "bn1": model.bn1}
    modules |= {f"blocks.{i}": model.blocks[i] for i in range(depth)}  # type: ignore[index]
    for name, module in modules.items():
        for key, tensor in module.state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_trunk(model: nn.Module, depth: int, images: torch.Tensor) -> torch.Tensor:
    """The trunk's output on `images`."""
    x = model.bn1(model.conv_stem(images))  # type: ignore[operator]
    for i in range(depth):
        x = model.blocks[i](x)  # type: ignore[index]
    return x


def tail_features(model: nn.Module, depth: int, features: torch.Tensor) -> torch.Tensor:
    """The network's last feature map (before pooling) on trunk outputs `features`."""
    x = features
    for block in list(model.blocks)[depth:]:  # type: ignore[arg-type]
        x = block(x)
    return model.bn2(model.conv_head(x))  # type: ignore[operator]


def run_tail(model: nn.Module, depth: int, features: torch.Tensor) -> torch.Tensor:
    """The logits of the rest of the network on trunk outputs `features`."""
    return model.forward_head(tail_features(model, depth, features))  # type: ignore[operator]


class Tail(nn.Module):
    """A network after its first `depth` stages, as a module over trunk outputs, with the timm
    interface methods read (`forward_features`, `forward_head`, `get_classifier`, widths).

    It holds the network itself, not a copy: training the tail trains the network."""

    def __init__(self, network: nn.Module, depth: int) -> None:
        super().__init__()
        self.network, self.depth = network, depth

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The network's logits on trunk outputs `features`."""
        return run_tail(self.network, self.depth, features)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The network's last feature map on trunk outputs `features`."""
        return tail_features(self.network, self.depth, features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The network's head on a last feature map."""
        return self.network.forward_head(x, pre_logits=pre_logits)  # type: ignore[operator]

    def get_classifier(self) -> nn.Module:
        """The network's classifier."""
        return self.network.get_classifier()  # type: ignore[operator]

    @property
    def num_features(self) -> int:
        """The network's pre-logit width."""
        return int(self.network.num_features)  # type: ignore[arg-type]

    @property
    def head_hidden_size(self) -> int | None:
        """The network's pooled head width, where timm sets one."""
        return getattr(self.network, "head_hidden_size", None)


class TrunkCache:
    """Trunk outputs per row of one data set under one transform, for one trunk signature."""

    def __init__(
        self,
        model: nn.Module,
        depth: int,
        load_image: LoadImage,
        transform: Transform,
        device: torch.device,
        batch_size: int = 128,
    ) -> None:
        self.depth, self.load_image, self.transform = depth, load_image, transform
        self.device, self.batch_size = device, batch_size
        self.signature = trunk_signature(model, depth)
        self._features: dict[int, torch.Tensor] = {}
        self._views: tuple[object, list[torch.Tensor]] | None = None

    def fits(self, model: nn.Module) -> bool:
        """Whether `model`'s trunk is the one cached (a method never changed it)."""
        return trunk_signature(model, self.depth) == self.signature

    def frozen_in(self, model: nn.Module) -> bool:
        """Whether `model` holds this trunk frozen, so that training it never changes the trunk."""
        depth = frozen_depth(model)
        return depth is not None and depth >= self.depth and self.fits(model)

    @torch.no_grad()  # not inference_mode: training backpropagates from these outputs
    def features(self, model: nn.Module, rows: Sequence[int]) -> torch.Tensor:
        """Trunk outputs of `rows` (CPU, float32), computing those not cached yet."""
        missing = [r for r in dict.fromkeys(rows) if r not in self._features]
        if missing:
            out = self._outputs(model, missing, self.transform)
            self._features.update(zip(missing, out, strict=True))
        return torch.stack([self._features[r] for r in rows])

    def _outputs(self, model: nn.Module, rows: Sequence[int], transform: Transform) -> torch.Tensor:
        """The trunk's outputs (CPU, float32) on `rows` under `transform`, in batches, in order."""
        training = model.training
        model.eval()
        outputs = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            images = torch.stack([transform(self.load_image(r)) for r in chunk])
            with autocast(self.device):
                outputs.append(run_trunk(model, self.depth, images.to(self.device)).float().cpu())
        model.train(training)
        return torch.cat(outputs)

    @torch.no_grad()
    def augmented(
        self,
        model: nn.Module,
        rows: Sequence[int],
        transform: Transform,
        augmentations: int,
        seed: int,
    ) -> list[torch.Tensor]:
        """Trunk outputs of `augmentations` random views of `rows`, drawn from torch's CPU RNG
        seeded with `seed` exactly as `models.protocol.loss_signal` draws them through a
        DataLoader (the same views for every model); the last such set is kept."""
        key = (tuple(rows), repr(transform), augmentations, seed)
        if self._views is None or self._views[0] != key:
            views = []
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for _ in range(augmentations):
                    # what a DataLoader draws when it starts: the same views as models.evaluate
                    torch.empty((), dtype=torch.int64).random_()
                    views.append(self._outputs(model, rows, transform))
            self._views = (key, views)
        return self._views[1]
