"""A stranger's view of a face: a linear probe on features of a network that never saw faces.

The ImageNet EfficientNet-Lite0 of the installed wheel (models/nets/pretrained.py) has learnt
nothing about the people a face model trained on, so a linear probe fitted on its pooled
features of VAL photos (people outside TRAIN) predicts a person's labels the way a model that
never met them would: from what the photo shows, without the memorized quirks of that person's
annotations. Methods use its outputs on a portrait as the target of a forgotten person.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.data.base import TaskSpec
from models.methods.base import Images
from models.methods.common import task_loss
from models.nets.factory import create_model, features_and_logits
from models.nets.pretrained import pretrained_weights

EXTRACTOR = "tf_efficientnet_lite0"
WEIGHTS = "imagenet"


def extractor(image_size: int, device: torch.device) -> nn.Module:
    """The frozen ImageNet network whose pooled features the probe reads."""
    model = create_model(EXTRACTOR, 1000, image_size, pretrained=WEIGHTS)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def stranger_features(net: nn.Module, images: Images, batch_size: int = 64) -> torch.Tensor:
    """Pooled pre-logit features (n, 1280) of `images`, in batches."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        rows = list(range(start, min(start + batch_size, len(images))))
        x = images[rows].to(device=device, dtype=torch.float32)
        out.append(features_and_logits(net, x)[0].float())
    return torch.cat(out)


@dataclass
class Probe:
    """A standardizing linear probe: logits = ((f − mean) / std) Wᵀ + b."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    weights_sha256: str  # the extractor weights it was fitted on

    def check_extractor(self) -> None:
        """Refuse a probe fitted on other extractor weights than the installed ones."""
        if self.weights_sha256 != pretrained_weights(WEIGHTS, EXTRACTOR).sha256:
            raise ValueError(
                "the stranger probe was fitted on other extractor weights than the installed "
                "ones; prepare the model version again"
            )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The probe's logits on extractor features."""
        z = (features - self.mean.to(features)) / self.std.to(features)
        return z @ self.weight.to(features).T + self.bias.to(features)

    def to_dict(self) -> dict[str, object]:
        """Plain tensors and strings, for a method's artifacts."""
        return {k: getattr(self, k) for k in ("mean", "std", "weight", "bias", "weights_sha256")}


def fit_probe(
    features: torch.Tensor, targets: torch.Tensor, task: TaskSpec, l2: float, iters: int = 200
) -> Probe:
    """Fit the probe by L-BFGS on the task loss plus l2·‖W‖² (full batch, deterministic).

    It has one output per label of the task, also for a class VAL happens not to hold."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    weight = torch.zeros(task.num_outputs, z.shape[1], requires_grad=True)
    bias = torch.zeros(task.num_outputs, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = task_loss(task.kind, z @ weight.T + bias, targets) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Probe(
        mean, std, weight.detach(), bias.detach(), pretrained_weights(WEIGHTS, EXTRACTOR).sha256
    )
