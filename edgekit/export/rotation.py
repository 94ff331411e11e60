"""Computational invariance (QuaRot-style) for the fused writer: rotations that leave the float model unchanged
but spread activation outliers before onnxruntime quantizes activations to int8 in blocks.

Why: MatMulNBits at accuracy_level 4 (and llama.cpp's Q8_0/Q4_0 dots) quantize each block of 32 activations to
int8 with one scale; an outlier channel spends that scale and flattens its 31 neighbours. An orthogonal Q spreads
every channel over all of them. Pieces, each exact in float (parity with PyTorch stays 1.0):

- residual (offline): RMSNorm gains folded into the next linears (W·diag(g)·Q), out-projections Qᵀ·W, the
  embedding E·Q. Q is a randomized Hadamard matrix (diag(±1)·H/√n) when one of order `hidden` can be built here
  (Sylvester 2^k, times one Paley block of order q+1, q ≡ 3 mod 4 prime), else a seeded random orthogonal matrix.
- heads (offline): a Hadamard of order head_dim on every value head (v_proj's rows) and, transposed, on
  o_proj's input: attention mixes value rows linearly, so o_proj's input arrives rotated at no runtime cost.
- full: heads plus an online block-Hadamard on down_proj's input (SiLU(gate)·up is not linear, so it cannot be
  folded): reshape [..., I/B, B] · H_B, a float MatMul of I·B MACs a token; down_proj takes H_Bᵀ offline.

Tied embeddings stay tied: the final norm's gain becomes one small float MatMul M = Qᵀ·diag(g)·Q before the
lm_head, so the lm_head is (E·Q)ᵀ, the transpose of the rotated embedding table (a quantizer can still share it).
Nodes this adds carry ROTATE_MARK in their names; compress keeps them float (quantizing the Hadamard's input to
int8 would reintroduce the very error it removes).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import UnsupportedError

if TYPE_CHECKING:
    from edgekit.specs import RotateSettings, Target

log = logging.getLogger(__name__)

ROTATE_MARK = "/rotate/"
ROWS_PER_BLOCK = 4096  # embedding rows rotated at a time (SmolLM2: 19 MB of float64 instead of 226 MB)
# The rotation a build applies per quantization method unless told otherwise (--rotate). int8-weight: on SmolLM2
# KLD 0.0058 → 0.0037 and top-1 0.953 → 0.964 at the same decode speed; int4 lost there (docs/rotation.md).
METHOD_DEFAULTS: dict[str, str] = {"int8-weight": "full"}


def method_target(target: Target, method: str | None) -> Target:
    """`target` with `method`'s default rotation (METHOD_DEFAULTS) where the target chose none; `target` itself
    otherwise. As a target default, not an explicit --rotate, it is skipped for graphs the fused writer cannot write."""
    mode = METHOD_DEFAULTS.get(method or "")
    if mode is None or target.export.rotate.mode != "off":
        return target
    rotate = target.export.rotate.model_copy(update={"mode": mode})
    return target.model_copy(update={"export": target.export.model_copy(update={"rotate": rotate})})


@dataclass(frozen=True)
class Plan:
    """What the writer must add to the graph for a rotated model, and what export.json records."""

    # Online before down_proj: (left [m, m] or None, right [B, B]); x [.., m, B] → left · x · right
    down_hadamard: tuple[np.ndarray | None, np.ndarray] | None
    head_matrix: np.ndarray | None  # [hidden, hidden] before the lm_head (tied models), or None
    info: dict[str, Any]


def sylvester(n: int) -> np.ndarray:
    """Unnormalized ±1 Hadamard matrix of order n (a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def paley(order: int) -> np.ndarray:
    """Paley construction I: a ±1 Hadamard matrix of order q + 1 for a prime q ≡ 3 (mod 4)."""
    q = order - 1
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"Paley I needs order - 1 prime and ≡ 3 mod 4, got {order}")
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.asarray([0] + [1 if i in squares else -1 for i in range(1, q)], dtype=np.float64)
    jac = np.asarray([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((order, order))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jac
    return s + np.eye(order)


def hadamard(n: int) -> np.ndarray | None:
    """A ±1 Hadamard matrix of order n (Sylvester ⊗ at most one Paley block), or None if none is built here."""
    if n >= 1 and not n & (n - 1):
        return sylvester(n)
    k = 1
    while n % k == 0 and n // k > 2:
        m = n // k
        if _is_prime(m - 1) and (m - 1) % 4 == 3:
            return np.kron(sylvester(k), paley(m))
        k *= 2
    return None


def kron_factors(n: int) -> tuple[int, int] | None:
    """(m, k), n = m·k, k a power of two and m one too or a Paley order, smallest m + k (the online cost is n·(m + k))."""
    best = None
    k = 1
    while n % k == 0 and k <= n:
        m = n // k
        if m >= 2 and (not m & (m - 1) or (_is_prime(m - 1) and (m - 1) % 4 == 3)) and (best is None or m + k < sum(best)):
            best = (m, k)
        k *= 2
    return best


def online_hadamard(n: int, block: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(left, right, K): block > 0: blockdiag of H_block (left None); 0: all n channels mixed as left ⊗ right.
    K [n, n] is the whole transform on a row vector (down_proj's weight takes it offline)."""
    if block:
        right = sylvester(block) / np.sqrt(block)
        return None, right, np.kron(np.eye(n // block), right)
    factors = kron_factors(n)
    if factors is None:
        raise UnsupportedError(f"--rotate full: no Hadamard of order {n} is built here; set a block size")
    m, k = factors
    left = (sylvester(m) if not m & (m - 1) else paley(m)) / np.sqrt(m)
    right = sylvester(k) / np.sqrt(k)
    return left, right, np.kron(left.T, right)


def residual_rotation(n: int, basis: str, seed: int) -> tuple[np.ndarray, str]:
    """Orthogonal [n, n] Q and the basis actually used ("hadamard" falls back to "orthogonal" when none exists)."""
    rng = np.random.default_rng(seed)
    h = hadamard(n) if basis == "hadamard" else None
    if h is not None:
        signs = rng.choice([-1.0, 1.0], size=n)
        return signs[:, None] * h / np.sqrt(n), "hadamard"
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :], "orthogonal"


def check(model: Any, settings: RotateSettings) -> None:
    """Refuse what cannot be rotated exactly (UnsupportedError → exit 2 at the CLI)."""
    cfg = model.config
    hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    if settings.mode in ("heads", "full") and head_dim & (head_dim - 1):
        raise UnsupportedError(f"--rotate {settings.mode} needs a power-of-two head_dim, got {head_dim}; "
                               "use --rotate residual")
    if settings.mode == "full" and settings.block and int(cfg.intermediate_size) % settings.block:
        raise UnsupportedError(f"--rotate full: intermediate size {cfg.intermediate_size} is not a multiple of "
                               f"the Hadamard block {settings.block}")


def apply(model: Any, settings: RotateSettings, *, in_place: bool = False) -> tuple[Any, Plan]:
    """`model` rotated, and the plan: a float copy by default (parity compares against the original); `in_place`
    rotates the model itself, for a caller that has its parity outputs already (a copy is 2x the model in RAM)."""
    import torch

    check(model, settings)
    cfg = model.config
    hidden = int(cfg.hidden_size)
    q, basis = residual_rotation(hidden, settings.basis, settings.seed)
    rotated = model if in_place else copy.deepcopy(model)
    tied = rotated.lm_head.weight is rotated.model.embed_tokens.weight
    if not tied:  # its own parameter, rotated below (a tied one is the embedding, rotated once)
        rotated.lm_head.weight = torch.nn.Parameter(rotated.lm_head.weight.detach().clone())
    heads = settings.mode in ("heads", "full")
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // int(cfg.num_attention_heads))
    h_head = sylvester(head_dim) / np.sqrt(head_dim) if heads else None
    down = online_hadamard(int(cfg.intermediate_size), settings.block) if settings.mode == "full" else None
    h_down = down[2] if down is not None else None
    with torch.no_grad():
        _rotate_rows(rotated.model.embed_tokens.weight, q)
        for layer in rotated.model.layers:
            _rotate_layer(layer, q, h_head, h_down)
        g = _get(rotated.model.norm.weight)
        rotated.model.norm.weight.fill_(1.0)
        head_matrix = None
        if tied:  # keep lm_head == (E·Q)ᵀ; the gain goes to a small MatMul in the rotated basis
            head_matrix = (q.T * g[None, :]) @ q
        else:
            _rotate_rows(rotated.lm_head.weight, q, g)
    info = {"mode": settings.mode, "basis": basis, "basis_requested": settings.basis, "seed": settings.seed,
            "hidden": hidden, "norm_gains": "folded into the next linears",
            "heads": f"Hadamard {head_dim} on v_proj/o_proj (folded)" if heads else None,
            "online": _online_text(down, settings.block),
            "lm_head": "tied: gain as a float MatMul Qᵀ·diag(g)·Q" if tied else "gain folded"}
    log.info("rotation: %s", info)
    return rotated, Plan(None if down is None else (None if down[0] is None else down[0].astype(np.float32),
                                                    down[1].astype(np.float32)),
                         head_matrix.astype(np.float32) if head_matrix is not None else None, info)


def _online_text(down: tuple[np.ndarray | None, np.ndarray, np.ndarray] | None, block: int) -> str | None:
    if down is None:
        return None
    if down[0] is None:
        return f"block Hadamard {block} before down_proj"
    return f"Hadamard {down[0].shape[0]}⊗{down[1].shape[0]} (all channels) before down_proj"


def _rotate_layer(layer: Any, q: np.ndarray, h_head: np.ndarray | None, h_down: np.ndarray | None) -> None:
    """PyTorch Linear weights are [out, in] (y = x·Wᵀ): inputs rotate as W·diag(g)·Q, outputs as Qᵀ·W."""
    attn, mlp = layer.self_attn, layer.mlp
    packed = hasattr(attn, "qkv_proj")  # Phi-3: q, k, v rows in one Linear; gate and up halves in another
    qkv = (attn.qkv_proj,) if packed else (attn.q_proj, attn.k_proj, attn.v_proj)
    gate_up = (mlp.gate_up_proj,) if hasattr(mlp, "gate_up_proj") else (mlp.gate_proj, mlp.up_proj)
    for norm, linears in ((layer.input_layernorm, qkv), (layer.post_attention_layernorm, gate_up)):
        g = _get(norm.weight)
        for lin in linears:
            _set(lin.weight, (_get(lin.weight) * g[None, :]) @ q)
        norm.weight.fill_(1.0)
    o_w = _get(attn.o_proj.weight)
    if h_head is not None:
        v_lin = attn.qkv_proj if packed else attn.v_proj
        v_rows = slice(-(o_w.shape[1] // attn.num_key_value_groups), None) if packed else slice(None)  # v: last
        _set(v_lin.weight[v_rows], _per_block(_get(v_lin.weight[v_rows]).T, h_head).T)
        if v_lin.bias is not None:
            _set(v_lin.bias[v_rows], _per_block(_get(v_lin.bias[v_rows])[None, :], h_head)[0])
        o_w = _per_block(o_w, h_head)
    _set(attn.o_proj.weight, q.T @ o_w)
    d_w = _get(mlp.down_proj.weight)
    if h_down is not None:
        d_w = d_w @ h_down
    _set(mlp.down_proj.weight, q.T @ d_w)
    for lin in (attn.o_proj, mlp.down_proj):
        if lin.bias is not None:
            _set(lin.bias, _get(lin.bias) @ q)


def _per_block(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """w [rows, cols] times blockdiag(h, h, ...) on the right (every h-wide slice of columns times h)."""
    rows, cols = w.shape
    size = h.shape[0]
    out: np.ndarray = (w.reshape(rows, cols // size, size) @ h).reshape(rows, cols)
    return out


def _rotate_rows(t: Any, q: np.ndarray, gain: np.ndarray | None = None) -> None:
    """t ← (t·diag(gain))·Q in float64, a block of rows at a time: a whole [vocab, hidden] matrix in float64 is twice
    its float32 size, and three such temporaries were SmolLM2's export peak."""
    for start in range(0, int(t.shape[0]), ROWS_PER_BLOCK):
        rows = t[start:start + ROWS_PER_BLOCK]
        _set(rows, (_get(rows) * gain[None, :] if gain is not None else _get(rows)) @ q)


def _get(t: Any) -> np.ndarray:
    out: np.ndarray = np.asarray(t.detach().double().cpu().numpy())
    return out


def _set(t: Any, value: np.ndarray) -> None:
    import torch

    t.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(t.dtype))
