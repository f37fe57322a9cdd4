"""Generators, critics and image coders, one small network per variable kind (design.md §5, §7).

Conventions shared by every network here ("encoded" values):

* categorical -> one-hot float ``(n, k)`` (straight-through Gumbel-softmax during training);
* continuous  -> float ``(n, d)``;
* image       -> float ``(n, C, H, W)`` in ``[-1, 1]``.

A generator sees its parents as ONE flat condition vector (image parents enter as the code of an
:class:`ImageCoder`, the paper's trick of describing images to label mechanisms by a low-dimensional
code), its own noise ``Z_V`` and one noise vector ``U`` per bidirected edge it touches. The DCM
(mdcm/model.py) builds the condition vector and hands the SAME ``U`` sample to both ends.

Image generators have a LINEAR output (clamped only at sampling): the prototype's tanh output
saturated at the black background (design.md §7). Their condition is fed as constant planes at
every resolution, and critics see label planes plus a projection term, so that the generator cannot
ignore its parents. Critics pack 4 samples per input (PacGAN, Lin et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MLP", "MLPGenerator", "LatentMixture", "ConvImageGenerator", "MLPImageGenerator",
    "ImageCoder", "Critic",
    "gumbel_one_hot", "mmd2", "plane",
]


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class MLP(nn.Sequential):
    """Linear -> LeakyReLU blocks with a linear output layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int = 2) -> None:
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), _act()]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        super().__init__(*mods)


def plane(cond: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Broadcast a flat condition ``(n, c)`` to constant image planes ``(n, c, h, w)``."""
    return cond[:, :, None, None].expand(-1, -1, h, w)


def gumbel_one_hot(logits: torch.Tensor, tau: float, gen: torch.Generator | None,
                   straight_through: bool = True) -> torch.Tensor:
    """An exact one-hot sample of Categorical(softmax(logits)) (Gumbel-max).

    With ``straight_through`` the backward pass uses the Gumbel-softmax relaxation at temperature
    ``tau`` (Jang et al. 2017), so gradients reach the logits and, through children, upstream
    generators. The forward value is the exact hard sample either way.
    """
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=logits.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    y = logits + g
    hard = F.one_hot(y.argmax(-1), logits.shape[-1]).to(logits.dtype)
    if not straight_through or not logits.requires_grad:
        return hard
    soft = torch.softmax(y / tau, dim=-1)
    return hard + soft - soft.detach()


# ---------------------------------------------------------------------- generators
class MLPGenerator(nn.Module):
    """Mechanism of a categorical (logits out) or continuous (values out) variable."""

    def __init__(self, cond_dim: int, noise_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = MLP(cond_dim + noise_dim, out_dim, hidden, layers=2)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, noise], dim=1))


class LatentMixture(nn.Module):
    """Latent image mechanism: a mixture of diagonal Gaussians over the image autoencoder's
    standardised code, its weights, means and scales given by an MLP of the parents (and of the
    confounder noise U, when the image has bidirected edges). The DCM decodes the sampled code
    with the frozen decoder.

    A mixture has a likelihood, so a stage whose target is the plain conditional P(V | pa(V))
    trains it by maximum likelihood (a mixture density network, Bishop 1994): exact mixture
    proportions, where kernel and adversarial losses in code space mis-weighted the modes
    (bench: probe-read digit frequencies 0.09-0.16 off). Other stages train it like any
    mechanism; the component choice is an exact Gumbel-max sample with straight-through
    gradients, as for categorical variables."""

    def __init__(self, cond_dim: int, conf_dim: int, code_dim: int, components: int,
                 hidden: int) -> None:
        super().__init__()
        self.k, self.c = components, code_dim
        self.net = MLP(cond_dim + conf_dim, components * (1 + 2 * code_dim), hidden, layers=2)

    def params(self, cond: torch.Tensor, conf: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (n, K), means (n, K, c), log-scales (n, K, c))."""
        out = self.net(torch.cat([cond, conf], dim=1))
        k, c = self.k, self.c
        logits = out[:, :k]
        mu = out[:, k:k + k * c].view(-1, k, c)
        log_s = out[:, k + k * c:].view(-1, k, c).clamp(-6.0, 2.0)
        return logits, mu, log_s

    def sample(self, cond: torch.Tensor, conf: torch.Tensor, eps: torch.Tensor, tau: float,
               gen: torch.Generator | None, straight_through: bool = False) -> torch.Tensor:
        """Codes ``(n, c)``: component by Gumbel-max, then ``mu + exp(log_s) * eps``."""
        logits, mu, log_s = self.params(cond, conf)
        pick = gumbel_one_hot(logits, tau, gen, straight_through)
        return torch.einsum("nk,nkc->nc", pick, mu + log_s.exp() * eps[:, None, :])

    def log_prob(self, cond: torch.Tensor, conf: torch.Tensor, code: torch.Tensor
                 ) -> torch.Tensor:
        """log p(code | cond, conf), ``(n,)``."""
        logits, mu, log_s = self.params(cond, conf)
        z = (code[:, None, :] - mu) * torch.exp(-log_s)
        comp = -0.5 * z.pow(2).sum(-1) - log_s.sum(-1) - 0.5 * self.c * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(logits, dim=1) + comp, dim=1)


class MLPImageGenerator(nn.Module):
    """Tiny-image mechanism for CPU: an MLP with a linear pixel output."""

    def __init__(self, cond_dim: int, noise_dim: int, shape: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.net = MLP(cond_dim + noise_dim, math.prod(self.shape), hidden, layers=2)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, noise], dim=1)).view(-1, *self.shape)


class ConvImageGenerator(nn.Module):
    """Image mechanism: linear stem to a small map, then (upsample, concat condition planes, conv)
    per resolution, a linear 3x3 output conv, and a centre crop to the requested size."""

    def __init__(self, cond_dim: int, noise_dim: int, shape: Sequence[int], channels: int) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        self.shape = (c, h, w)
        n_up = 1
        while max(math.ceil(h / 2 ** n_up), math.ceil(w / 2 ** n_up)) > 7:
            n_up += 1
        self.h0, self.w0 = math.ceil(h / 2 ** n_up), math.ceil(w / 2 ** n_up)
        widths = [min(channels * 2 ** (n_up - i), 4 * channels) for i in range(n_up + 1)]
        self.cond_dim = cond_dim
        self.stem = nn.Linear(cond_dim + noise_dim, widths[0] * self.h0 * self.w0)
        self.blocks = nn.ModuleList(
            nn.Conv2d(widths[i] + cond_dim, widths[i + 1], 3, padding=1) for i in range(n_up))
        self.out = nn.Conv2d(widths[-1] + cond_dim, c, 3, padding=1)
        self.widths = widths

    def _cat(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.cond_dim == 0:
            return x
        return torch.cat([x, plane(cond, x.shape[2], x.shape[3])], dim=1)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(torch.cat([cond, noise], dim=1)), 0.2)
        x = x.view(-1, self.widths[0], self.h0, self.w0)
        for conv in self.blocks:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.leaky_relu(conv(self._cat(x, cond)), 0.2)
        x = self.out(self._cat(x, cond))
        c, h, w = self.shape
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return x[:, :, top:top + h, left:left + w]


# ---------------------------------------------------------------------- image coder
class ImageCoder(nn.Module):
    """A small autoencoder fitted on the study's real images; its standardised code describes an
    image to label mechanisms, MMD losses and critics of label stages (design.md §7).

    ``fitted`` is a buffer so a saved model remembers whether the coder was trained.
    """

    def __init__(self, shape: Sequence[int], code_dim: int, hidden: int = 256,
                 mlp_max: int = 4096) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        c, h, w = self.shape
        # MLP up to mlp_max values: on CPU a conv coder of 3x28x28 images fitted ~10x slower
        # (273 s vs 28 s for 2000 steps) for a reconstruction MSE of 0.0098 vs 0.0134
        self.conv = c * h * w > mlp_max
        if self.conv:
            layers: list[nn.Module] = []
            ch, size, in_ch = 16, max(h, w), c
            while size > 8:
                layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), _act()]
                in_ch, ch, size = ch, min(ch * 2, 64), (size + 1) // 2
            self.enc_body = nn.Sequential(*layers, nn.Flatten())
            with torch.no_grad():
                flat = self.enc_body(torch.zeros(1, c, h, w)).shape[1]
            self.encoder = nn.Sequential(self.enc_body, nn.Linear(flat, hidden), _act(),
                                         nn.Linear(hidden, code_dim))
            self.decoder: nn.Module = ConvImageGenerator(0, code_dim, self.shape, 16)
        else:
            self.encoder = nn.Sequential(nn.Flatten(), MLP(c * h * w, code_dim, hidden, 1))
            self.decoder = MLPImageGenerator(0, code_dim, self.shape, hidden)
        self.register_buffer("mean", torch.zeros(code_dim))
        self.register_buffer("std", torch.ones(code_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised code ``(n, code_dim)``; differentiable in ``x``."""
        return (self.encoder(x) - self.mean) / self.std

    def decode_raw(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code.new_zeros(code.shape[0], 0), code)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Image from a standardised code (the inverse scale of :meth:`encode`); differentiable."""
        return self.decode_raw(code * self.std + self.mean)

    def fit(self, images: torch.Tensor, steps: int = 600, batch: int = 128, lr: float = 1e-3,
            seed: int = 0) -> float:
        """Fit the autoencoder (MSE) on real images; returns the final reconstruction MSE."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        n = images.shape[0]
        loss = torch.zeros(())
        was_training = self.training
        self.train()
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch, n),), generator=gen).to(images.device)
            x = images[idx]
            loss = F.mse_loss(self.decode_raw(self.encoder(x)), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            codes = torch.cat([self.encoder(images[i:i + 1024]) for i in range(0, n, 1024)])
            self.mean.copy_(codes.mean(0))
            self.std.copy_(codes.std(0).clamp_min(1e-3))
            self.fitted.fill_(True)
        self.train(was_training)
        for p in self.parameters():
            p.requires_grad_(False)
        return float(loss.detach())


# ---------------------------------------------------------------------- critics
class Critic(nn.Module):
    """WGAN critic over one target's rows: flat part (one-hot labels, continuous values, image
    codes) plus zero or more pixel images, ``pack`` samples per input (PacGAN).

    Images are read by a strided conv encoder whose input also carries the row's flat part as
    constant planes; the output adds a projection term ``<embed(flat), h>`` (Miyato & Koyama 2018).
    """

    def __init__(self, flat_dim: int, image_shapes: Sequence[Sequence[int]], hidden: int,
                 channels: int = 32, pack: int = 4) -> None:
        super().__init__()
        self.pack = pack
        self.flat_dim = flat_dim
        self.encoders = nn.ModuleList()
        feat = 0
        for shape in image_shapes:
            c, h, w = shape
            layers: list[nn.Module] = []
            in_ch, ch, size = pack * (c + flat_dim), channels, max(h, w)
            while size > 4:
                layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), _act()]
                in_ch, ch, size = ch, min(ch * 2, 4 * channels), size // 2
            layers.append(nn.Flatten())
            enc = nn.Sequential(*layers)
            with torch.no_grad():
                d = enc(torch.zeros(1, pack * (c + flat_dim), h, w)).shape[1]
            self.encoders.append(nn.Sequential(enc, nn.Linear(d, hidden), _act()))
            feat += hidden
        self.body = MLP(pack * flat_dim + feat, hidden, hidden, layers=1)
        self.head = nn.Linear(hidden, 1)
        self.embed = nn.Linear(pack * flat_dim, hidden, bias=False) if flat_dim else None

    def packed(self, flat: torch.Tensor, images: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m = flat.shape[0] // self.pack
        f = flat[: m * self.pack].reshape(m, self.pack * self.flat_dim)
        ims = []
        for x in images:
            x = x[: m * self.pack]
            if self.flat_dim:
                x = torch.cat([x, plane(flat[: m * self.pack], x.shape[2], x.shape[3])], dim=1)
            ims.append(x.reshape(m, -1, x.shape[2], x.shape[3]))
        return f, ims

    def forward(self, flat: torch.Tensor, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        f, ims = self.packed(flat, images)
        feats = [f] + [enc(x) for enc, x in zip(self.encoders, ims, strict=True)]
        h = F.leaky_relu(self.body(torch.cat(feats, dim=1)), 0.2)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(f) * h).sum(1)
        return out


def gradient_penalty(critic: Critic, real: tuple[torch.Tensor, list[torch.Tensor]],
                     fake: tuple[torch.Tensor, list[torch.Tensor]],
                     gen: torch.Generator | None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017) on random interpolates, per packed input."""
    n = real[0].shape[0]
    alpha = torch.rand((n, 1), generator=gen, device=real[0].device)
    flat = (alpha * real[0] + (1 - alpha) * fake[0]).requires_grad_(True)
    ims = [(alpha[:, :, None, None] * r + (1 - alpha[:, :, None, None]) * f).requires_grad_(True)
           for r, f in zip(real[1], fake[1], strict=True)]
    out = critic(flat, ims)
    grads = torch.autograd.grad(out.sum(), [flat, *ims], create_graph=True)
    m = out.shape[0]
    g = torch.cat([gr[: m * critic.pack].reshape(m, -1) for gr in grads], dim=1)
    return ((g.norm(2, dim=1) - 1.0) ** 2).mean()


# ---------------------------------------------------------------------- kernel loss
def mmd2(x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
         ) -> torch.Tensor:
    """Unbiased squared MMD (Gretton et al. 2012) with a mixture of RBF kernels.

    Bandwidths are multiples of the median pairwise distance of the pooled sample (detached), so
    the loss adapts to the feature scale of each stage.
    """
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y], dim=0)
    d2 = torch.cdist(z, z).pow(2)
    with torch.no_grad():
        med = d2[d2 > 0].median() if bool((d2 > 0).any()) else torch.ones((), device=z.device)
    k = sum(torch.exp(-d2 / (2 * s * s * med)) for s in scales)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean()
