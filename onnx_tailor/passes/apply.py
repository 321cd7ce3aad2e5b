"""Applying a step: the one way a model is rewritten, for the CLI, recipe replay and the search.

`apply_step` takes a step (pass, anchor, params), or a site found on the same
model, and returns the new model with its local error: it finds the site (or
says why there is none), refuses a data-hungry rewrite without calibration
data, rewrites, verifies an exact pass numerically against the input, and
measures a lossy pass's local error on the calibration inputs.

`apply_pass` applies a pass at every site. Sites move as a model is
rewritten, so "every site" means: find, apply the first site not yet
rewritten, find again, until none is left. The final model of an exact pass
is verified once against the input; only when that fails is the sequence
replayed with a check after every step, to name the site at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import PassError
from ..ir import Model
from .base import Exactness, Pass, Site, Step, verify_exact
from .capture import Calibration
from .local_error import local_error
from .registry import get_pass


@dataclass(frozen=True)
class Applied:
    """One step's result: the new model and, for a lossy pass, its local error (see passes.local_error)."""

    model: Model
    site: Site
    local_error: float | None


@dataclass(frozen=True)
class PassApplied:
    """A pass applied at several sites in turn."""

    model: Model
    sites: tuple[Site, ...]
    local_errors: tuple[float | None, ...]  # per site; None for an exact pass

    def to_dict(self) -> dict:
        """JSON-ready: each site rewritten (pass, anchor, params, what was done, local error) and the
        content hash of the new model."""
        return {"model_hash": self.model.content_hash,
                "sites": [{"pass": site.pass_name, "anchor": site.anchor, "params": site.param_dict,
                           "summary": site.summary, "local_error": error}
                          for site, error in zip(self.sites, self.local_errors)]}


def apply_step(model: Model, step: Step | Site, calib: Calibration | None = None, *,
               reference: Model | None = None, verify: bool = True) -> Applied:
    """Rewrite `model` at `step`; a `Site` must have been found on `model` itself.

    `reference` is the model a sequence of steps started from, whose tensors a lossy
    fit aims at (default: `model` itself). `verify=False` skips the numerical check
    of an exact pass, for a caller that verifies a whole sequence at once (`apply_pass`)."""
    rewrite = get_pass(step.pass_name)
    site = step if isinstance(step, Site) else find_site(model, step)
    if calib is None and rewrite.needs_calibration(site.param_dict):
        raise PassError(f"{rewrite.name} with {_shown(site.params)} fits to calibration data and none was given; "
                        "give --data, or choose parameters that need none (see `onnx-tailor passes`)")
    rewritten = rewrite.rewrite(model, site, calib, reference)
    if rewrite.exactness is Exactness.EXACT:
        if verify:
            verify_exact(rewrite.name, site.anchor, model, rewritten)
        return Applied(rewritten, site, None)
    return Applied(rewritten, site, local_error(model, rewritten, rewrite.output_tensor(model, site), calib))


def apply_pass(model: Model, pass_name: str, anchor: str | None = None,
               params: Mapping[str, Any] | None = None, calib: Calibration | None = None) -> PassApplied:
    """Apply `pass_name` at site `anchor`, or at every site when `anchor` is None."""
    rewrite = get_pass(pass_name)
    resolved = rewrite.resolve_params(params)
    if anchor is not None:
        applied = apply_step(model, Step(pass_name, anchor, tuple(sorted(resolved.items()))), calib)
        return PassApplied(applied.model, (applied.site,), (applied.local_error,))

    current, sites, errors = model, [], []
    while True:
        done = {s.anchor for s in sites}
        pending = [s for s in rewrite.find(current, **resolved) if s.anchor not in done]
        if not pending:
            break
        applied = apply_step(current, pending[0], calib, reference=model, verify=False)
        current = applied.model
        sites.append(applied.site)
        errors.append(applied.local_error)
    if sites and rewrite.exactness is Exactness.EXACT:
        try:
            verify_exact(rewrite.name, "(all sites)", model, current)
        except Exception:
            _replay_verified(model, sites, calib)  # raises, naming the site
            raise
    return PassApplied(current, tuple(sites), tuple(errors))


def find_site(model: Model, step: Step) -> Site:
    """The site of `step` on `model`, or a PassError that says why `step.anchor` is not one."""
    rewrite = get_pass(step.pass_name)
    params = rewrite.resolve_params(step.param_dict)
    surveyed = list(rewrite.survey(model, params))
    sites = {s.anchor: s for s in surveyed if isinstance(s, Site)}
    if step.anchor in sites:
        return sites[step.anchor]
    declined = {d.anchor: d.reason for d in surveyed if not isinstance(d, Site)}
    if step.anchor in declined:
        raise PassError(f"{rewrite.name} does not apply at '{step.anchor}': {declined[step.anchor]}")
    if not model.has_node(step.anchor):
        raise PassError(f"no node named '{step.anchor}' in the model; "
                        f"`onnx-tailor apply MODEL --pass {rewrite.name} --list-sites` lists its sites")
    listed = ", ".join(sorted(sites)[:8]) + (" ..." if len(sites) > 8 else "") if sites else "none"
    raise PassError(f"'{step.anchor}' is not a site of {rewrite.name} (its sites: {listed})")


def _replay_verified(model: Model, sites: list[Site], calib: Calibration | None) -> None:
    current = model
    for site in sites:
        current = apply_step(current, site.step, calib, reference=model).model


def _shown(params) -> str:
    return ", ".join(f"{k}={v}" for k, v in params) or "its defaults"
