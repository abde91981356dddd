"""A critic Q(s, a) = c * f(concat(s, a)) with every Linear layer of f on lipbound's certified spectral
parametrisation (sigma_max(W_i) <= 1, certified) and 1-Lipschitz ReLU, so that

    Lip_2(Q restricted to s, a fixed) <= c * ||W_0[:, :d_s]||_2 * prod_{i >= 1} ||W_i||_2 <= c.

``c`` (``scale``) lets the critic fit returns of hundreds: a 1-Lipschitz critic cannot.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError
from lipbound.nn import spectral_parametrize
from lipbound.rl.networks import state_restriction


class SpectralCritic(nn.Module):
    """MLP critic on concat(s, a), hidden sizes ``hidden``, all Linear layers spectrally parametrised."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (64, 64), scale: float = 10.0):
        super().__init__()
        if state_dim < 1 or action_dim < 1:
            raise InvalidInputError(f"state_dim and action_dim must be >= 1, got {state_dim}, {action_dim}")
        if not scale > 0:
            raise InvalidInputError(f"scale must be > 0, got {scale}")
        self.state_dim, self.action_dim, self.scale = int(state_dim), int(action_dim), float(scale)
        sizes = (self.state_dim + self.action_dim, *hidden, 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.params = [spectral_parametrize(layer) for layer in self.linears]

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([states, actions], dim=-1)
        for i, layer in enumerate(self.linears):
            x = layer(x)
            if i < len(self.linears) - 1:
                x = torch.relu(x)
        return self.scale * x.squeeze(-1)

    def certify(self) -> list[float]:
        """Certify every layer (eval mode); returns the certified norms ||W_i||_2 of the effective weights."""
        self.eval()
        return [p.certify() for p in self.params]

    def layer_bounds(self) -> list[float]:
        """Certified ||W_0[:, :d_s]||_2 (state block) followed by ||W_i||_2 for i >= 1, of the effective weights."""
        norms = self.certify()
        w0 = self.linears[0].weight.detach()[:, : self.state_dim].double()
        state_block = float(torch.linalg.matrix_norm(w0, ord=2)) * (1 + 1e-9)
        return [min(state_block, norms[0]), *norms[1:]]

    def state_lipschitz_product(self) -> float:
        """Certified l_2 Lipschitz constant of s -> Q(s, a): scale * product of the layer bounds."""
        bound = self.scale
        for b in self.layer_bounds():
            bound *= b
        return bound

    def state_network(self, action: Tensor | None = None, augment: float | None = None) -> nn.Sequential:
        """A plain nn.Sequential computing s -> Q(s, a) for the fixed ``action`` (default zeros; its contribution
        W_0[:, d_s:] a is folded into the first bias), on the certified effective weights: the network to hand to
        lipbound.global_lipschitz or lipbound.local_lipschitz. The action enters only through the first bias, so
        the product bound holds for every action. ``augment``: see :func:`lipbound.rl.networks.state_restriction`."""
        self.certify()
        return state_restriction(list(self.linears), self.state_dim, action, self.scale, augment)
