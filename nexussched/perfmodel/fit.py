"""The perf model's fit: weighted non-negative least squares on relative error, solved on the
Gram matrix of the rows (so a window can be kept as a 6x6 matrix and refitted cheaply), with the
attention term made to earn its place. PerfModel (model.py) calls these."""

from __future__ import annotations

import numpy as np

from .features import FEATURE_NAMES, N_FEATURES

ATTN = FEATURE_NAMES.index("prefill_attn")
ATTN_RIDGE = 1.0  # on the column-normalised attention coefficient (see fit_nnls)


def fit_nnls(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: rows scaled by weight / y.

    Columns are normalised first so the solver is well conditioned across terms whose scales
    differ by ten orders of magnitude (attention work vs the constant).

    The attention term must earn its place. When every prefill seen so far had nearly the same
    shape (say, only 50-token prompts), its tokens and its attention work are nearly collinear,
    and the solver may put the prefill cost on attention (which also mimics the convex knee of the
    GEMMs), which then extrapolates quadratically to a long prompt: a 6,000-token prompt predicted
    at 22-44 s instead of 0.5 s. So a second fit with a ridge on the attention coefficient is
    taken whenever its squared error exceeds the plain fit's by less than four times the per-row
    noise variance (a two-sigma test for one parameter); once prefill shapes vary, the plain fit
    stands.
    """
    scale_rows = w / np.maximum(y, 1e-9)
    A = X * scale_rows[:, None]
    b = y * scale_rows
    # The same least-squares problem in k rows: with M = [A b] and G = M'M = R'R (Cholesky, R
    # upper triangular), ||Ax - b||^2 = ||R[:k, :k] x - R[:k, k]||^2 + const, so NNLS on the small
    # triangle has the same solution at a fraction of the cost (2,048 rows: ~0.3 ms instead of
    # ~17 ms; a router refits every engine's model while it routes).
    M = np.column_stack((A, b))
    sol = fit_gram(M.T @ M, len(b))
    if sol is not None:
        return sol
    col = np.linalg.norm(A, axis=0)
    col[col == 0] = 1.0
    return _fit_tall(A / col, b) / col  # degenerate window: solve the tall problem as it is


def fit_gram(G: np.ndarray, rows: int) -> np.ndarray | None:
    """fit_nnls given only G = M'M of its weighted rows M = [A b] (and how many rows there
    were); None when G is too degenerate to factor (then fit the rows themselves)."""
    k = G.shape[0] - 1
    col = np.sqrt(np.maximum(np.diag(G)[:k], 0.0))
    col[col == 0] = 1.0
    s = np.append(col, 1.0)
    G = G / np.outer(s, s)  # the columns of A normalised (see fit_nnls)
    try:
        sol = _nnls_gram(G, k)
    except np.linalg.LinAlgError:
        return None
    res2 = _sse(G, sol)
    if sol[ATTN] > 0.0:
        rr = np.zeros(k + 1)
        rr[ATTN] = ATTN_RIDGE  # the ridge row [.., ATTN_RIDGE, .. | 0] appended to [A b]
        try:
            alt = _nnls_gram(G + np.outer(rr, rr), k)
        except np.linalg.LinAlgError:
            alt = None
        if alt is not None:
            worse = _sse(G, alt) - res2
            noise = res2 / max(rows - k, 1)  # per-row variance of the plain fit
            if worse <= 4.0 * noise:  # the attention term does not earn its place (~2 sigma)
                sol = alt
    return sol / col


def gram_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows [x / y, 1] of the fit (relative error) before their recency weight."""
    inv = 1.0 / np.maximum(y, 1e-9)
    return np.column_stack((X * inv[:, None], np.ones(len(y))))


def load_solver() -> None:
    """Import the NNLS solver now. A router calls this before it serves: the first refit would
    otherwise import scipy on the event loop, stalling every request for ~0.4 s (seconds on a
    loaded machine)."""
    import scipy.optimize  # noqa: F401


def _nnls_gram(G: np.ndarray, k: int) -> np.ndarray:
    """NNLS of min ||A x - b|| given only G = [A b]'[A b] (its Cholesky triangle)."""
    from scipy.optimize import nnls  # imported here: scipy costs ~0.4 s at CLI start-up

    r = np.linalg.cholesky(G + 1e-12 * np.eye(k + 1)).T
    sol, _ = nnls(r[:k, :k], r[:k, k], maxiter=50 * N_FEATURES)
    return sol


def _sse(G: np.ndarray, x: np.ndarray) -> float:
    """||A x - b||^2 from G = [A b]'[A b]."""
    v = np.append(x, -1.0)
    return float(v @ G @ v)


def _fit_tall(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The same fit on the tall system (for a window whose Gram matrix is degenerate)."""
    from scipy.optimize import nnls

    sol, res = nnls(A, b, maxiter=50 * N_FEATURES)
    if sol[ATTN] > 0.0:
        ridge = np.zeros((1, A.shape[1]))
        ridge[0, ATTN] = ATTN_RIDGE
        alt, _ = nnls(np.vstack((A, ridge)), np.append(b, 0.0), maxiter=50 * N_FEATURES)
        worse = float(np.sum((A @ alt - b) ** 2)) - res * res
        noise = res * res / max(len(b) - A.shape[1], 1)  # per-row variance of the plain fit
        if worse <= 4.0 * noise:  # the attention term does not earn its place (~2 sigma)
            sol = alt
    return sol
