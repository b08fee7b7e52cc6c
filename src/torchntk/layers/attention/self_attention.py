"""``GlobalSelfAttention``: multi-head dot-product self-attention over the spatial axes.

Infinite-width limit of Hron et al. 2020 ("Infinite attention: NNGP and NTK for deep attention
networks"), with the arguments and conventions of neural-tangents' ``stax.GlobalSelfAttention``.
Inputs are channels first, ``(N, C, L)`` or ``(N, C, H, W)``; the ``D`` positions (``L`` or
``H * W``) attend to each other. Write ``p, q, a, b`` for positions and ``Sigma[p, a]`` for the
covariance of the input at ``p`` (of ``x``) and ``a`` (of ``x'``).

Finite network (NTK parameterization, all weights ``N(0, 1)``; ``n`` input channels):

    K_h = X W_K,h,   Q_h = X W_Q,h (= K_h when ``linear_scaling``),   V_h = X W_V,h
    G_h = phi(QK_std * Q_h K_h^T / (n * n_key^s))          s = 1 (linear scaling) or 1/2
    f   = OV_std / sqrt(n_val * n_heads * n) * concat_h(G_h V_h) W_out + b_std * b

with ``QK_std = W_query_std * W_key_std``, ``OV_std = W_out_std * W_value_std`` and ``phi`` the
softmax over the key positions, the identity, ``abs`` or ``relu``. Positional embeddings
``E = W_pos_emb_std * P`` (``P``: a trainable ``(n_pe, *spatial)`` parameter, ``N(0, 1)``, made
``N(0, R)`` across positions by a Cholesky factor of ``R`` when ``pos_emb_decay_fn`` is given) are
added to (``"sum"``) or concatenated with (``"concat"``) the input of the keys and queries, and
of the values too when ``val_pos_emb``.

Infinite width (``n_key``, ``n_val * n_heads`` and ``n_chan_out`` to infinity), linear scaling:
the attention weights become deterministic,

    G(x)[p, a] = phi(QK_std * S(x, x)[p, a])    (softmax over a),
    S = w_in Sigma + w_pe R,        R[p, a] = decay(sum_axes |p - a|^p_norm)   (identity: [p == a])

with ``(w_in, w_pe) = (1, W_pos_emb_std^2)`` for ``"sum"``, ``(n/(n+n_pe), W_pos_emb_std^2 n_pe/(n+n_pe))``
for ``"concat"`` and ``S = Sigma`` without embeddings. Then, with ``V = S`` if ``val_pos_emb``
else ``Sigma`` (and ``Theta_V = w_in Theta + w_pe R`` if ``val_pos_emb`` else ``Theta``):

    Sigma'(x, x') = OV_std^2 G(x) V(x, x') G(x')^T + b_std^2
    Theta'(x, x') = OV_std^2 G(x) Theta_V(x, x') G(x')^T + b_std^2 + 2 OV_std^2 G(x) V(x, x') G(x')^T

(the last term: the gradients of ``W_out`` and ``W_V``; those of the keys and queries vanish at
infinite ``n_key``). With ``linear_scaling=False`` the weights stay random at infinite width; the
kernel has a closed form for the identity mechanism only (:func:`sqrt_identity`), otherwise
:func:`~torchntk.layers.monte_carlo_kernel` estimates it.

Masks (True = padding): masked key positions get weight 0 (``-inf`` before the softmax), masked
embeddings are zeroed, and the output kernel is 0 at every pair with a masked position.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..._checks import check_choice, check_hyper, check_int, check_number
from ...errors import InvalidArgumentError, SpecError, UnsupportedLayerError
from ._math import attention_weights, pos_emb_covariance, sqrt_identity, symmetrize
from .._spatial import from_positions, to_positions
from .._core.protocol import Layer, Shapes, single
from .._side import SideModule
from .._core.kernel import Kernel
from .._core.supports import Supports

__all__ = ["GlobalSelfAttention"]

MECHANISMS = ("softmax", "identity", "abs", "relu")
POS_EMB_TYPES = ("none", "sum", "concat")


def _sq(v: Any) -> Any:
    return 0.0 if v is None else v * v



class GlobalSelfAttention(Layer):
    """Multi-head self-attention over all positions (see the module docstring for the formulas).

    Args:
        n_chan_out: output channels. n_chan_key: channels of keys/queries per head.
        n_chan_val: channels of values per head. n_heads: heads.
        linear_scaling: True (default): logits scaled by ``1 / n_chan_key`` with the query
            weights tied to the keys' (the kernel has a closed form); False: ``1 /
            sqrt(n_chan_key)``, independent queries (a closed form for ``"identity"`` only; the
            others: finite networks and Monte Carlo).
        W_key_std, W_query_std: enter as ``QK_std = W_query_std * W_key_std``.
        W_value_std, W_out_std: enter as ``OV_std = W_out_std * W_value_std``.
        b_std: bias of the output (None: no bias). Every std may be a 0-dim tensor.
        attention_mechanism: ``"softmax"``, ``"identity"``, ``"abs"`` or ``"relu"`` (any case).
        pos_emb_type: ``"none"``, ``"sum"`` or ``"concat"``.
        pos_emb_p_norm, pos_emb_decay_fn: covariance of the embeddings across positions,
            ``decay_fn(sum_axes |p - a|^p_norm)`` (a function of a tensor); None: independent.
        n_chan_pos_emb: embedding channels (None: the input's; ``"sum"`` needs exactly those).
        W_pos_emb_std: scale of the embeddings. val_pos_emb: feed them to the values too.

    Example:
        >>> from torchntk import layers as L
        >>> spec = L.serial(L.Dense(64), L.GlobalSelfAttention(64, 64, 64, 4), L.GlobalAvgPool(), L.Dense(1))
        >>> spec.kernel(torch.randn(3, 5, 7)).ntk.shape
        torch.Size([3, 3])
    """

    supports = Supports(masks=True, full_layout=True)

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: float = 1.0,
        W_value_std: float = 1.0,
        W_query_std: float = 1.0,
        W_out_std: float = 1.0,
        b_std: float | None = None,
        attention_mechanism: str = "softmax",
        pos_emb_type: str = "none",
        pos_emb_p_norm: float = 2,
        pos_emb_decay_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        n_chan_pos_emb: int | None = None,
        W_pos_emb_std: float = 1.0,
        val_pos_emb: bool = False,
    ) -> None:
        who = "GlobalSelfAttention"
        self.n_chan_out = check_int("n_chan_out", n_chan_out, minimum=1, who=who)
        self.n_chan_key = check_int("n_chan_key", n_chan_key, minimum=1, who=who)
        self.n_chan_val = check_int("n_chan_val", n_chan_val, minimum=1, who=who)
        self.n_heads = check_int("n_heads", n_heads, minimum=1, who=who)
        for name, flag in (("linear_scaling", linear_scaling), ("val_pos_emb", val_pos_emb)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{who}: `{name}` must be True or False, got {flag!r}")
        self.linear_scaling, self.val_pos_emb = linear_scaling, val_pos_emb
        self.W_key_std = check_hyper("W_key_std", W_key_std, minimum=0.0, who=who)
        self.W_value_std = check_hyper("W_value_std", W_value_std, minimum=0.0, who=who)
        self.W_query_std = check_hyper("W_query_std", W_query_std, minimum=0.0, who=who)
        self.W_out_std = check_hyper("W_out_std", W_out_std, minimum=0.0, who=who)
        self.b_std = check_hyper("b_std", b_std, minimum=0.0, allow_none=True, who=who)
        self.W_pos_emb_std = check_hyper("W_pos_emb_std", W_pos_emb_std, minimum=0.0, who=who)
        self.attention_mechanism = check_choice("attention_mechanism", attention_mechanism, MECHANISMS, any_case=True, who=who)
        self.pos_emb_type = check_choice("pos_emb_type", pos_emb_type, POS_EMB_TYPES, any_case=True, who=who)
        self.pos_emb_p_norm = check_number("pos_emb_p_norm", pos_emb_p_norm, minimum=0.0, strict=True, who=who)
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise InvalidArgumentError(f"{who}: `pos_emb_decay_fn` must be None or a function of a tensor, got {pos_emb_decay_fn!r}")
        self.pos_emb_decay_fn = pos_emb_decay_fn
        if n_chan_pos_emb is not None:
            check_int("n_chan_pos_emb", n_chan_pos_emb, minimum=1, who=who)
        self.n_chan_pos_emb = n_chan_pos_emb

    def __repr__(self) -> str:
        return (
            f"GlobalSelfAttention({self.n_chan_out}, {self.n_chan_key}, {self.n_chan_val}, {self.n_heads}, "
            f"linear_scaling={self.linear_scaling}, attention_mechanism={self.attention_mechanism!r}, "
            f"pos_emb_type={self.pos_emb_type!r})"
        )

    # -- shapes -----------------------------------------------------------------------------

    def _n_pe(self, shape: tuple[int, ...]) -> int:
        """Channels of the positional embeddings (0 without them)."""
        if self.pos_emb_type == "none":
            return 0
        n_pe = shape[0] if self.n_chan_pos_emb is None else self.n_chan_pos_emb
        if self.pos_emb_type == "sum" and n_pe != shape[0]:
            raise SpecError(
                f"{self!r}: `n_chan_pos_emb`={n_pe} must be None or the input's channels {shape[0]} with pos_emb_type='sum'"
            )
        return n_pe

    def output_shape(self, input_shape: Shapes) -> Shapes:
        shape = single(self, input_shape)
        if len(shape) < 2:
            raise SpecError(
                f"{self!r} attends over spatial positions and needs inputs (C, L) or (C, H, W) (channels first); "
                f"its input is flat with shape {shape}"
            )
        self._n_pe(shape)
        return (self.n_chan_out, *shape[1:])

    def needs_full(self, input_shape: Shapes, out_full: Any) -> Any:
        return True

    # -- kernel -----------------------------------------------------------------------------

    def _mixing(self, n: int, n_pe: int) -> tuple[float, float]:
        """``(w_in, w_pe)``: weights of the input kernel and of ``R`` in ``S``."""
        if self.pos_emb_type == "none":
            return 1.0, 0.0
        w_pe = _sq(self.W_pos_emb_std)
        if self.pos_emb_type == "concat":
            return n / (n + n_pe), w_pe * (n_pe / (n + n_pe))
        return 1.0, w_pe

    def kernel_rule(self, k: Kernel) -> Kernel:
        out_shape = self.output_shape(k.shape)
        if not self.linear_scaling and self.attention_mechanism != "identity":
            raise UnsupportedLayerError(
                f"{self!r}: with linear_scaling=False the attention weights stay random at infinite width and the "
                f"kernel of {self.attention_mechanism!r} attention has no closed form; estimate it with "
                "torchntk.layers.monte_carlo_kernel(spec, x, ...) or use linear_scaling=True"
            )
        if not k.full_spatial:
            raise SpecError(f"{self!r} needs the full spatial covariance; call it through spec.kernel")
        spatial, nsp = tuple(k.shape[1:]), k.spatial_ndim
        n, n_pe = k.shape[0], self._n_pe(k.shape)
        w_in, w_pe = self._mixing(n, n_pe)
        m1, m2 = k.masks
        keep1 = None if m1 is None else ~m1.reshape(m1.shape[0], -1)
        keep2 = None if m2 is None else ~m2.reshape(m2.shape[0], -1)

        nngp = to_positions(k.nngp, 2, nsp)
        ntk = None if k.ntk is None else to_positions(k.ntk, 2, nsp)
        cov1 = to_positions(k.cov1, 1, nsp)
        cov2 = None if k.cov2 is None else to_positions(k.cov2, 1, nsp)
        r = None
        if self.pos_emb_type != "none":
            r = pos_emb_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, nngp.dtype, nngp.device)

        def mixed(c: torch.Tensor) -> torch.Tensor:
            return c if r is None else w_in * c + w_pe * r

        qk = self.W_query_std * self.W_key_std
        ov2 = _sq(self.W_out_std * self.W_value_std)
        b2 = _sq(self.b_std)
        if not self.linear_scaling:
            new_nngp, new_ntk, new_cov1, new_cov2 = sqrt_identity(
                nngp, ntk, cov1, cov2, mixed, r, w_in, w_pe, keep1, keep2, self.val_pos_emb, _sq(qk) * ov2, b2
            )
            return self._finish(k, out_shape, new_nngp, new_ntk, new_cov1, new_cov2, keep1, keep2)
        g1 = attention_weights(qk * mixed(cov1), keep1, self.attention_mechanism)
        g2 = g1 if cov2 is None else attention_weights(qk * mixed(cov2), keep2, self.attention_mechanism)
        # The weights of masked keys are 0, so G R12 G'^T needs no masked copy of R.
        val = self.val_pos_emb and r is not None

        def sandwich(a: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """``a[i] @ t[i, j] @ b[j]^T`` for every pair ``(i, j)``."""
            return torch.matmul(torch.matmul(a[:, None], t), b[None].transpose(-1, -2))

        def pe_term(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """``w_pe a[i] R b[j]^T``: the embeddings' share of the values' covariance."""
            return w_pe * torch.einsum("ipa,ab,jqb->ijpq", a, r, b)

        def self_term(g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out = torch.matmul(torch.matmul(g, mixed(c) if val else c), g.transpose(-1, -2))
            return ov2 * out + b2

        heads = sandwich(g1, nngp, g2)
        if val:
            heads = w_in * heads + pe_term(g1, g2)
        new_nngp = ov2 * heads + b2
        new_ntk = None
        if ntk is not None:
            t = sandwich(g1, ntk, g2)
            if val:
                t = w_in * t + pe_term(g1, g2)
            new_ntk = ov2 * (t + 2 * heads) + b2
        new_cov1 = self_term(g1, cov1)
        new_cov2 = None if cov2 is None else self_term(g2, cov2)
        return self._finish(k, out_shape, new_nngp, new_ntk, new_cov1, new_cov2, keep1, keep2)

    def _finish(self, k: Kernel, out_shape: tuple[int, ...], new_nngp: torch.Tensor, new_ntk: torch.Tensor | None,
                new_cov1: torch.Tensor, new_cov2: torch.Tensor | None, keep1: Any, keep2: Any) -> Kernel:
        """Zero the pairs with a padded position, symmetrize a self-kernel, back to the full layout."""
        spatial = tuple(k.shape[1:])
        nngp = new_nngp
        if keep1 is not None or keep2 is not None:  # 0 at every pair with a padded position
            d = nngp.shape[-1]
            ones = torch.ones(d, dtype=torch.bool, device=nngp.device)
            k1 = keep1 if keep1 is not None else ones.expand(nngp.shape[0], d)
            k2 = keep2 if keep2 is not None else ones.expand(nngp.shape[1], d)
            pair = (k1[:, None, :, None] & k2[None, :, None, :]).to(nngp.dtype)
            new_nngp = new_nngp * pair
            new_ntk = None if new_ntk is None else new_ntk * pair
            new_cov1 = new_cov1 * (k1[:, :, None] & k1[:, None, :]).to(nngp.dtype)
            if new_cov2 is not None:
                new_cov2 = new_cov2 * (k2[:, :, None] & k2[:, None, :]).to(nngp.dtype)

        if new_cov2 is None:
            # x2 is x1: make the kernel exactly symmetric with its diagonal blocks equal to cov1
            # bit for bit (the products above round differently), so that a later arc-cosine
            # rule sees correlation exactly 1 there, whatever the batch or the padding.
            new_nngp = symmetrize(new_nngp, new_cov1)
            new_ntk = None if new_ntk is None else symmetrize(new_ntk)
        return k.replace(
            nngp=from_positions(new_nngp, 2, spatial),
            ntk=None if new_ntk is None else from_positions(new_ntk, 2, spatial),
            cov1=from_positions(new_cov1, 1, spatial),
            cov2=None if new_cov2 is None else from_positions(new_cov2, 1, spatial),
            shape=out_shape, diagonal_spatial=False, is_gaussian=True, is_input=False,
        )

    # -- finite network ---------------------------------------------------------------------

    def make_module(self, input_shape: Shapes, generator: Any, dtype: Any, device: Any) -> nn.Module:
        shape = single(self, input_shape)
        self.output_shape(shape)
        return _AttentionModule(self, shape, generator, dtype, device)


def _value(v: Any) -> Any:
    """A std for the forward pass: a Python float, or the tensor itself (differentiable)."""
    return 0.0 if v is None else v


class _AttentionModule(SideModule):
    """The finite network of :class:`GlobalSelfAttention` (formulas in the module docstring)."""

    def __init__(self, layer: GlobalSelfAttention, shape: tuple[int, ...], generator: Any, dtype: Any, device: Any) -> None:
        super().__init__()
        self.layer = layer
        c, spatial = shape[0], tuple(shape[1:])
        n_pe = layer._n_pe(shape)
        self.n_pe = n_pe
        n_keys_in = c + (n_pe if layer.pos_emb_type == "concat" else 0)
        n_vals_in = n_keys_in if layer.val_pos_emb else c
        self.n_keys_in, self.n_vals_in = n_keys_in, n_vals_in
        kw = {"dtype": dtype, "device": device}

        def draw(*size: int) -> nn.Parameter:
            t = torch.empty(size, **kw)
            with torch.no_grad():
                t.normal_(0.0, 1.0, generator=generator)
            return nn.Parameter(t)

        h = layer.n_heads
        self.W_key = draw(h, n_keys_in, layer.n_chan_key)
        self.W_query = None if layer.linear_scaling else draw(h, n_keys_in, layer.n_chan_key)
        self.W_value = draw(h, n_vals_in, layer.n_chan_val)
        self.W_out = draw(h * layer.n_chan_val, layer.n_chan_out)
        has_bias = layer.b_std is not None and float(layer.b_std) != 0
        self.bias = draw(layer.n_chan_out) if has_bias else None
        self.pos_emb = draw(math.prod(spatial), n_pe) if n_pe else None
        if n_pe and layer.pos_emb_decay_fn is not None:
            r = pos_emb_covariance(spatial, layer.pos_emb_p_norm, layer.pos_emb_decay_fn, torch.float64, device)
            chol, info = torch.linalg.cholesky_ex(r)
            if int(info) != 0:
                raise InvalidArgumentError(
                    "GlobalSelfAttention: the covariance given by `pos_emb_decay_fn` is not positive definite on "
                    f"the {tuple(spatial)} positions, so no finite embedding has it"
                )
            self.register_buffer("pos_chol", chol.to(self.W_key.dtype))
        else:
            self.register_buffer("pos_chol", None)

    def extra_repr(self) -> str:
        return repr(self.layer)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pattern: Any = None) -> torch.Tensor:
        layer = self.layer
        n, spatial = x.shape[0], x.shape[2:]
        xs = x.flatten(2).transpose(1, 2)  # (N, D, C)
        keep = None if mask is None else ~mask.reshape(n, -1)
        xk = xv = xs
        if self.pos_emb is not None:
            pe = self.pos_emb if self.pos_chol is None else self.pos_chol @ self.pos_emb  # (D, n_pe)
            pe = _value(layer.W_pos_emb_std) * pe.expand(n, -1, -1)
            if keep is not None:
                pe = pe * keep[..., None].to(pe.dtype)
            xk = xs + pe if layer.pos_emb_type == "sum" else torch.cat([xs, pe], dim=-1)
            xv = xk if layer.val_pos_emb else xs
        keys = torch.einsum("ndc,hck->nhdk", xk, self.W_key)
        queries = keys if self.W_query is None else torch.einsum("ndc,hck->nhdk", xk, self.W_query)
        scale = self.n_keys_in * (layer.n_chan_key if layer.linear_scaling else math.sqrt(layer.n_chan_key))
        logits = torch.matmul(queries, keys.transpose(-1, -2)) * (layer.W_query_std * layer.W_key_std / scale)
        g = attention_weights(logits, None if keep is None else keep[:, None], layer.attention_mechanism)
        values = torch.einsum("ndc,hcv->nhdv", xv, self.W_value)
        heads = torch.matmul(g, values).permute(0, 2, 1, 3).reshape(n, xs.shape[1], -1)  # (N, D, h * v)
        ov = layer.W_out_std * layer.W_value_std / math.sqrt(layer.n_chan_val * layer.n_heads * self.n_vals_in)
        out = torch.matmul(heads, self.W_out) * ov
        if self.bias is not None:
            out = out + _value(layer.b_std) * self.bias
        return out.transpose(1, 2).reshape(n, layer.n_chan_out, *spatial)
