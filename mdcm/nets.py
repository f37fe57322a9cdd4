"""Mechanisms (one per variable, behind one interface: :class:`Mechanism`), critics and the kernel
loss (design.md §5, §7). Image coders live in :mod:`mdcm.coders`.

Conventions shared by every network here ("encoded" values):

* categorical -> one-hot float ``(n, k)`` (straight-through Gumbel-softmax during training);
* continuous  -> float ``(n, d)``;
* image       -> float ``(n, C, H, W)`` in ``[-1, 1]``.

A mechanism sees its parents as ONE flat condition vector (image parents enter as the code of an
:class:`mdcm.coders.ImageCoder`, the paper's trick of describing images to label mechanisms by a
low-dimensional code), its own noise ``Z_V`` and one noise vector ``U`` per bidirected edge it
touches. The DCM (mdcm/model.py) builds the condition vector and hands the SAME ``U`` sample to
both ends.

Image generators have a LINEAR output (clamped only at sampling): the prototype's tanh output
saturated at the black background (design.md §7). Their condition is fed as constant planes at
every resolution, and critics see label planes plus a projection term, so that the generator cannot
ignore its parents. Critics pack 4 samples per input (PacGAN, Lin et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MLP",
    "Mechanism",
    "MLPGenerator",
    "LatentMixture",
    "ConvImageGenerator",
    "MLPImageGenerator",
    "Critic",
    "has_log_prob",
    "gumbel_one_hot",
    "mmd2",
    "plane",
]


def act() -> nn.Module:
    """The hidden-layer activation of every network here."""
    return nn.LeakyReLU(0.2)


class MLP(nn.Sequential):
    """Linear -> LeakyReLU blocks with a linear output layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int = 2) -> None:
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), act()]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        super().__init__(*mods)


def plane(cond: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Broadcast a flat condition ``(n, c)`` to constant image planes ``(n, c, h, w)``."""
    return cond[:, :, None, None].expand(-1, -1, h, w)


def gumbel_one_hot(
    logits: torch.Tensor, tau: float, gen: torch.Generator | None, straight_through: bool = True
) -> torch.Tensor:
    """An exact one-hot sample of Categorical(softmax(logits)) (Gumbel-max).

    With ``straight_through`` the backward pass uses the Gumbel-softmax relaxation at temperature
    ``tau`` (Jang et al. 2017), so gradients reach the logits and, through children, upstream
    generators. The forward value is the exact hard sample either way.
    """
    logits = logits.float()  # float32 noise and softmax, also under bf16 autocast
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=logits.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    y = logits + g
    hard = F.one_hot(y.argmax(-1), logits.shape[-1]).to(logits.dtype)
    if not straight_through or not logits.requires_grad:
        return hard
    soft = torch.softmax(y / tau, dim=-1)
    return hard + soft - soft.detach()


# ---------------------------------------------------------------------- mechanisms
@runtime_checkable
class Mechanism(Protocol):
    """The one interface of a variable's mechanism ``V := G_V(pa(V), Z_V, U)``.

    ``cond`` is the flat condition built from the parents' values (image parents as their coder's
    code), ``u`` the concatenated noise of the bidirected edges touching V (``(n, 0)`` when none),
    shared with the other end of each edge. The mechanism draws its own noise ``Z_V`` from ``gen``
    and applies its own output head; it returns the encoded value (one-hot, vector or image).
    Mechanisms with a likelihood (``has_likelihood``) also have
    ``log_prob(cond, u, value, gen) -> (n,)``.
    """

    def sample(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor: ...


def has_log_prob(mechanism: object) -> bool:
    """Whether a mechanism has a likelihood (and so can train by maximum likelihood)."""
    return bool(getattr(mechanism, "has_likelihood", False)) and callable(
        getattr(mechanism, "log_prob", None)
    )


class MLPGenerator(nn.Module):
    """Mechanism of a categorical or continuous variable: ``V := MLP(pa, Z_V, U)``.

    Categorical: the MLP gives logits and V is an exact one-hot Gumbel-max sample (straight-through
    Gumbel-softmax gradients when training); continuous: the MLP's linear output is V.

    A categorical mechanism has a likelihood (:meth:`log_prob`), so a plain-conditional stage
    fits it by maximum likelihood; a continuous one has no density and trains by MMD.
    """

    def __init__(
        self, cond_dim: int, z_dim: int, conf_dim: int, out_dim: int, hidden: int, categorical: bool
    ) -> None:
        super().__init__()
        self.z_dim, self.categorical = z_dim, categorical
        self.net = MLP(cond_dim + z_dim + conf_dim, out_dim, hidden, layers=2)

    def sample(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor:
        z = torch.randn(cond.shape[0], self.z_dim, generator=gen, device=cond.device)
        out = self.net(torch.cat([cond, z, u], dim=1))
        return gumbel_one_hot(out, tau, gen, straight_through) if self.categorical else out

    @property
    def has_likelihood(self) -> bool:
        return self.categorical

    def log_prob(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        value: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``log softmax(MLP(cond, Z_V, u))[value]`` at one fresh draw of the own noise ``Z_V``,
        ``(n,)``; ``value`` one-hot. Its expectation over ``Z_V`` is maximised, for every
        ``Z_V``, by the conditional itself, so the maximiser ignores ``Z_V`` and sampling with
        any noise gives that conditional (with ``u`` it would also learn to ignore the
        confounder: plain-conditional stages only, where ``u`` is empty)."""
        if not self.categorical:
            raise ValueError("a continuous MLP mechanism has no likelihood")
        z = torch.randn(cond.shape[0], self.z_dim, generator=gen, device=cond.device)
        logits = self.net(torch.cat([cond, z, u], dim=1)).float()
        return (torch.log_softmax(logits, dim=1) * value).sum(1)


class LatentMixture(nn.Module):
    """Latent image mechanism ``V := decode(mu_k + s_k * eps)``, ``k ~ Cat(w(pa, U))``: a mixture
    of diagonal Gaussians over the image autoencoder's standardised code, its weights, means and
    scales given by an MLP of the parents (and of the confounder noise U, when the image has
    bidirected edges); ``Z_V = (k, eps)``. The study's frozen decoder turns the code into pixels.

    A mixture has a likelihood, so a stage whose target is the plain conditional P(V | pa(V))
    trains it by maximum likelihood (a mixture density network, Bishop 1994): exact mixture
    proportions, where kernel and adversarial losses in code space mis-weighted the modes
    (bench: probe-read digit frequencies 0.09-0.16 off). Other stages train it like any
    mechanism; the component choice is an exact Gumbel-max sample with straight-through
    gradients, as for categorical variables.

    ``coder`` (the DCM's :class:`mdcm.coders.ImageCoder` of this variable) is shared, not owned:
    its weights are saved once, under ``coders.<V>``. Without a coder the values are the codes.
    """

    def __init__(
        self,
        cond_dim: int,
        conf_dim: int,
        code_dim: int,
        components: int,
        hidden: int,
        coder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.k, self.c = components, code_dim
        self.has_likelihood = True
        self.net = MLP(cond_dim + conf_dim, components * (1 + 2 * code_dim), hidden, layers=2)
        object.__setattr__(self, "coder", coder)  # not a sub-module (see the class docstring)

    def params(
        self, cond: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (n, K), means (n, K, c), log-scales (n, K, c))."""
        out = self.net(torch.cat([cond, u], dim=1))
        k, c = self.k, self.c
        logits = out[:, :k]
        mu = out[:, k : k + k * c].view(-1, k, c)
        log_s = out[:, k + k * c :].view(-1, k, c).clamp(-6.0, 2.0)
        return logits, mu, log_s

    def sample_code(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        eps: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor:
        """Codes ``(n, c)``: component by Gumbel-max, then ``mu + exp(log_s) * eps``."""
        logits, mu, log_s = self.params(cond, u)
        pick = gumbel_one_hot(logits, tau, gen, straight_through)
        return torch.einsum("nk,nkc->nc", pick, mu + log_s.exp() * eps[:, None, :])

    def code(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor:
        """A code drawn with this mechanism's own noise ``Z_V = (k, eps)`` from ``gen``: what
        :meth:`sample` decodes, and what the image's children read (:class:`mdcm.model.DCM`)."""
        eps = torch.randn(cond.shape[0], self.c, generator=gen, device=cond.device)
        return self.sample_code(cond, u, eps, gen, tau=tau, straight_through=straight_through)

    def sample(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor:
        code = self.code(cond, u, gen, tau=tau, straight_through=straight_through)
        return code if self.coder is None else self.coder.decode(code)

    def code_log_prob(
        self, cond: torch.Tensor, u: torch.Tensor, code: torch.Tensor
    ) -> torch.Tensor:
        """log p(code | cond, u), ``(n,)``."""
        logits, mu, log_s = self.params(cond, u)
        z = (code[:, None, :] - mu) * torch.exp(-log_s)
        comp = -0.5 * z.pow(2).sum(-1) - log_s.sum(-1) - 0.5 * self.c * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(logits, dim=1) + comp, dim=1)

    def log_prob(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        value: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """log-density of an image's code (or of a code, without a coder), ``(n,)``; exact, so
        ``gen`` is not used."""
        code = value if self.coder is None else self.coder.encode(value).detach()
        return self.code_log_prob(cond, u, code)


class _PixelSampling:
    """``sample`` of the pixel image mechanisms: ``Z_V`` = Gaussian noise plus, with ``modes``, a
    uniform one-hot latent (a discrete latent makes multi-modal images such as a color or a digit
    easy to emit; with Gaussian noise alone the prototype's generators blended modes)."""

    z_dim: int = 0
    modes: int = 0

    def sample(
        self,
        cond: torch.Tensor,
        u: torch.Tensor,
        gen: torch.Generator | None,
        *,
        tau: float = 1.0,
        straight_through: bool = False,
    ) -> torch.Tensor:
        n, dev = cond.shape[0], cond.device
        noise = [torch.randn(n, self.z_dim, generator=gen, device=dev)]
        if self.modes:
            mode = torch.randint(0, self.modes, (n,), generator=gen, device=dev)
            noise.append(F.one_hot(mode, self.modes).float())
        return self(cond, torch.cat([*noise, u], dim=1))  # type: ignore[operator]


class MLPImageGenerator(_PixelSampling, nn.Module):
    """Tiny-image mechanism for CPU, ``V := MLP(pa, Z_V, U)`` with a linear pixel output (also the
    decoder of small image coders, called with the code as its only input)."""

    def __init__(
        self,
        cond_dim: int,
        noise_dim: int,
        shape: Sequence[int],
        hidden: int,
        *,
        z_dim: int = 0,
        modes: int = 0,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.z_dim, self.modes = z_dim, modes
        self.net = MLP(cond_dim + noise_dim, math.prod(self.shape), hidden, layers=2)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, noise], dim=1)).view(-1, *self.shape)


class ConvImageGenerator(_PixelSampling, nn.Module):
    """Image mechanism ``V := G(pa, Z_V, U)``: linear stem to a small map, then (upsample, concat
    condition planes, conv) per resolution, a linear 3x3 output conv, and a centre crop to the
    requested size (also the decoder of conv image coders)."""

    def __init__(
        self,
        cond_dim: int,
        noise_dim: int,
        shape: Sequence[int],
        channels: int,
        *,
        z_dim: int = 0,
        modes: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        self.shape = (c, h, w)
        self.z_dim, self.modes = z_dim, modes
        n_up = 1
        while max(math.ceil(h / 2**n_up), math.ceil(w / 2**n_up)) > 7:
            n_up += 1
        self.h0, self.w0 = math.ceil(h / 2**n_up), math.ceil(w / 2**n_up)
        widths = [min(channels * 2 ** (n_up - i), 4 * channels) for i in range(n_up + 1)]
        self.cond_dim = cond_dim
        self.stem = nn.Linear(cond_dim + noise_dim, widths[0] * self.h0 * self.w0)
        self.blocks = nn.ModuleList(
            nn.Conv2d(widths[i] + cond_dim, widths[i + 1], 3, padding=1) for i in range(n_up)
        )
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
        return x[:, :, top : top + h, left : left + w]


# ---------------------------------------------------------------------- critics
class Critic(nn.Module):
    """WGAN critic over one target's rows: flat part (one-hot labels, continuous values, image
    codes) plus zero or more pixel images, ``pack`` samples per input (PacGAN).

    Images are read by a strided conv encoder whose input also carries the row's flat part as
    constant planes; the output adds a projection term ``<embed(flat), h>`` (Miyato & Koyama 2018).
    """

    def __init__(
        self,
        flat_dim: int,
        image_shapes: Sequence[Sequence[int]],
        hidden: int,
        channels: int = 32,
        pack: int = 4,
    ) -> None:
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
                layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), act()]
                in_ch, ch, size = ch, min(ch * 2, 4 * channels), size // 2
            layers.append(nn.Flatten())
            enc = nn.Sequential(*layers)
            with torch.no_grad():
                d = enc(torch.zeros(1, pack * (c + flat_dim), h, w)).shape[1]
            self.encoders.append(nn.Sequential(enc, nn.Linear(d, hidden), act()))
            feat += hidden
        self.body = MLP(pack * flat_dim + feat, hidden, hidden, layers=1)
        self.head = nn.Linear(hidden, 1)
        self.embed = nn.Linear(pack * flat_dim, hidden, bias=False) if flat_dim else None

    def packed(
        self, flat: torch.Tensor, images: Sequence[torch.Tensor]
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


def gradient_penalty(
    critic: Critic,
    real: tuple[torch.Tensor, list[torch.Tensor]],
    fake: tuple[torch.Tensor, list[torch.Tensor]],
    gen: torch.Generator | None,
) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017) on random interpolates, per packed input."""
    n = real[0].shape[0]
    alpha = torch.rand((n, 1), generator=gen, device=real[0].device)
    flat = (alpha * real[0] + (1 - alpha) * fake[0]).requires_grad_(True)
    ims = [
        (alpha[:, :, None, None] * r + (1 - alpha[:, :, None, None]) * f).requires_grad_(True)
        for r, f in zip(real[1], fake[1], strict=True)
    ]
    out = critic(flat, ims)
    grads = torch.autograd.grad(out.sum(), [flat, *ims], create_graph=True)
    m = out.shape[0]
    g = torch.cat([gr[: m * critic.pack].reshape(m, -1) for gr in grads], dim=1)
    return ((g.norm(2, dim=1) - 1.0) ** 2).mean()


# ---------------------------------------------------------------------- kernel loss
def mmd2(
    x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
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
