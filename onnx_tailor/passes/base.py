"""What a pass is: `Pass`, the `Site`s it finds, why it declines the rest, and a `Step`.

A pass has two halves. `survey()` holds every legality check: it walks the
model and yields a `Site` for each place the rewrite applies and a `Declined`
(with the reason in words) for each near miss, so a user can ask why a node
was left alone. A site carries what the survey matched (the channel group,
the IBN block, the matrix), so `rewrite()` builds the new model for one site
from that match and derives nothing again. `passes.apply.apply_step` is the
one way a site is applied: it rewrites, verifies an exact pass numerically
and measures a lossy pass's local error. Models are never edited in place:
`rewrite()` works on a fresh onnx-graphsurgeon import.

A `Step` (pass, anchor, params) is what a recipe stores and the search
records: a site without its match, valid on any model that has the site.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Iterable, Mapping

from ..errors import PassError, VerificationError
from ..ir import Model, check_equivalence

Params = tuple[tuple[str, Any], ...]  # sorted (name, value) pairs: hashable, and stable in recipes


class Exactness(Enum):
    EXACT = "exact"  # outputs equal within float tolerance; verified on every application
    LOSSY = "lossy"  # outputs change; the pass reports the local error it causes


@dataclass(frozen=True)
class Step:
    """One application of a pass, by name: what a recipe stores and a report lists."""

    pass_name: str
    anchor: str
    params: Params = ()

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict:
        return {"pass": self.pass_name, "anchor": self.anchor, "params": dict(self.params)}

    def __str__(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.pass_name}@{self.anchor}" + (f"[{params}]" if params else "")


@dataclass(frozen=True)
class Site:
    """One place in one model where one pass applies, anchored by a node name."""

    pass_name: str
    anchor: str
    nodes: frozenset[str]  # every node the rewrite touches; overlapping sites conflict
    params: Params = ()
    summary: str = field(default="", compare=False)  # for people: what the rewrite will do here
    # What the survey matched here (a ChannelGroup, an IBN block, a matrix): the rewrite reads it
    # instead of deriving it again. It describes the model the site was found on, and only that one.
    match: Any = field(default=None, compare=False, repr=False)

    def conflicts_with(self, other: "Site") -> bool:
        return bool(self.nodes & other.nodes)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def step(self) -> Step:
        return Step(self.pass_name, self.anchor, self.params)


@dataclass(frozen=True)
class Declined:
    """A place that looked like a site but is not one, and why."""

    pass_name: str
    anchor: str
    reason: str


# The widest parallelism factor P a pass aligns to. Real accelerators compute 8 to 1024 channels at
# once; past this a padded weight is gigabytes (pad_channels to 1e9 channels asked numpy for 134 GiB).
MAX_MULTIPLE = 4096


@dataclass(frozen=True)
class Param:
    """A pass parameter as the CLI's `--param key=value` and the API see it, with the values it takes.

    A number may be bounded below (`at_least`, or `above` for an open bound) and
    above (`at_most`); a string may be limited to `choices`. `convert` enforces
    both, so a pass never checks its own parameters.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None

    def convert(self, pass_name: str, raw: Any) -> Any:
        if isinstance(raw, self.type) and not isinstance(raw, bool):
            value = raw
        else:
            try:
                if self.type is int and isinstance(raw, float) and not raw.is_integer():
                    raise ValueError(raw)  # int() would cut 16.5 to 16, and fail on inf with OverflowError
                value = self.type(raw)
            except (TypeError, ValueError, OverflowError):
                raise PassError(f"{pass_name}: parameter '{self.name}' needs a {self.type.__name__}, got '{raw}'") from None
        if isinstance(value, float) and not math.isfinite(value):  # 'nan' and 'inf' parse, and fit nothing
            raise PassError(f"{pass_name}: {self.name} must be a finite number, got {value!r}")
        if not self.accepts(value):
            raise PassError(f"{pass_name}: {self.name} must be {self.allowed}, got {value!r}")
        return value

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most))

    @property
    def allowed(self) -> str:
        """The accepted values in words: 'one of a, b', 'in (0, 1]', 'at least 2'; '' when any value goes."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = f"({self.above:g}" if self.above is not None else f"[{self.at_least:g}" if self.at_least is not None else ""
        if low and self.at_most is not None:
            return f"in {low}, {self.at_most:g}]"
        if self.above is not None:
            return f"greater than {self.above:g}"
        if self.at_least is not None:
            return f"at least {self.at_least:g}"
        return f"at most {self.at_most:g}" if self.at_most is not None else ""


class Pass(ABC):
    """A graph rewrite. Subclasses set the class variables and implement survey/rewrite."""

    name: ClassVar[str]  # verb first: fuse_ibn_expansion, pad_channels
    exactness: ClassVar[Exactness]
    summary: ClassVar[str]  # one line for `onnx-tailor passes`
    params: ClassVar[tuple[Param, ...]] = ()

    # -- parameters -------------------------------------------------------------------

    def resolve_params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Declared defaults overlaid with `given`, converted; unknown keys are an error."""
        given = dict(given or {})
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            accepted = ", ".join(declared) or "none"
            raise PassError(f"{self.name}: unknown parameter '{unknown[0]}' (accepted: {accepted})")
        resolved = {name: p.default for name, p in declared.items()}
        for key, raw in given.items():
            resolved[key] = declared[key].convert(self.name, raw)
        return resolved

    def needs_calibration(self, params: Mapping[str, Any]) -> bool:
        """Whether the rewrite with these parameters is meaningless without calibration data
        (seeded random inputs would fit it to noise): `apply_step` then refuses to run it."""
        return False

    # -- finding sites ----------------------------------------------------------------

    @abstractmethod
    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        """Every site, and every declined near-site with its reason."""

    def find(self, model: Model, **params) -> list[Site]:
        resolved = self.resolve_params(params)
        return [s for s in self.survey(model, resolved) if isinstance(s, Site)]

    def declined(self, model: Model, **params) -> list[Declined]:
        resolved = self.resolve_params(params)
        return [s for s in self.survey(model, resolved) if isinstance(s, Declined)]

    def site(self, anchor: str, nodes: Iterable[str], params: dict[str, Any] | None = None,
             summary: str = "", match: Any = None) -> Site:
        return Site(self.name, anchor, frozenset(nodes), tuple(sorted((params or {}).items())), summary, match)

    def decline(self, anchor: str, reason: str) -> Declined:
        return Declined(self.name, anchor, reason)

    # -- rewriting (`passes.apply.apply_step` is the one caller) ------------------------

    def preview(self, model: Model, site: Site) -> Model:
        """The rewritten model's structure, as cheaply as possible: what a cost model needs
        to score it. Data-aware passes skip their fitting here; the weights may be poor."""
        return self.rewrite(model, site, None)

    def output_tensor(self, model: Model, site: Site) -> str | None:
        """For a lossy pass: the tensor (same name before and after) whose change is the site's local error."""
        return None

    @abstractmethod
    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        """The new model with `site` (found on `model`) rewritten. Must not modify `model`.

        A data-aware pass fits on the calibration inputs `calib` and aims at the tensors of
        `reference`, the model a sequence of rewrites started from (`capture.capture_fit`)."""


def verify_exact(pass_name: str, anchor: str, original: Model, rewritten: Model) -> None:
    comparison = check_equivalence(original, rewritten)
    if not comparison:
        raise VerificationError(
            f"pass {pass_name} at site {anchor} changed the model's outputs ({comparison.detail}); "
            "the rewritten model was discarded. This is a bug in onnx-tailor: please report it with the model."
        )
