"""What a pass is: `Pass`, the `Site`s it finds, and why it declines the rest.

A pass has two halves. `survey()` holds every legality check: it walks the
model and yields a `Site` for each place the rewrite applies and a `Declined`
(with the reason in words) for each near miss, so a user can ask why a node
was left alone. `rewrite()` builds the new model for one site and nothing
else; `apply()` wraps it and, for an exact pass, checks numerically that the
outputs did not change before returning the new model. Models are never
edited in place: `rewrite()` works on a fresh onnx-graphsurgeon import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Iterable, Mapping

from ..errors import PassError, VerificationError
from ..ir import Model, check_equivalence


class Exactness(Enum):
    EXACT = "exact"  # outputs equal within float tolerance; verified on every application
    LOSSY = "lossy"  # outputs change; the pass reports the local error it causes


@dataclass(frozen=True)
class Site:
    """One place in one model where one pass applies, anchored by a node name."""

    pass_name: str
    anchor: str
    nodes: frozenset[str]  # every node the rewrite touches; overlapping sites conflict
    params: tuple[tuple[str, Any], ...] = ()
    summary: str = field(default="", compare=False)  # for people: what the rewrite will do here

    def conflicts_with(self, other: "Site") -> bool:
        return bool(self.nodes & other.nodes)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Declined:
    """A place that looked like a site but is not one, and why."""

    pass_name: str
    anchor: str
    reason: str


@dataclass(frozen=True)
class Param:
    """A pass parameter as the CLI's `--param key=value` and the API see it."""

    name: str
    type: type
    default: Any
    help: str

    def convert(self, pass_name: str, raw: Any) -> Any:
        if isinstance(raw, self.type) and not isinstance(raw, bool):
            value = raw
        else:
            try:
                value = self.type(raw)
            except (TypeError, ValueError):
                raise PassError(f"{pass_name}: parameter '{self.name}' needs a {self.type.__name__}, got '{raw}'") from None
        return value


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
        self.check_params(resolved)
        return resolved

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise PassError for parameter values the pass cannot use."""

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
             summary: str = "") -> Site:
        return Site(self.name, anchor, frozenset(nodes), tuple(sorted((params or {}).items())), summary)

    def decline(self, anchor: str, reason: str) -> Declined:
        return Declined(self.name, anchor, reason)

    # -- applying ---------------------------------------------------------------------

    def preview(self, model: Model, site: Site) -> Model:
        """The rewritten model's structure, as cheaply as possible: what a cost model needs
        to score it. Data-aware passes skip their fitting here; the weights may be poor."""
        return self.rewrite(model, site, None)

    def output_tensor(self, model: Model, site: Site) -> str | None:
        """For a lossy pass: the tensor (same name before and after) whose change is the site's local error."""
        return None

    @abstractmethod
    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        """The new model with `site` rewritten. Must not modify `model`."""

    def apply(self, model: Model, site: Site, calib=None, verify: bool = True) -> Model:
        """Rewrite `site`; for an exact pass, refuse to return a model whose outputs changed."""
        if site.pass_name != self.name:
            raise PassError(f"site '{site.anchor}' belongs to pass {site.pass_name}, not {self.name}")
        rewritten = self.rewrite(model, site, calib)
        if verify and self.exactness is Exactness.EXACT:
            verify_exact(self.name, site.anchor, model, rewritten)
        return rewritten


def verify_exact(pass_name: str, anchor: str, original: Model, rewritten: Model) -> None:
    comparison = check_equivalence(original, rewritten)
    if not comparison:
        raise VerificationError(
            f"pass {pass_name} at site {anchor} changed the model's outputs ({comparison.detail}); "
            "the rewritten model was discarded. This is a bug in onnx-tailor: please report it with the model."
        )
