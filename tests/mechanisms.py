"""Test helper: a base for mechanisms set by hand, so the exact output of every mechanism is known.

A subclass writes ``forward(cond, noise)`` (logits for a categorical variable, values otherwise);
``sample`` follows :class:`mdcm.nets.Mechanism` like the library's MLP mechanisms: it draws
``z_dim`` Gaussian values of own noise, appends the confounder noise ``u`` and applies the head.
"""

from __future__ import annotations

import torch
from torch import nn

from mdcm.nets import gumbel_one_hot


class HandSet(nn.Module):
    categorical = False

    def __init__(self, z_dim: int = 4) -> None:
        super().__init__()
        self.z_dim = z_dim

    def sample(self, cond, u, gen, *, tau=1.0, straight_through=False) -> torch.Tensor:
        z = torch.randn(cond.shape[0], self.z_dim, generator=gen, device=cond.device)
        out = self(cond, torch.cat([z, u], dim=1))
        return gumbel_one_hot(out, tau, gen, straight_through) if self.categorical else out
