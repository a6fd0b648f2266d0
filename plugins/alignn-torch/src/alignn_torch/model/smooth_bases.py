"""Radial and angular bases of ``alignn_atomwise_pure_smooth`` and its cutoff envelope.

* :func:`polynomial_envelope`: 1 at d = 0, and value, first and second derivative zero at the
  cutoff, for any real order p > 0 (``smooth_cutoff_coeff``).
* :class:`BesselBasis`: sqrt(2/r_c) sin(w_n d / r_c) / d, n = 1..N, with frequencies w_n
  initialised to n pi (the zeros of sin at d = r_c) and optionally learned.
* :class:`FourierAngularBasis`: [1/sqrt2, sin(k_j theta), cos(k_j theta)] / sqrt(pi) of the bond
  angle theta, j = 1..order, multipliers k_j initialised to j and optionally learned.

The frequencies are stored under ``frequencies`` either way (a parameter when learnable, a
buffer otherwise), so a checkpoint's keys do not depend on the ``*_learnable`` flags. Every
``forward`` is tensor-only so TorchScript compiles it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def polynomial_envelope(distance: torch.Tensor, cutoff: float, order: float) -> torch.Tensor:
    """u(t) = 1 - (p+1)(p+2)/2 t^p + p(p+2) t^(p+1) - p(p+1)/2 t^(p+2), t = d / ``cutoff``,
    p = ``order`` (any real p > 0), and 0 for d >= ``cutoff``.

    u(1) = u'(1) = u''(1) = 0, so whatever the envelope multiplies reaches zero at the cutoff
    with zero slope: energies and forces are continuous as a bond crosses it. [E] -> [E].
    (``physics.cutoff_envelope`` is the same polynomial for upstream's integer ``exponent``.)
    """
    p = order
    t = distance / cutoff
    u = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * t**p
        + p * (p + 2.0) * t ** (p + 1.0)
        - p * (p + 1.0) / 2.0 * t ** (p + 2.0)
    )
    return torch.where(distance < cutoff, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """Radial Bessel functions sqrt(2/r_c) sin(w_n d / r_c) / d: [E] -> [E, N].

    With w_n = n pi these are the zeroth-order spherical Bessel functions that vanish at r_c,
    orthonormal on [0, r_c] with weight d^2. Bond lengths are > 0 in every graph (coincident
    atoms are never edges), so 1/d is finite.
    """

    def __init__(self, cutoff: float, num_basis: int, learnable: bool = True) -> None:
        super().__init__()
        self.cutoff: float = float(cutoff)
        self.prefactor: float = math.sqrt(2.0 / float(cutoff))
        initial = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if learnable:
            self.frequencies = nn.Parameter(initial)
        else:
            self.register_buffer("frequencies", initial)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        d = distance.unsqueeze(1)  # [E, 1]
        return self.prefactor * torch.sin(self.frequencies * d / self.cutoff) / d  # [E, N]


class FourierAngularBasis(nn.Module):
    """Fourier series of the bond angle: cos theta [T] -> [T, 2 * order + 1].

    theta = acos(cos theta clamped to +-(1 - 1e-7)): the clamp keeps the derivative finite for
    straight and back-tracking triplets (cos = +-1 exactly), where it is zero instead.
    Features [1/sqrt2, sin(k_1 theta) .. sin(k_m theta), cos(k_1 theta) .. cos(k_m theta)] /
    sqrt(pi), orthonormal on [-pi, pi] for integer k_j.
    """

    def __init__(self, order: int, learnable: bool = True) -> None:
        super().__init__()
        self.order: int = int(order)
        self.constant: float = 1.0 / math.sqrt(2.0)
        self.scale: float = 1.0 / math.sqrt(math.pi)
        initial = torch.arange(1, order + 1, dtype=torch.get_default_dtype())
        if learnable:
            self.frequencies = nn.Parameter(initial)
        else:
            self.register_buffer("frequencies", initial)

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(torch.clamp(cos, -1.0 + 1e-7, 1.0 - 1e-7)).unsqueeze(1)  # [T, 1]
        angles = theta * self.frequencies  # [T, order]
        constant = torch.full_like(theta, self.constant)  # [T, 1]
        features = torch.cat([constant, torch.sin(angles), torch.cos(angles)], dim=1)
        return features * self.scale  # [T, 2 * order + 1]
