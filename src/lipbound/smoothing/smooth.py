"""``Smooth``: Cohen PREDICT / CERTIFY and the sound LVM-RS certificate for a base classifier f: R^d -> R^K.

Units: ``sigma`` is the standard deviation of the Gaussian noise in the units of the model's own input (for the
bundled digits models: pixels in [0, 1]); radii are l2 distances in those units. Noise is added to exactly what the
model receives, so any normalisation must live inside the model.

Guarantees (each with probability >= 1 - alpha over the Monte-Carlo sampling, per input):

* ``predict`` (Cohen, Hung et al. test): the returned class, if any, is g(x) = argmax_c P[argmax f(x + delta) = c].
* ``certify(method="cohen")``: c_A chosen on n0 samples; Clopper-Pearson lower bound p_A_lower on n fresh samples at
  level alpha; abstain if p_A_lower <= 1/2, else g is constant (= c_A) on the l2 ball of radius sigma Phi^-1(p_A_lower).
* ``certify(method="lvm")``: the smoothed soft classifier G(x) = argmax_c H_c(x), H_c = E[s_c(t f(x + delta))] for a
  simplex map s (argmax / softmax / sparsemax) at temperature t. With c_A fixed before the n estimation samples are
  drawn, K one-sided bounds (lower for c_A, upper for every c != c_A; Clopper-Pearson for argmax, empirical
  Bernstein with the true sample variance otherwise) each at level alpha / K (alpha / (M K) under Bonferroni), so
  all hold jointly with probability >= 1 - alpha. p_B_upper = min(max_{c != c_A} upper_c, 1 - p_A_lower). Radius
  max(R_Phi, R_L): R_Phi = sigma/2 (Phi^-1(p_A_lower) - Phi^-1(p_B_upper)), and with a base Lipschitz constant L_f
  the finite-L radius R_L = (p_A_lower - p_B_upper) / (sqrt(2) L_p erf(1 / (2 L_p sigma))), L_p = Lip(s(t .)) L_f.
  Both are functions of the same bounds, so their maximum costs no confidence.

Selection of (map, t) (``select=``):

* ``"n0"`` (default): chosen per input on the n0 selection samples (largest predicted radius), then one certificate
  on n fresh samples. ``"bonferroni"``: every candidate certified on the same n samples at alpha / M, the largest
  radius kept. Both certify the smoothed classifier CHOSEN FOR THAT INPUT (as Delattre et al. do): at a nearby x'
  the procedure may pick another (map, t) and predict differently.
* ``"global"``: one (map, t) for every input (from :func:`lipbound.smoothing.tune` on a validation split): the
  certificate is about one fixed classifier G, the usual meaning of certified accuracy.

Picking the best of many certificates computed on the same samples WITHOUT correcting alpha voids the confidence
level (see tests/test_smoothing_coverage.py); it is deliberately not offered.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, ShapeMismatchError
from lipbound.smoothing import stats as S
from lipbound.smoothing.maps import Candidate, default_candidates
from lipbound.smoothing.sampling import SampleStats, sample_stats

METHODS = ("cohen", "lvm")
SELECTS = ("n0", "bonferroni", "global")
ABSTAIN = -1


class SmoothingInputError(InvalidInputError):
    """A bad argument to :class:`Smooth` or one of its methods (a :class:`lipbound.errors.InvalidInputError`)."""


@dataclass
class SmoothResult:
    """Outcome of ``predict`` / ``certify`` for a batch of B inputs.

    ``prediction`` long (B,), -1 = abstain; ``radius`` float64 (B,), 0 when abstaining (and always for predict);
    ``candidate`` the (map, t) certified per input; ``radius_source`` "phi", "lipschitz" or "abstain";
    ``p_lower`` / ``p_upper`` the bounds p_A_lower and p_B_upper behind each radius; ``classifier`` "fixed" when
    every input is certified for the same smoothed classifier, "per-input" when it was chosen per input.
    """

    prediction: Tensor
    radius: Tensor
    method: str
    seconds: float
    sigma: float
    alpha: float
    n0: int | None
    n: int
    select: str | None = None
    candidate: list[str] = field(default_factory=list)
    radius_source: list[str] = field(default_factory=list)
    p_lower: Tensor | None = None
    p_upper: Tensor | None = None
    lipschitz: float | None = None
    alpha_per_bound: float | None = None
    bounds_per_input: int | None = None
    classifier: str = "fixed"
    samples_per_second: float = 0.0

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        return self.prediction == ABSTAIN

    def to_dict(self) -> dict[str, Any]:
        def lst(t: Tensor | None) -> list | None:
            return None if t is None else t.detach().cpu().tolist()

        return {
            "method": self.method,
            "select": self.select,
            "classifier": self.classifier,
            "sigma": self.sigma,
            "alpha": self.alpha,
            "alpha_per_bound": self.alpha_per_bound,
            "bounds_per_input": self.bounds_per_input,
            "n0": self.n0,
            "n": self.n,
            "lipschitz": self.lipschitz,
            "seconds": self.seconds,
            "samples_per_second": self.samples_per_second,
            "prediction": lst(self.prediction),
            "radius": lst(self.radius),
            "candidate": list(self.candidate),
            "radius_source": list(self.radius_source),
            "p_lower": lst(self.p_lower),
            "p_upper": lst(self.p_upper),
        }


def _positive_int(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise SmoothingInputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _alpha(v: Any) -> float:
    try:
        a = float(v)
    except (TypeError, ValueError):
        a = math.nan
    if not (0.0 < a < 1.0):
        raise SmoothingInputError(f"alpha must lie strictly between 0 and 1, got {v!r}")
    return a


@dataclass
class _Certs:
    """Certificates of M candidates for g inputs: arrays (g, M)."""

    radius: np.ndarray
    source: np.ndarray  # 0 abstain, 1 phi, 2 lipschitz
    lower: np.ndarray
    upper: np.ndarray
    margin: np.ndarray


SOURCE_NAMES = ("abstain", "phi", "lipschitz")


def fixed_candidate_certificates(
    stats: SampleStats,
    candidates: Sequence[Candidate],
    c_a: np.ndarray,
    alpha_each: float,
    sigma: float,
    lip_f: float | None,
    n_eval: int | None = None,
) -> _Certs:
    """Radii of every candidate given its class c_A (g, M) fixed beforehand, from ``stats``.

    Bounds at level ``alpha_each`` each. ``n_eval`` (selection only) evaluates the bounds as if the same means and
    variances had come from ``n_eval`` samples (a prediction of the final certificate, not a certificate).
    """
    n = stats.n if n_eval is None else n_eval
    mean_t, var_t = stats.scores(candidates)
    mean, var = mean_t.cpu().numpy(), var_t.cpu().numpy()  # (g, M, K)
    is_hard = np.array([c.map == "argmax" for c in candidates])[None, :, None]
    counts = mean * n if n_eval is not None else np.broadcast_to(stats.counts.cpu().numpy()[:, None, :], mean.shape)
    with np.errstate(invalid="ignore"):
        lo_all = np.where(
            is_hard, S.clopper_pearson_lower(counts, n, alpha_each), S.bernstein_lower(mean, var, n, alpha_each)
        )
        up_all = np.where(
            is_hard, S.clopper_pearson_upper(counts, n, alpha_each), S.bernstein_upper(mean, var, n, alpha_each)
        )
    lower = np.take_along_axis(lo_all, c_a[..., None], axis=2)[..., 0]
    others = up_all.copy()
    np.put_along_axis(others, c_a[..., None], -np.inf, axis=2)
    upper = np.minimum(others.max(axis=2), 1.0 - lower)
    r_phi = S.phi_radius(lower, upper, sigma)
    radius, source = r_phi, np.where(lower > upper, 1, 0)
    if lip_f is not None:
        lip_p = np.array([c.lipschitz * lip_f for c in candidates])[None, :]
        # argmax is not Lipschitz: its infinite-L radius sigma sqrt(pi/2)(p_A - p_B) never beats R_Phi, skip it
        r_l = np.where(np.isfinite(lip_p), S.lipschitz_radius(lower, upper, lip_p, sigma), 0.0)
        source = np.where((r_l > r_phi) & (lower > upper), 2, source)
        radius = np.maximum(r_phi, r_l)
    return _Certs(radius, source, lower, upper, lower - upper)


def _best(c: _Certs) -> np.ndarray:
    """Index (g,) of the candidate with the largest radius (largest margin when every radius is 0)."""
    score = np.where(c.radius > 0, c.radius, c.margin - 10.0)
    return score.argmax(axis=1)


class Smooth:
    """Randomized smoothing of ``model`` (logits over ``num_classes`` classes) with noise N(0, sigma^2 I).

    ``sigma`` is in the units of the model's input. ``input_shape`` (per sample, optional) is checked against every
    batch. A model with modules in training mode is smoothed as an eval-mode COPY, with a warning (dropout and
    batch-norm statistics would make the base classifier random); the caller's object is never modified.
    ``lipschitz_method`` is the :func:`lipbound.global_lipschitz` method used for ``certify(...,
    lipschitz="certified")`` (default "auto": the tightest that fits the budget; "product" is instant).
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Tensor],
        num_classes: int,
        sigma: float,
        input_shape: Sequence[int] | None = None,
        lipschitz_method: str = "auto",
    ) -> None:
        if not callable(model):
            raise SmoothingInputError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.model = model
        self.num_classes = _positive_int(num_classes, "num_classes", 2)
        try:
            sigma = float(sigma)
        except (TypeError, ValueError):
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma > 0):
            raise SmoothingInputError(f"sigma must be a finite number > 0 (noise std in input units), got {sigma!r}")
        self.sigma = sigma
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.lipschitz_method = lipschitz_method
        self._certified_lipschitz: float | None = None
        self._eval_mode()

    # ---------------------------------------------------------------------------------------------- plumbing
    def _eval_mode(self) -> None:
        """Smooth an eval-mode copy of a model with modules in training mode (the caller's object is unchanged)."""
        if isinstance(self.model, nn.Module) and any(m.training for m in self.model.modules()):
            warnings.warn(
                "Smooth: the model has modules in training mode (Dropout/BatchNorm would make the base classifier "
                "random); smoothing an eval-mode copy of it (call model.eval() to silence this)",
                UserWarning,
                stacklevel=3,
            )
            self.model = copy.deepcopy(self.model).eval()

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        if isinstance(self.model, nn.Module):
            p = next(self.model.parameters(), None)
            if p is not None:
                return p.device, p.dtype if p.dtype.is_floating_point else torch.float32
        return torch.device("cpu"), torch.float32

    def _prepare(self, x: Any) -> Tensor:
        device, dtype = self._device_dtype()
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise SmoothingInputError(f"x must be a tensor (or numpy array) of shape (B, ...), got {type(x).__name__}")
        if x.ndim < 2:
            raise ShapeMismatchError(f"x must carry a batch dimension, shape (B, ...); got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeMismatchError("x is an empty batch")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ShapeMismatchError(
                f"x has per-sample shape {tuple(x.shape[1:])}, the model expects {self.input_shape} (x is (B, ...))"
            )
        x = x.to(device=device, dtype=dtype)
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
            raise SmoothingInputError(f"x contains NaN or inf values (inputs {bad[:10]})")
        return x

    def _forward_fn(self) -> Callable[[Tensor], Tensor]:
        checked = False

        def forward(rows: Tensor) -> Tensor:
            nonlocal checked
            with torch.inference_mode():
                try:
                    out = self.model(rows)
                except RuntimeError as e:
                    raise ShapeMismatchError(
                        f"the model failed on noisy inputs of shape {tuple(rows.shape)}: {str(e).splitlines()[0]}"
                    ) from e
            if not checked:
                if out.ndim != 2 or out.shape[0] != rows.shape[0] or out.shape[1] != self.num_classes:
                    raise ShapeMismatchError(
                        f"the model returned shape {tuple(out.shape)} for {rows.shape[0]} inputs; expected logits "
                        f"({rows.shape[0]}, num_classes={self.num_classes})"
                    )
                checked = True
            return out

        return forward

    def _generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        if isinstance(generator, torch.Generator):
            return generator
        device, _ = self._device_dtype()
        seed = 0 if generator is None else _positive_int(generator, "generator (seed)", 0)
        return torch.Generator(device=device).manual_seed(seed)

    def lipschitz_constant(self, lipschitz: float | str | None) -> float | None:
        """L_f, an l2 Lipschitz upper bound of the logit map: None, a float, or "certified" (computed once with
        :func:`lipbound.global_lipschitz` with ``self.lipschitz_method``)."""
        if lipschitz is None:
            return None
        if isinstance(lipschitz, str):
            if lipschitz != "certified":
                raise SmoothingInputError(f"lipschitz must be None, a float > 0 or 'certified', got {lipschitz!r}")
            if self._certified_lipschitz is None:
                from lipbound.global_bounds import global_lipschitz

                if self.input_shape is None:
                    raise SmoothingInputError("lipschitz='certified' needs Smooth(..., input_shape=...)")
                self._certified_lipschitz = float(
                    global_lipschitz(
                        self.model, norm=2, method=self.lipschitz_method, input_shape=self.input_shape
                    ).upper
                )
            return self._certified_lipschitz
        try:
            val = float(lipschitz)
        except (TypeError, ValueError):
            val = math.nan
        if not (val > 0) or math.isnan(val):
            raise SmoothingInputError(f"lipschitz must be None, a float > 0 or 'certified', got {lipschitz!r}")
        return val

    @staticmethod
    def _groups(b: int, n_max: int, batch_size: int) -> list[slice]:
        g = max(1, batch_size // max(n_max, 1))
        return [slice(i, min(i + g, b)) for i in range(0, b, g)]

    # ---------------------------------------------------------------------------------------------- predict
    def predict(
        self,
        x: Any,
        n: int = 1000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        generator: torch.Generator | int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SmoothResult:
        """Cohen PREDICT: top-two vote counts n1 >= n2 on n samples; the top class if the two-sided binomial test
        of n1 out of n1 + n2 at p = 1/2 has p-value <= alpha, else abstain (-1). P(wrong class) <= alpha."""
        t0 = time.perf_counter()
        self._eval_mode()
        n = _positive_int(n, "n")
        alpha = _alpha(alpha)
        batch_size = _positive_int(batch_size, "batch_size")
        x = self._prepare(x)
        gen, forward = self._generator(generator), self._forward_fn()
        pred = torch.full((x.shape[0],), ABSTAIN, dtype=torch.long)
        for sl in self._groups(x.shape[0], n, batch_size):
            st = sample_stats(forward, x[sl], self.sigma, n, self.num_classes, [], batch_size, gen)
            top2 = torch.topk(st.counts.cpu(), 2, dim=1)
            for i in range(top2.values.shape[0]):
                n1, n2 = int(top2.values[i, 0]), int(top2.values[i, 1])
                if S.binomial_two_sided_pvalue(n1, n1 + n2) <= alpha:
                    pred[sl.start + i] = int(top2.indices[i, 0])
            if progress is not None:
                progress(sl.stop, x.shape[0])
        seconds = time.perf_counter() - t0
        return SmoothResult(
            prediction=pred,
            radius=torch.zeros(x.shape[0], dtype=torch.float64),
            method="predict",
            seconds=seconds,
            sigma=self.sigma,
            alpha=alpha,
            n0=None,
            n=n,
            radius_source=["abstain" if int(p) == ABSTAIN else "none" for p in pred],
            samples_per_second=x.shape[0] * n / max(seconds, 1e-12),
        )

    # ---------------------------------------------------------------------------------------------- certify
    def certify(
        self,
        x: Any,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        method: str = "cohen",
        select: str | None = None,
        lipschitz: float | str | None = None,
        candidates: Sequence[Candidate] | None = None,
        candidate: Any = None,
        generator: torch.Generator | int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SmoothResult:
        """Certify every input of ``x`` (B, ...): class and l2 radius, or abstain (-1, radius 0).

        ``method``: "cohen" or "lvm" (see the module docstring for what each radius guarantees). ``select``
        (lvm only): "n0" (default), "bonferroni" or "global" (then ``candidate`` = a :class:`Candidate` or the
        result of :func:`lipbound.smoothing.tune`). ``candidates``: the (map, t) grid for "n0"/"bonferroni"
        (default :func:`default_candidates`). ``lipschitz`` (lvm only): None, an l2 Lipschitz bound of the logit
        map, or "certified". ``generator``: a torch.Generator, or an int seed (default 0).
        """
        t0 = time.perf_counter()
        self._eval_mode()
        if method not in METHODS:
            raise SmoothingInputError(f"method must be one of {METHODS}, got {method!r}")
        n0 = _positive_int(n0, "n0")
        n = _positive_int(n, "n")
        alpha = _alpha(alpha)
        batch_size = _positive_int(batch_size, "batch_size")
        if method == "cohen":
            if select not in (None, "n0"):
                raise SmoothingInputError("method='cohen' always selects c_A on the n0 samples; select applies to lvm")
            if lipschitz is not None:
                raise SmoothingInputError("lipschitz= is used by method='lvm' only (the hard vote is not Lipschitz)")
            if candidates is not None or candidate is not None:
                raise SmoothingInputError("candidates/candidate apply to method='lvm' only")
        else:
            select = "n0" if select is None else select
            if select not in SELECTS:
                raise SmoothingInputError(f"select must be one of {SELECTS}, got {select!r}")
            if n < 2:
                raise SmoothingInputError("method='lvm' needs n >= 2 (the empirical Bernstein bound uses a variance)")
        cands = self._candidate_list(method, select, candidates, candidate)
        lip_f = self.lipschitz_constant(lipschitz) if method == "lvm" else None
        x = self._prepare(x)
        gen, forward = self._generator(generator), self._forward_fn()
        b, k = x.shape[0], self.num_classes
        pred = np.full(b, ABSTAIN, dtype=np.int64)
        radius, lower, upper = np.zeros(b), np.zeros(b), np.zeros(b)
        chosen, source = [""] * b, ["abstain"] * b
        m = len(cands)
        alpha_each = alpha if method == "cohen" else alpha / (k * (m if select == "bonferroni" else 1))
        for sl in self._groups(b, max(n0, n), batch_size):
            xs = x[sl]
            st0 = sample_stats(forward, xs, self.sigma, n0, k, cands if method == "lvm" else [], batch_size, gen)
            if method == "cohen":
                c_a = st0.counts.argmax(dim=1).cpu().numpy()
                st = sample_stats(forward, xs, self.sigma, n, k, [], batch_size, gen)
                n_a = np.take_along_axis(st.counts.cpu().numpy(), c_a[:, None], axis=1)[:, 0]
                lo = S.clopper_pearson_lower(n_a, n, alpha)
                ok = lo > 0.5
                with np.errstate(invalid="ignore"):
                    r = np.where(ok, self.sigma * special.ndtri(np.clip(lo, 0.5, 1.0)), 0.0)
                pred[sl] = np.where(ok, c_a, ABSTAIN)
                radius[sl], lower[sl], upper[sl] = r, lo, 1 - lo
                for i in range(xs.shape[0]):
                    chosen[sl.start + i] = "argmax"
                    source[sl.start + i] = "phi" if ok[i] else "abstain"
            else:
                mean0, _ = st0.scores(cands)
                c_a_all = mean0.argmax(dim=2).cpu().numpy()  # (g, M): class per candidate, from the n0 samples
                if select == "n0":
                    pred0 = fixed_candidate_certificates(st0, cands, c_a_all, alpha_each, self.sigma, lip_f, n_eval=n)
                    pick = _best(pred0)
                else:
                    pick = np.zeros(xs.shape[0], dtype=np.int64)
                fresh = sorted({int(j) for j in pick}) if select == "n0" else list(range(m))
                st = sample_stats(forward, xs, self.sigma, n, k, [cands[j] for j in fresh], batch_size, gen)
                certs = fixed_candidate_certificates(
                    st, [cands[j] for j in fresh], c_a_all[:, fresh], alpha_each, self.sigma, lip_f
                )
                pick_local = _best(certs) if select == "bonferroni" else np.array([fresh.index(int(j)) for j in pick])
                rows = np.arange(xs.shape[0])
                r = certs.radius[rows, pick_local]
                src = certs.source[rows, pick_local]
                ca = c_a_all[:, fresh][rows, pick_local]
                pred[sl] = np.where(src > 0, ca, ABSTAIN)
                radius[sl] = np.where(src > 0, r, 0.0)
                lower[sl], upper[sl] = certs.lower[rows, pick_local], certs.upper[rows, pick_local]
                for i in range(xs.shape[0]):
                    chosen[sl.start + i] = cands[fresh[pick_local[i]]].label()
                    source[sl.start + i] = SOURCE_NAMES[int(src[i])]
            if progress is not None:
                progress(sl.stop, b)
        seconds = time.perf_counter() - t0
        return SmoothResult(
            prediction=torch.as_tensor(pred),
            radius=torch.as_tensor(radius),
            method=method,
            seconds=seconds,
            sigma=self.sigma,
            alpha=alpha,
            n0=n0,
            n=n,
            select="n0" if method == "cohen" else select,
            candidate=chosen,
            radius_source=source,
            p_lower=torch.as_tensor(lower),
            p_upper=torch.as_tensor(upper),
            lipschitz=lip_f,
            alpha_per_bound=alpha_each,
            bounds_per_input=1 if method == "cohen" else k * (m if select == "bonferroni" else 1),
            classifier="fixed" if method == "cohen" or select == "global" else "per-input",
            samples_per_second=b * (n0 + n) / max(seconds, 1e-12),
        )

    @staticmethod
    def _candidate_list(method: str, select: str | None, candidates: Any, candidate: Any) -> list[Candidate]:
        if method == "cohen":
            return [Candidate("argmax")]
        if select == "global":
            if candidates is not None:
                raise SmoothingInputError(
                    "select='global' certifies one fixed candidate: pass candidate=, not candidates="
                )
            cand = getattr(candidate, "candidate", candidate)  # a TuneResult or a Candidate
            if not isinstance(cand, Candidate):
                raise SmoothingInputError(
                    "select='global' needs candidate= a Candidate(map, temperature) or the result of "
                    "lipbound.smoothing.tune(...) on a validation split"
                )
            return [cand]
        if candidate is not None:
            raise SmoothingInputError("candidate= is for select='global'; use candidates= for the selection grid")
        cands = default_candidates() if candidates is None else list(candidates)
        if not cands or not all(isinstance(c, Candidate) for c in cands):
            raise SmoothingInputError("candidates must be a non-empty sequence of Candidate(map, temperature)")
        if len(set(cands)) != len(cands):
            raise SmoothingInputError("candidates contains duplicates")
        return cands


@dataclass
class TuneResult:
    """The (map, t) chosen by :func:`tune` for select="global", with the validation score of every candidate."""

    candidate: Candidate
    score: str
    scores: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "score": self.score,
            "scores": self.scores,
            "seconds": self.seconds,
        }


def tune(
    smooth: Smooth,
    x: Any,
    y: Any,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    candidates: Sequence[Candidate] | None = None,
    lipschitz: float | str | None = None,
    score: str | float = "acr",
    batch_size: int = 1000,
    generator: torch.Generator | int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Choose ONE (map, t) for a whole data set from a validation split (x, y) (never the inputs to certify).

    Every candidate is certified on the validation inputs exactly as select="global" would (c_A on n0 samples,
    K bounds at alpha / K on n fresh ones); the winner maximises ``score``: "acr" (average certified radius of
    correct predictions) or a float r (certified accuracy at radius r, ties broken by ACR). Pass the result as
    ``certify(..., method="lvm", select="global", candidate=result)``.
    """
    t0 = time.perf_counter()
    cands = Smooth._candidate_list("lvm", "n0", candidates, None)
    if isinstance(score, str) and score != "acr":
        raise SmoothingInputError(f"score must be 'acr' or a radius (float), got {score!r}")
    n0, n = _positive_int(n0, "n0"), _positive_int(n, "n", 2)
    alpha = _alpha(alpha)
    batch_size = _positive_int(batch_size, "batch_size")
    lip_f = smooth.lipschitz_constant(lipschitz)
    x = smooth._prepare(x)
    y = torch.as_tensor(y).long().reshape(-1).cpu().numpy()
    if y.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"y has {y.shape[0]} labels for {x.shape[0]} inputs")
    smooth._eval_mode()
    gen, forward = smooth._generator(generator), smooth._forward_fn()
    k = smooth.num_classes
    radius = np.zeros((x.shape[0], len(cands)))
    correct = np.zeros((x.shape[0], len(cands)), dtype=bool)
    for sl in smooth._groups(x.shape[0], max(n0, n), batch_size):
        st0 = sample_stats(forward, x[sl], smooth.sigma, n0, k, cands, batch_size, gen)
        c_a = st0.scores(cands)[0].argmax(dim=2).cpu().numpy()
        st = sample_stats(forward, x[sl], smooth.sigma, n, k, cands, batch_size, gen)
        certs = fixed_candidate_certificates(st, cands, c_a, alpha / k, smooth.sigma, lip_f)
        radius[sl] = np.where(certs.source > 0, certs.radius, 0.0)
        correct[sl] = (certs.source > 0) & (c_a == y[sl, None])
        if progress is not None:
            progress(sl.stop, x.shape[0])
    acr = (radius * correct).mean(axis=0)
    if score == "acr":
        key = acr
    else:
        r = float(score)
        key = ((radius >= r) & correct).mean(axis=0) + 1e-9 * acr
    best = int(np.argmax(key))
    return TuneResult(
        candidate=cands[best],
        score=str(score),
        scores={c.label(): float(v) for c, v in zip(cands, key, strict=True)},
        seconds=time.perf_counter() - t0,
    )
