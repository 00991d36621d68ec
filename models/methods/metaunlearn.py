"""MetaUnlearn: a meta-learned loss whose single gradient step on the support images unlearns.

While the training data exists, `prepare` meta-trains a small loss network h_φ by simulating
deletion requests over the TRAIN identities: one differentiable step θ_u = θ − η·∇θ M(θ, φ) on a
simulated support set, then φ is updated so that the simulated forget images reach, under θ_u,
the loss × error level of unseen (VAL) identities. `unlearn` applies that one step to the real
support portraits (De Min et al., "Unlearning Personal Data from a Single Image", TMLR 2025,
arXiv 2407.12069, Algorithm 1; reference code github.com/tdemin16/one-shui).

The network h_φ lives in models/methods/meta_loss.py, meta-training in
models/methods/metaunlearn_training.py.

Choices this implementation makes: support targets are the original model's own
predictions by default (`targets="pseudo"`), used alike in meta-training and at erasure; an
identity outside the index is rejected; the distance is Smooth-L1 (β = 1); σ(logits) is used even
for multi-class tasks (reference parity); meta-training runs in the model's dtype (fp32, no bf16
autocast) with the math attention kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.methods.base import Artifacts, PrepareData, UnlearningMethod, UnlearnRequest
from models.methods.meta_loss import (
    gradients,
    load_meta_loss,
    model_forward,
    support_meta_loss,
    trainable,
)
from models.methods.metaunlearn_training import (
    MetaUnlearnConfig,
    build_meta_loss,
    export_artifacts,
    meta_train,
    meta_training_data,
)
from models.methods.registry import register_method

# Fields that shape h_φ or its input: erasure must use the values φ was meta-trained with.
_STRUCTURAL = ("emb_dim", "hidden", "targets", "use_feats", "use_ids", "use_targets")


def identity_rows(keys: Sequence[str], identities: Sequence[str]) -> torch.Tensor:
    """Rows of the identity table for `identities`; ValueError for a key the index lacks."""
    index = {key: row for row, key in enumerate(keys)}
    missing = [ident for ident in identities if ident not in index]
    if missing:
        raise ValueError(f"identity {missing[0]!r} is not in the identity index")
    return torch.tensor([index[ident] for ident in identities])


def _check_compatible(stored: dict[str, Any], cfg: MetaUnlearnConfig) -> None:
    """Refuse an erasure config that differs from the one h_φ was meta-trained with."""
    differ = [f for f in _STRUCTURAL if stored[f] != getattr(cfg, f)]
    if differ:
        raise ValueError(f"h_phi was meta-trained with different {differ}; prepare it again")


@register_method("metaunlearn")
class MetaUnlearn(UnlearningMethod):
    """MetaUnlearn: meta-train h_φ at onboarding, then one gradient step of it per request."""

    Config = MetaUnlearnConfig
    on_tail = True

    def prepare(self, model: nn.Module, data: PrepareData, cfg: MetaUnlearnConfig) -> Artifacts:
        """Meta-train h_φ over simulated requests of TRAIN identities; return φ and the index."""
        identities = meta_training_data(data)[0]
        keys = sorted(identities)
        device = next(model.parameters()).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.manual_seed(cfg.seed)  # φ's initialisation and its dropout masks
            meta = build_meta_loss(model, data.task, len(keys), cfg)
            meta = meta.to(device=device, dtype=next(model.parameters()).dtype)
            history = meta_train(model, meta, data, keys, cfg)
        return export_artifacts(meta, keys, model, data.task, cfg, history)

    def unlearn(
        self,
        model: nn.Module,
        request: UnlearnRequest,
        artifacts: Artifacts,
        cfg: MetaUnlearnConfig,
    ) -> nn.Module:
        """One plain step θ ← θ − η·∇θ M on the support images, h_φ frozen."""
        _check_compatible(artifacts["config"], cfg)
        rows = identity_rows(artifacts["identity_keys"], request.identities)
        first = next(model.parameters())
        meta = load_meta_loss(artifacts, first.device, first.dtype)
        model.eval()
        params = trainable(model, cfg.freeze_root_params)
        with torch.enable_grad():  # the caller may run erasures under no_grad
            loss = support_meta_loss(
                model_forward(model),
                meta,
                request.task,
                request.images,
                rows.to(first.device),
                request.targets,
                cfg.targets,
                cfg.batch_size,
            )
            grads = gradients(loss, params, create_graph=False)
        with torch.no_grad():
            for name, p in params.items():
                grad = grads[name]
                if grad is not None:
                    p.sub_(cfg.inner_lr * grad)
        return model
