"""Vector quantisers: replace each latent vector by its nearest code in a codebook.

Paper: van den Oord, Vinyals and Kavukcuoglu, "Neural Discrete Representation Learning"
(NeurIPS 2017), section 3 (nearest-neighbour lookup, straight-through gradient, codebook and
commitment losses) and appendix A.1 (codebook updates by exponential moving averages).

What is in it:

- the pieces every quantizer of the book shares (chapter 6 builds on them in ``vqlib.quantizers.factorized``,
  ``vqlib.quantizers.rotation``, ``vqlib.quantizers.residual``, ``vqlib.quantizers.fsq`` and ``vqlib.quantizers.lfq``): ``QuantizerOutput``,
  input checks, channels-first latents to rows of vectors and back, exact nearest-code search,
  the straight-through estimator (alone, and fused with the VQ losses), per-vector projections
  (``project_float32`` for the one that decides the code), and decoding indices;
- ``VectorQuantizer``: the codebook is a parameter learned by gradient descent on the codebook
  loss ``mse(z_q, sg[z_e])``, next to the commitment loss ``beta * mse(z_e, sg[z_q])``;
- ``EMAVectorQuantizer``: the codebook follows moving averages of the vectors assigned to each
  code (no codebook gradient, only the commitment loss), starts from samples of the first batch
  and re-seeds dead codes from current encoder outputs (both as in Dhariwal et al. 2020, "Jukebox"),
  so that the codebook does not collapse. Under torch.distributed the statistics are summed over
  processes and the samples come from rank 0 (``vqlib.core.distributed``): every process keeps the
  same codebook.

``EMAVectorQuantizer(kmeans_iters=n)`` starts instead from ``n`` steps of Lloyd's k-means on the
first batch, as SoundStream does (Zeghidour et al. 2021; ``kmeans``, ``lloyd_step``; chapter 6
measures the difference).

Left out: k-means++ seeding, cosine-similarity and low-dimensional codebooks (``vqlib.quantizers.factorized``), stochastic (Gumbel) assignment.

Dimension key: B batch, D code dim, T frames, H W latent height and width,
N = B·T·H·W latent vectors, K codebook size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vqlib.core.distributed import all_reduce_sum, broadcast_from_rank0


class QuantizerOutput(NamedTuple):
    """What every quantizer of the book returns."""

    z_q: torch.Tensor  # (B, D, [T,] H, W) the nearest codes; gradient passes straight through to z_e
    loss: torch.Tensor  # () the quantizer's own loss (codebook and/or commitment terms)
    indices: torch.Tensor  # (B, [T,] H, W) long: which code each position uses


# ----------------------------------------------------------------------------- shared pieces

def check_sizes(codebook_size: int, code_dim: int, beta: float) -> None:
    """Raise a ValueError unless K >= 1, D >= 1 and beta >= 0."""
    if int(codebook_size) != codebook_size or codebook_size < 1:
        raise ValueError(f"codebook_size must be an integer >= 1, got {codebook_size!r}")
    if int(code_dim) != code_dim or code_dim < 1:
        raise ValueError(f"code_dim must be an integer >= 1, got {code_dim!r}")
    if not beta >= 0:
        raise ValueError(f"beta (the commitment weight) must be >= 0, got {beta!r}")


def check_latents(z_e: torch.Tensor, code_dim: int) -> None:
    """The one place that says what a quantizer accepts: real floats, (B, D, H, W) or (B, D, T, H, W).

    NaN and inf are caught later, for free, by ``check_finite_loss``.
    """
    if not torch.is_tensor(z_e):
        raise TypeError(f"z_e must be a torch.Tensor, got {type(z_e).__name__}")
    if z_e.is_complex() or not z_e.is_floating_point():
        raise TypeError(f"z_e must be a real floating-point tensor, got dtype {z_e.dtype}; "
                        "convert it with z_e.float()")
    if z_e.dim() not in (4, 5):
        raise ValueError(f"z_e must have shape (B, D, H, W) or (B, D, T, H, W), channels first, "
                         f"got {z_e.dim()} dims: {tuple(z_e.shape)}")
    if z_e.shape[1] != code_dim:
        raise ValueError(f"z_e must have code_dim={code_dim} channels in dim 1 (channels first), "
                         f"got {z_e.shape[1]} channels: shape {tuple(z_e.shape)}")
    if z_e.numel() == 0:
        raise ValueError(f"z_e is empty (shape {tuple(z_e.shape)}): it needs at least one vector")


def check_finite_loss(loss: torch.Tensor, z_e: torch.Tensor) -> None:
    """Raise a ValueError if ``loss`` is NaN/inf, naming the cause.

    Any NaN or inf in z_e (or the codebook) reaches the squared-error loss, so this scalar check
    replaces a full pass over z_e. It costs one host-device sync on a GPU.
    """
    if not torch.isfinite(loss):
        bad = int((~torch.isfinite(z_e)).sum())
        if bad:
            raise ValueError(f"z_e contains {bad} NaN or inf values (of {z_e.numel()}): the encoder "
                             "diverged or its input was not finite; try a lower learning rate")
        raise ValueError("the quantizer loss is not finite although z_e is: the codebook contains "
                         "NaN/inf, or |z_e| is so large that its square overflows")


def to_vectors(z: torch.Tensor) -> torch.Tensor:
    """Channels-first latents (B, D, ...) -> rows (N, D), N = B·prod(...). One copy."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])  # (N, D)


def from_vectors(vectors: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows (N, D) -> channels-first latents of ``shape`` (B, D, ...): the inverse of ``to_vectors``."""
    batch, code_dim, *rest = shape
    return vectors.view(batch, *rest, code_dim).movedim(-1, 1).contiguous()  # (B, D, ...)


def at_least_float32(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype to compute distances and losses in: float32, or float64 if an input is float64."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the Euclidean-nearest code of each row. vectors (N, D), codebook (K, D) -> (N,) long.

    argmin_k ||z - e_k||² = argmin_k (||e_k||² - 2 z·e_k): ||z||² is the same for every k, so one
    matrix product (addmm) does the work. Distances and argmin stay in float32 even under
    autocast: in bfloat16, codes closer than the rounding error would be picked by rounding.
    """
    dtype = at_least_float32(vectors.dtype, codebook.dtype)
    with torch.no_grad(), torch.autocast(vectors.device.type, enabled=False):
        codebook = codebook.to(dtype)
        distances = torch.addmm(codebook.pow(2).sum(1), vectors.to(dtype), codebook.t(), alpha=-2)  # (N, K)
        return distances.argmin(dim=1)  # (N,)


def lloyd_step(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """One step of Lloyd's algorithm (Lloyd 1982). vectors (N, D), centroids (k, D) -> new centroids (k, D).

    Assigns every row to its nearest centroid and moves each centroid to the mean of its rows; a
    centroid that wins no row stays where it is. Neither half can raise the mean squared distance
    of the rows to their nearest centroid, so repeated steps never make it worse.
    """
    if vectors.dim() != 2 or centroids.dim() != 2 or vectors.shape[1] != centroids.shape[1] \
            or len(vectors) == 0 or len(centroids) == 0:
        raise ValueError(f"lloyd_step needs rows (N, D) and centroids (k, D) with N, k ≥ 1 and the same D; "
                         f"got {tuple(vectors.shape)} and {tuple(centroids.shape)}")
    indices = nearest_code(vectors, centroids)  # (N,)
    counts = torch.bincount(indices, minlength=len(centroids)).to(vectors.dtype)  # (k,)
    sums = torch.zeros_like(centroids).index_add_(0, indices, vectors)  # (k, D)
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)


def kmeans(vectors: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """k centroids of the rows of ``vectors`` by Lloyd's algorithm. (N, D) -> (k, D).

    Starts from k random rows (the global torch generator: seed it to repeat a start) and takes
    ``iters`` steps of ``lloyd_step``.
    """
    if iters < 0 or k < 1 or vectors.dim() != 2 or len(vectors) == 0:
        raise ValueError(f"kmeans needs rows (N, D) with N ≥ 1, k ≥ 1 and iters ≥ 0; got {tuple(vectors.shape)}, "
                         f"k={k}, iters={iters}")
    vectors = vectors.detach()
    centroids = vectors[torch.randint(len(vectors), (k,), device=vectors.device)]  # (k, D)
    for _ in range(iters):
        centroids = lloyd_step(vectors, centroids)
    return centroids


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Forward: z_q exactly. Backward: the gradient w.r.t. the result is passed to z_e unchanged.

    The straight-through estimator (Bengio et al. 2013), written z_e + sg[z_q - z_e] in the paper;
    z_q + (z_e - sg[z_e]) is the same function and gradient without the rounding of the sum.
    """
    return z_q + (z_e - z_e.detach())


class StraightThroughWithLoss(torch.autograd.Function):
    """``straight_through(z_e, z_q)`` and ``a·mse(z_q, sg[z_e]) + beta·mse(z_e, sg[z_q])`` in one step.

    Autograd on the textbook expressions gives exactly these gradients, with M = z_e.numel():

        dL/dz_e = g + beta · 2 (z_e - z_q) / M · dL/dloss      (straight through, plus commitment)
        dL/dz_q = a · 2 (z_q - z_e) / M · dL/dloss              (codebook loss; a = 0 for EMA)

    Written by hand they cost three passes over z_e's memory instead of about nine, which is most
    of what a quantizer costs beyond the distance product (benchmarks/quantizer_speed.py).
    """

    @staticmethod
    def forward(ctx, z_e: torch.Tensor, z_q: torch.Tensor, codebook_weight: float, beta: float):
        dtype = at_least_float32(z_e.dtype, z_q.dtype)
        diff = z_e.to(dtype) - z_q.to(dtype)  # (B, D, ...) z_e - z_q, in float32 even for bfloat16 inputs
        mse = torch.dot(diff.reshape(-1), diff.reshape(-1)) / diff.numel()
        ctx.save_for_backward(diff)
        ctx.codebook_weight, ctx.beta, ctx.dtypes = codebook_weight, beta, (z_e.dtype, z_q.dtype)
        return z_q.view_as(z_q), (codebook_weight + beta) * mse

    @staticmethod
    def backward(ctx, grad_z_q: torch.Tensor, grad_loss: torch.Tensor):
        (diff,) = ctx.saved_tensors
        scale = 2 * grad_loss / diff.numel()  # () d mse / d diff = 2 diff / M
        grad_e = torch.addcmul(grad_z_q.to(diff.dtype), diff, ctx.beta * scale).to(ctx.dtypes[0])
        grad_q = (diff * (-ctx.codebook_weight * scale)).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_e, grad_q, None, None


def straight_through_with_loss(z_e: torch.Tensor, z_q: torch.Tensor, codebook_weight: float,
                               beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q with the straight-through gradient, codebook_weight·mse(z_q, sg[z_e]) + beta·mse(z_e, sg[z_q]))."""
    return StraightThroughWithLoss.apply(z_e, z_q, codebook_weight, beta)


def project(layer: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Apply a per-vector map (e.g. an ``nn.Linear`` from D to d channels) to channels-first latents.

    (B, D, ...) -> (B, d, ...). Chapter 6's quantizers use it to move between the encoder's space
    and a smaller code space, for images and videos alike.
    """
    return layer(z.movedim(1, -1)).movedim(-1, 1).contiguous()  # (B, d, ...)


def project_float32(layer: nn.Linear, vectors: torch.Tensor) -> torch.Tensor:
    """``layer(vectors)`` in at least float32, also under autocast: rows (N, D) -> (N, d).

    For the projection whose output decides the code (the search of ``factorized``, the rounding
    of ``fsq``, the signs of ``lfq``): under bfloat16 autocast ``nn.Linear`` would round its inputs
    and weights to 8 bits of mantissa, and a value near a boundary would get another code than in float32.
    """
    dtype = at_least_float32(vectors.dtype, layer.weight.dtype)
    with torch.autocast(vectors.device.type, enabled=False):
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return F.linear(vectors.to(dtype), layer.weight.to(dtype), bias)  # (N, d)


def check_indices(indices: torch.Tensor, codebook_size: int) -> None:
    """Raise a clear error unless ``indices`` is a non-empty long tensor with values in [0, codebook_size)."""
    if not torch.is_tensor(indices):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype != torch.long:
        raise TypeError(f"indices must have dtype torch.long, got {indices.dtype}; "
                        "convert them with indices.long()")
    if indices.dim() < 1 or indices.numel() == 0:
        raise ValueError(f"indices must be a non-empty batch (B, ...), got shape {tuple(indices.shape)}")
    if torch.compiler.is_exporting():  # torch.export traces without values: nothing to check
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size}) for codebook_size={codebook_size}, "
                         f"got values from {low} to {high}")


def decode(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Code vectors of ``indices`` (B, ...) long -> (B, D, ...), channels first, like z_q."""
    check_indices(indices, len(codebook))
    return F.embedding(indices, codebook).movedim(-1, 1).contiguous()  # (B, D, ...)


@torch.no_grad()
def inference_indices(quantizer: nn.Module, z_e: torch.Tensor) -> torch.Tensor:
    """The indices ``quantizer`` gives ``z_e``, leaving its state alone (an EMA quantizer in
    training mode would update its codebook): the ``encode`` of every tokenizer of the book."""
    training = quantizer.training
    quantizer.eval()
    try:
        return quantizer(z_e).indices
    finally:
        quantizer.train(training)


def codes_per_position(quantizer: nn.Module) -> int:
    """How many different codes one position can take: K, or K^S for S residual stages."""
    return quantizer.codebook_size ** getattr(quantizer, "num_stages", 1)


def joint_indices(quantizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
    """One integer per position in [0, codes_per_position): (B, h, w), or (B, S, h, w) -> sum_s k_s·K^s."""
    stages = getattr(quantizer, "num_stages", None)
    if stages is None:
        return indices
    powers = quantizer.codebook_size ** torch.arange(stages, device=indices.device)  # (S,) 1, K, K², ...
    return (indices * powers.view(1, stages, *[1] * (indices.dim() - 2))).sum(dim=1)  # (B, h, w)


# ----------------------------------------------------------------------------- quantizers

class VectorQuantizer(nn.Module):
    """VQ with a codebook learned by gradient (van den Oord et al. 2017, eq. 3).

    loss = mse(z_q, sg[z_e]) + beta * mse(z_e, sg[z_q]): the codebook term moves codes towards
    the encoder outputs, the commitment term (weighted by beta) keeps the encoder near its codes.
    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss (), indices (B, [T,] H, W)).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        check_sizes(codebook_size, code_dim, beta)
        self.codebook_size, self.code_dim, self.beta = int(codebook_size), int(code_dim), float(beta)
        k = self.codebook_size  # uniform in ±1/K: not the paper's, but that of widely copied PyTorch ports
        self.codebook = nn.Parameter(torch.empty(k, self.code_dim).uniform_(-1 / k, 1 / k))  # (K, D)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        indices = nearest_code(to_vectors(z_e.detach()), self.codebook)  # (N,)
        z_q = from_vectors(F.embedding(indices, self.codebook).to(z_e.dtype), z_e.shape)  # (B, D, ...)
        z_q, loss = straight_through_with_loss(z_e, z_q, 1.0, self.beta)  # mse(z_q, sg[z_e]) + beta·mse(z_e, sg[z_q])
        check_finite_loss(loss, z_e)
        return QuantizerOutput(z_q, loss, indices.view(z_e.shape[:1] + z_e.shape[2:]))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> code vectors (B, D, ...)."""
        return decode(self.codebook, indices)

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta}"


class EMAVectorQuantizer(nn.Module):
    """VQ whose codebook is a moving average of the encoder outputs assigned to each code.

    Appendix A.1 of van den Oord et al. (2017), with Laplace smoothing of the counts as in Sonnet.
    Per training step, with n_k vectors assigned to code k and their sum s_k:

        N_k <- decay·N_k + (1 - decay)·n_k        m_k <- decay·m_k + (1 - decay)·s_k
        e_k  = m_k / Ñ_k,   Ñ_k = (N_k + eps) / (Σ_j N_j + K·eps) · Σ_j N_j

    Only the commitment loss beta * mse(z_e, sg[z_q]) remains. Two cures for codebook collapse,
    on by default: the codebook starts from vectors of the first training batch (``data_init``;
    ``kmeans_iters > 0`` refines them by that many k-means steps on the batch),
    and a code whose moving count N_k falls below ``restart_threshold`` vectors per batch is dead
    and re-seeded from a random current encoder output (``restart_threshold=0`` turns this off).
    All state lives in buffers, changes only in training mode, and survives checkpoints.
    z_e (B, D, H, W) or (B, D, T, H, W) -> QuantizerOutput(z_q like z_e, loss (), indices (B, [T,] H, W)).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, data_init: bool = True, restart_threshold: float = 1.0,
                 kmeans_iters: int = 0) -> None:
        super().__init__()
        check_sizes(codebook_size, code_dim, beta)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if not eps > 0 or not restart_threshold >= 0:
            raise ValueError(f"eps must be > 0 and restart_threshold >= 0, got eps={eps!r}, "
                             f"restart_threshold={restart_threshold!r}")
        if kmeans_iters < 0 or (kmeans_iters and not data_init):
            raise ValueError(f"kmeans_iters (Lloyd steps of the data initialisation) must be >= 0 and needs "
                             f"data_init=True; got kmeans_iters={kmeans_iters!r}, data_init={data_init!r}")
        self.codebook_size, self.code_dim, self.beta = int(codebook_size), int(code_dim), float(beta)
        self.decay, self.eps = float(decay), float(eps)
        self.data_init, self.restart_threshold = bool(data_init), float(restart_threshold)
        self.kmeans_iters = int(kmeans_iters)
        self._kmeans_pending = self.kmeans_iters > 0  # until the first training step has looked
        codebook = torch.randn(self.codebook_size, self.code_dim)  # (K, D) replaced by data if data_init
        self.register_buffer("codebook", codebook)  # (K, D) e_k
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))  # (K,) N_k: one vector each
        self.register_buffer("embed_sum", codebook.clone())  # (K, D) m_k = N_k · e_k
        self.register_buffer("initialized", torch.tensor(not self.data_init))  # () bool

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        check_latents(z_e, self.code_dim)
        vectors = to_vectors(z_e.detach())  # (N, D), for the search and the statistics only
        indices = nearest_code(vectors, self.codebook)  # (N,)
        z_q = from_vectors(F.embedding(indices, self.codebook).to(z_e.dtype), z_e.shape)  # (B, D, ...)
        z_q, loss = straight_through_with_loss(z_e, z_q, 0.0, self.beta)  # beta·mse(z_e, sg[z_q]) only
        check_finite_loss(loss, z_e)
        if self.training:
            self.update_codebook(vectors, indices)
        return QuantizerOutput(z_q, loss, indices.view(z_e.shape[:1] + z_e.shape[2:]))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, ...) long -> code vectors (B, D, ...)."""
        return decode(self.codebook, indices)

    @torch.no_grad()
    def batch_statistics(self, vectors: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """n_k and s_k of this batch: (K,) counts and (K, D) sums of the vectors assigned to each code.

        The only place the batch enters the moving averages. Under torch.distributed both are
        summed over all processes, so every process computes the same codebook.
        """
        stats = self.codebook.new_zeros(self.codebook_size, 1 + self.code_dim)  # (K, 1 + D)
        stats[:, 0] = torch.bincount(indices, minlength=self.codebook_size)
        stats[:, 1:].index_add_(0, indices, vectors.to(stats.dtype))
        all_reduce_sum(stats)
        return stats[:, 0], stats[:, 1:]  # (K,), (K, D)

    @torch.no_grad()
    def update_codebook(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step (the formula in the class docstring), then initialisation and restarts."""
        counts, sums = self.batch_statistics(vectors, indices)  # (K,), (K, D)
        self.cluster_size.lerp_(counts, 1 - self.decay)  # N_k
        self.embed_sum.lerp_(sums, 1 - self.decay)  # m_k
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total  # Ñ_k > 0
        self.codebook.copy_(self.embed_sum / smoothed[:, None])  # e_k = m_k / Ñ_k
        self.restart_dead_codes(vectors)

    @torch.no_grad()
    def restart_dead_codes(self, vectors: torch.Tensor) -> None:
        """Re-seed dead codes, or all codes before data initialisation, from random rows of ``vectors``.

        A re-seeded code counts as one vector (N_k = 1, m_k = the sample). Branch-free (no
        host-device sync); samples come from rank 0 under torch.distributed.
        """
        if self.restart_threshold == 0 and not self.data_init:
            return
        dead = (self.cluster_size < self.restart_threshold) | ~self.initialized  # (K,) bool
        pick = torch.randint(len(vectors), (self.codebook_size,), device=vectors.device)  # (K,)
        samples = vectors[pick]  # (K, D)
        if self._kmeans_pending:  # the first training step: one host sync in the module's life
            self._kmeans_pending = False
            if not bool(self.initialized):
                samples = kmeans(vectors, self.codebook_size, self.kmeans_iters)  # (K, D)
        samples = broadcast_from_rank0(samples.to(self.codebook.dtype))  # (K, D)
        self.codebook.copy_(torch.where(dead[:, None], samples, self.codebook))
        self.embed_sum.copy_(torch.where(dead[:, None], samples, self.embed_sum))
        self.cluster_size.masked_fill_(dead, 1.0)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta}, "
                f"decay={self.decay}, data_init={self.data_init}, restart_threshold={self.restart_threshold}, "
                f"kmeans_iters={self.kmeans_iters}")
