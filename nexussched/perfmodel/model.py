"""Online per-step latency model of one engine.

A non-negative linear model over structural batch terms (features.py), fitted by NNLS on a sliding
window of recent steps with recency weights, refitted cheaply every few observations. An optional
LightGBM model corrects the residual (in log space) once enough data exists. The linear part alone
serves the schedulers' hot paths (a dot product); `predict(..., exact=True)` adds the residual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import FEATURE_NAMES, N_FEATURES, batch_features, record_features
from .fit import fit_gram, fit_nnls, gram_rows
from .telemetry import StepRecord

# Used only until the first fit: a deliberately generic, pessimistic 7-8B-class engine
# (10 ms floor, 100 us per prefill token) so cold schedulers under-promise. Never a simulator value.
PRIOR_COEF = (1.0e-4, 1.0e-8, 2.0e-4, 1.0e-7, 1.0e-2)


@dataclass
class PerfModelConfig:
    window: int = 1024  # steps kept for fitting
    refit_every: int = 32  # observations between refits
    min_samples: int = 24  # observations before the first fit replaces the prior
    half_life: float = 256.0  # recency weighting of the window, in steps
    drift_ratio: float = (
        1.25  # |mean log error| beyond log(this) over recent steps -> drop old data
    )
    drift_window: int = 48
    residual: bool = False  # LightGBM residual correction
    residual_min_samples: int = 800


class PerfModel:
    """Predicts one engine's step time from the batch it runs; learns from its step telemetry."""

    def __init__(self, config: PerfModelConfig | None = None, name: str = "") -> None:
        self.config = config or PerfModelConfig()
        self.name = name
        w = self.config.window
        self._X = np.zeros((w, N_FEATURES))
        self._y = np.zeros(w)
        self._n = 0  # total observations ever (those still in _new included)
        self._new: list[tuple[float, ...]] = []  # observations not yet in _X/_y and _G: x + (y,)
        # The fit's weighted Gram matrix of the window, kept up to date at each refit from the
        # rows that entered and left it since (see _fold): a refit costs O(refit_every), not
        # O(window). Rebuilt from the window every `window` rows, so rounding cannot build up.
        self._G = np.zeros((N_FEATURES + 1, N_FEATURES + 1))
        self._folded_since_build = 0
        self._decay = 0.5 ** (2.0 / self.config.half_life)  # a row's squared weight, per step
        self._since_fit = 0
        self._fitted_on = 0
        self.coef = np.array(PRIOR_COEF, dtype=float)
        self._c = tuple(float(v) for v in self.coef)
        self._booster = None  # lightgbm.Booster when residual is on and trained
        self._recent_err: list[float] = []

    # ---- learning -------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self._fitted_on > 0

    @property
    def samples(self) -> int:
        return min(self._n, self.config.window)

    def observe(self, rec: StepRecord) -> None:
        self.observe_features(record_features(rec), rec.duration)

    def observe_features(self, x: tuple[float, ...], duration: float) -> None:
        if duration <= 0 or not math.isfinite(duration):
            return  # a clock glitch must not poison the fit
        if self._fitted_on > 0:  # self.fitted
            self._track_drift(x, duration)
        self._new.append((*x, duration))
        self._n += 1
        self._since_fit += 1
        if (not self.fitted and self._n >= self.config.min_samples) or (
            self._since_fit >= self.config.refit_every
        ):
            self.refit()

    def _track_drift(self, x: tuple[float, ...], duration: float) -> None:
        # A sustained bias of the recent errors means the engine changed speed: forget the old
        # window instead of waiting for it to age out.
        c = self._c
        p = c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[3] + c[4]  # predict_features
        err = math.log(duration / (p if p > 1e-9 else 1e-9))
        self._recent_err.append(err)
        dw = self.config.drift_window
        if len(self._recent_err) >= dw:
            mean = sum(self._recent_err) / len(self._recent_err)
            self._recent_err.clear()
            if abs(mean) > math.log(self.config.drift_ratio):
                self._keep_only_recent(dw)

    def _fold(self) -> None:
        """Move the pending observations into the window (_X, _y) and its Gram matrix _G.

        _G = sum over the window's rows of d**age * r r', r = [x / y, 1] (a row of fit_nnls's
        [A b] before its column scaling, squared weight d**age = 0.5**(2 age / half_life)): the
        pending rows come in at their ages, and the rows they overwrite in the ring leave at
        theirs (window + the same offsets)."""
        new = self._new
        if not new:
            return
        self._new = []
        w = self.config.window
        n1 = self._n
        k = len(new)
        if k > w:  # (only when refit_every > window) the older ones never enter the window
            new, k = new[-w:], w
        n0 = n1 - k  # observations before these
        R = np.array(new, dtype=float)
        Xn, yn = R[:, :N_FEATURES], R[:, N_FEATURES]
        if self._folded_since_build + k >= w or n0 == 0:
            self._write(Xn, yn, n0)
            self._rebuild()
            return
        age = np.arange(k - 1, -1, -1, dtype=float)
        dk = self._decay**k
        rows = gram_rows(Xn, yn)
        G = self._G * dk + (rows * self._decay ** age[:, None]).T @ rows
        gone = n0 - w + np.arange(k)  # observations whose ring slots these take
        out = gone >= 0
        if out.any():
            slots = gone[out] % w
            old = gram_rows(self._X[slots], self._y[slots])
            G -= (old * self._decay ** (w + age[out])[:, None]).T @ old
        self._G = G
        self._folded_since_build += k
        self._write(Xn, yn, n0)

    def _write(self, Xn: np.ndarray, yn: np.ndarray, n0: int) -> None:
        slots = (n0 + np.arange(len(yn))) % self.config.window
        self._X[slots] = Xn
        self._y[slots] = yn

    def _rebuild(self) -> None:
        X, y, wt = self._window()
        rows = gram_rows(X, y)
        self._G = (rows * (wt * wt)[:, None]).T @ rows
        self._folded_since_build = 0

    def _keep_only_recent(self, k: int) -> None:
        self._fold()
        n = self.samples
        k = min(k, n)
        idx = [(self._n - 1 - j) % self.config.window for j in range(k)][::-1]
        X, y = self._X[idx].copy(), self._y[idx].copy()
        self._X[:] = 0
        self._y[:] = 0
        self._X[:k] = X
        self._y[:k] = y
        self._n = k
        self._booster = None
        self._rebuild()
        self.refit()

    def _window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.samples
        w = self.config.window
        # age of each row in steps (0 = newest)
        pos = (self._n - 1) % w
        idx = np.arange(n)
        age = (pos - idx) % w if self._n > w else (self._n - 1 - idx)
        weights = np.power(0.5, age / self.config.half_life)
        return self._X[:n], self._y[:n], weights

    def refit(self) -> None:
        self._fold()
        n = self.samples
        if n < 2:
            return
        coef = fit_gram(self._G, n)
        if coef is None:  # a degenerate window: the fit on its rows
            X, y, w = self._window()
            coef = fit_nnls(X, y, w)
        self.coef = coef
        self._c = tuple(float(v) for v in self.coef)
        self._fitted_on = n
        self._since_fit = 0
        if self.config.residual and n >= self.config.residual_min_samples:
            X, y, _ = self._window()
            self._fit_residual(X, y)

    def fit_records(self, records: list[StepRecord]) -> None:
        """Batch fit (offline): all records, equal weights."""
        X = np.array([record_features(r) for r in records], dtype=float).reshape(-1, N_FEATURES)
        y = np.array([r.duration for r in records], dtype=float)
        self.fit_arrays(X, y)

    def fit_arrays(self, X: np.ndarray, y: np.ndarray) -> None:
        keep = y > 0
        X, y = X[keep], y[keep]
        self.coef = fit_nnls(X, y, np.ones(len(y)))
        self._c = tuple(float(v) for v in self.coef)
        self._fitted_on = len(y)
        # Seed the online window with the newest rows so later observations refine this fit.
        w = self.config.window
        tail = slice(max(0, len(y) - w), len(y))
        k = len(y[tail])
        self._X[:k] = X[tail]
        self._y[:k] = y[tail]
        self._n = k
        self._new = []
        self._rebuild()
        self._since_fit = 0
        if self.config.residual and len(y) >= self.config.residual_min_samples:
            self._fit_residual(X, y)

    def _fit_residual(self, X: np.ndarray, y: np.ndarray) -> None:
        import lightgbm as lgb  # heavy import, only when the residual is wanted

        lin = np.maximum(X @ self.coef, 1e-9)
        target = np.log(y / lin)
        params = {
            "objective": "regression",
            "num_leaves": 15,
            "learning_rate": 0.1,
            "min_data_in_leaf": 20,
            "verbose": -1,
            "num_threads": 1,
            "seed": 0,
        }
        self._booster = lgb.train(
            params, lgb.Dataset(residual_features(X), target), num_boost_round=60
        )

    # ---- prediction -----------------------------------------------------------------------
    def predict_features(self, x: tuple[float, ...]) -> float:
        c = self._c
        return c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[3] + c[4]

    def predict_step(
        self,
        prefill_tokens: float = 0.0,
        prefill_attn: float = 0.0,
        num_decodes: float = 0.0,
        decode_ctx_sum: float = 0.0,
    ) -> float:
        """Predicted step time (s) of a batch given by its aggregate terms (linear part)."""
        c = self._c
        return (
            c[0] * prefill_tokens
            + c[1] * prefill_attn
            + c[2] * num_decodes
            + c[3] * decode_ctx_sum
            + c[4]
        )

    def predict(
        self,
        prefill_chunks: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (),
        num_decodes: int = 0,
        decode_ctx_sum: int = 0,
        exact: bool = False,
    ) -> float:
        x = batch_features(prefill_chunks, num_decodes, decode_ctx_sum)
        t = self.predict_features(x)
        if exact and self._booster is not None:
            # num_threads=1: OpenMP start-up dominated a one-row prediction (10 ms vs 60 us)
            r = self._booster.predict(residual_features(np.array([x])), num_threads=1)
            t *= math.exp(float(r[0]))
        return t

    def predict_matrix(self, X: np.ndarray, exact: bool = False) -> np.ndarray:
        """Vectorised prediction for many candidate batches (rows of features)."""
        t = X @ self.coef
        if exact and self._booster is not None:
            t = t * np.exp(self._booster.predict(residual_features(X), num_threads=1))
        return t

    # ---- forecasts ------------------------------------------------------------------------
    def capacity(
        self, tpot_target: float, num_decodes: int = 0, decode_ctx_sum: int = 0, chunk_ctx: int = 0
    ) -> int:
        """Largest prefill token budget whose predicted step time stays within `tpot_target`.

        The chunk is assumed to extend a sequence with `chunk_ctx` tokens already computed, so its
        attention work is B*(ctx + B/2): solve a*B^2/2 + (p + a*ctx)*B + base <= target.
        """
        c = self._c
        base = c[2] * num_decodes + c[3] * decode_ctx_sum + c[4]
        room = tpot_target - base
        if room <= 0:
            return 0
        qa = c[1] / 2.0
        qb = c[0] + c[1] * chunk_ctx
        if qa <= 1e-18:
            return int(room / qb) if qb > 0 else 1 << 30
        return max(0, int((-qb + math.sqrt(qb * qb + 4 * qa * room)) / (2 * qa)))

    def prefill_time(
        self,
        prompt_tokens: int,
        budget: int,
        num_decodes: int = 0,
        decode_ctx_sum: int = 0,
        computed: int = 0,
    ) -> float:
        """Predicted time to prefill the rest of a prompt in chunks of `budget` next to decodes."""
        budget = max(1, budget)
        c = self._c
        t = 0.0
        done = computed
        per_step = c[2] * num_decodes + c[3] * decode_ctx_sum + c[4]
        while done < prompt_tokens:
            chunk = min(budget, prompt_tokens - done)
            t += per_step + c[0] * chunk + c[1] * chunk * (done + chunk / 2.0)
            done += chunk
        return t

    def ttft_forecast(
        self,
        prompt_tokens: int,
        queued_prefill_tokens: int,
        budget: int,
        num_decodes: int = 0,
        decode_ctx_sum: int = 0,
        queued_attn: float = 0.0,
    ) -> float:
        """TTFT of a request queued behind `queued_prefill_tokens` of other prompts.

        Chunked prefill serves the queue ahead and then this prompt in steps of `budget` tokens,
        each step also carrying the running decodes. `queued_attn` is the attention work of the
        prompts ahead (sum of p^2/2 for whole prompts) when the caller knows it.
        """
        budget = max(1, budget)
        c = self._c
        total = queued_prefill_tokens + prompt_tokens
        steps = math.ceil(total / budget) if total > 0 else 0
        per_step = c[2] * num_decodes + c[3] * decode_ctx_sum + c[4]
        attn = queued_attn + prompt_tokens * prompt_tokens / 2.0
        return steps * per_step + c[0] * total + c[1] * attn

    # ---- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "features": list(FEATURE_NAMES),
            "coef": [float(v) for v in self.coef],
            "fitted_on": self._fitted_on,
            "config": self.config.__dict__,
            "residual_model": self._booster.model_to_string()
            if self._booster is not None
            else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PerfModel:
        if list(d.get("features", FEATURE_NAMES)) != list(FEATURE_NAMES):
            raise ValueError(f"perf model features {d.get('features')} != {list(FEATURE_NAMES)}")
        coef = d["coef"]
        if len(coef) != N_FEATURES or any(float(v) < 0 for v in coef):
            raise ValueError(f"perf model needs {N_FEATURES} non-negative coefficients, got {coef}")
        m = cls(PerfModelConfig(**d.get("config", {})), name=d.get("name", ""))
        m.coef = np.array(coef, dtype=float)
        m._c = tuple(float(v) for v in m.coef)
        m._fitted_on = int(d.get("fitted_on", 1)) or 1
        if d.get("residual_model"):
            import lightgbm as lgb

            m._booster = lgb.Booster(model_str=d["residual_model"])
            if m._booster.num_feature() != N_RESIDUAL_FEATURES:
                raise ValueError(
                    f"perf model residual uses {m._booster.num_feature()} features, this version "
                    f"{N_RESIDUAL_FEATURES}: refit it"
                )
        return m

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> PerfModel:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"bad perf model file {path}: {e}") from None
        return cls.from_dict(d)


N_RESIDUAL_FEATURES = 4


def residual_features(X: np.ndarray) -> np.ndarray:
    """What the residual trees see: the four batch terms. (Adding total tokens and mean decode and
    chunk contexts was tried on the measured truth and made no measurable difference.)"""
    return X[:, :N_RESIDUAL_FEATURES]


def mape(model: PerfModel, records: list[StepRecord], exact: bool = True) -> tuple[float, float]:
    """(mean, p90) absolute percentage error of a model on records."""
    from .features import records_matrix

    X, y = records_matrix(records)
    if len(y) == 0:
        raise ValueError("no step records to score")
    p = model.predict_matrix(X, exact=exact)
    ape = np.abs(p - y) / y
    return float(ape.mean()), float(np.percentile(ape, 90))
