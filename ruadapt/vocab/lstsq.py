"""Streaming least squares: ``W = argmin ‖X W − Y‖_F`` from row chunks, in float64, without ever holding X.

LEP (docs/design.md §4) fits d×d maps on V×d matrices. For a 72B model (V ≈ 152k, d = 8192) a float64 X alone is
10 GB, so the normal equations are accumulated chunk by chunk: ``XᵀX`` (a symmetric rank-k update, BLAS
``dsyrk``, half the flops of a GEMM), ``XᵀY`` (``dgemm``) and ``‖Y‖²``. Memory is two d×d float64 matrices plus
one chunk, whatever V is. The relative residual ‖XW − Y‖/‖Y‖ follows from the same sums
(‖XW−Y‖² = tr(WᵀXᵀXW) − 2 tr(WᵀXᵀY) + ‖Y‖²), so no second pass over the data is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg.blas import dsyrk


@dataclass
class Fit:
    """The solution of one fit and the numbers that say how much to trust it."""

    w: torch.Tensor  # d×d float64
    rows: int
    relative_residual: float
    condition_number: float  # of XᵀX (= cond(X)²); inf when singular
    solver: str  # "cholesky" or "eigh-pinv" (rank-deficient systems)
    rank: int

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "relative_residual": self.relative_residual,
            "condition_number_xtx": self.condition_number,
            "solver": self.solver,
            "rank": self.rank,
        }


class NormalEquations:
    """Accumulates ``XᵀX``, ``XᵀY`` and ``‖Y‖²`` in float64 over row chunks; :meth:`solve` gives ``W``."""

    def __init__(self, d_in: int, d_out: int | None = None):
        self.d_in = d_in
        self.d_out = d_in if d_out is None else d_out
        # Fortran order so dsyrk updates it in place (upper triangle only)
        self._xtx = np.zeros((d_in, d_in), dtype=np.float64, order="F")
        self.xty = torch.zeros(d_in, self.d_out, dtype=torch.float64)
        self.yty = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (k×d_in) and their targets ``y`` (k×d_out), any float dtype."""
        if x.shape[0] != y.shape[0] or x.shape[1] != self.d_in or y.shape[1] != self.d_out:
            raise ValueError(
                f"chunk shapes {tuple(x.shape)} / {tuple(y.shape)} do not fit a {self.d_in}×{self.d_out} fit"
            )
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64).contiguous()
        y = y.to(torch.float64)
        # x is C-ordered k×d, so x.numpy().T is an F-ordered d×k view: dsyrk(trans=0) computes (xᵀ)(xᵀ)ᵀ = xᵀx
        self._xtx = dsyrk(1.0, x.numpy().T, beta=1.0, c=self._xtx, trans=0, lower=0, overwrite_c=1)
        self.xty.addmm_(x.T, y)
        self.yty += float((y * y).sum())
        self.rows += x.shape[0]

    @property
    def xtx(self) -> torch.Tensor:
        """The full symmetric ``XᵀX`` (dsyrk fills the upper triangle only)."""
        upper = np.triu(self._xtx)
        full = upper + np.triu(self._xtx, 1).T
        return torch.from_numpy(np.ascontiguousarray(full))

    def solve(self, rcond: float = 1e-12) -> Fit:
        """Solve ``XᵀX W = XᵀY``: Cholesky when XᵀX is well conditioned, else the eigen-decomposition
        pseudo-inverse (minimum-norm W) with eigenvalues below ``rcond·λ_max`` dropped."""
        if self.rows == 0:
            raise ValueError("no rows were added to the fit")
        a = self.xtx
        b = self.xty
        eig = torch.linalg.eigvalsh(a)
        lam_max = float(eig[-1])
        lam_min = float(eig[0])
        cond = lam_max / lam_min if lam_min > 0 else math.inf
        rank = int((eig > rcond * max(lam_max, 0.0)).sum())
        w = None
        solver = "cholesky"
        if rank == self.d_in and cond < 1.0 / rcond:
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                w = torch.cholesky_solve(b, chol)
        if w is None:
            solver = "eigh-pinv"
            lam, vec = torch.linalg.eigh(a)
            keep = lam > rcond * max(float(lam[-1]), 0.0)
            inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
            w = vec @ (inv[:, None] * (vec.T @ b))
            rank = int(keep.sum())
        residual_sq = float((w * (a @ w)).sum() - 2.0 * (w * b).sum()) + self.yty
        rel = math.sqrt(max(residual_sq, 0.0) / self.yty) if self.yty > 0 else 0.0
        return Fit(w=w, rows=self.rows, relative_residual=rel, condition_number=cond, solver=solver, rank=rank)
