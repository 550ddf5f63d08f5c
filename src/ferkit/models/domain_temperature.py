"""A temperature that reads the domain from the face (``ferkit calibrate --per-domain``).

One temperature cannot calibrate every domain: a model trained on FER+ votes and on film and lab
faces is under-confident on FER2013's pictures and over-confident on film faces at the same
confidence levels. Here each domain d (one ``--val-dir`` each) has its own temperature T_d, and a
logistic regression reads the domain from the face's **embedding** (the input of the network's
last linear layer); a face's logits are divided by

    T(face) = sum_d P(d | embedding) x T_d

A temperature never moves the argmax: only the probabilities change. The record keeps the domain
names, the temperatures and the reader's weights (``CheckpointRecord.domain_temperature``); the
PyTorch path and the ONNX export apply it alike (the export gives the per-face temperature as a
third output, so that the model's own logits can be recovered).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import FerkitError
from .record import check_domain_temperature


def split_head(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(body, head): the network up to its last linear layer, and that layer, for a network that is
    an ``nn.Sequential`` ending in one (nested Sequentials allowed). Other shapes are one FerkitError."""
    if isinstance(net, nn.Sequential) and len(net):
        last = net[-1]
        if isinstance(last, nn.Linear):
            return nn.Sequential(*list(net)[:-1]), last
        if isinstance(last, nn.Sequential):
            body, head = split_head(last)
            return nn.Sequential(*list(net)[:-1], *list(body)), head
    raise FerkitError(f"a per-domain temperature needs a network that ends in a linear layer "
                      f"({type(net).__name__} does not)")


class DomainTemperature(nn.Module):
    """The per-face temperature of a record's ``domain_temperature`` (see the module docstring)."""

    def __init__(self, spec: dict):
        super().__init__()
        spec = check_domain_temperature(spec)
        self.domains = tuple(spec["domains"])
        self.register_buffer("weight", torch.tensor(spec["weight"], dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(spec["bias"], dtype=torch.float32))
        self.register_buffer("temperatures", torch.tensor(spec["temperatures"], dtype=torch.float32))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(N,) temperatures of (N, F) embeddings."""
        # products summed per face, not matrix products: a GEMM's rounding may depend on the batch size
        # (onnxruntime's did), and a face's probabilities must not depend on which faces came with it
        scores = (embedding.float()[:, None, :] * self.weight[None]).sum(-1) + self.bias
        return (torch.softmax(scores, dim=1) * self.temperatures).sum(-1)


class WithDomainTemperature(nn.Module):
    """``net`` whose forward returns (logits divided by each face's temperature, the temperatures)."""

    def __init__(self, net: nn.Module, spec: dict):
        super().__init__()
        self.body, self.head = split_head(net)
        self.temperature = DomainTemperature(spec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        t = self.temperature(h)
        return self.head(h) / t[:, None].to(h.dtype), t


def face_embeddings(opened, images, batch_size: int = 256):
    """(N, F) float32 embeddings of uint8 faces (N, S, S) by an opened PyTorch model (its inference copy)."""
    import numpy as np

    body, _ = split_head(opened.model)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = opened.record.input.to_tensor(images[i:i + batch_size], opened.device)
            out.append(body(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
