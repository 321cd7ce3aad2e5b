"""Applying a pass to a model: at one named site, or at every site it finds.

Sites move as a model is rewritten, so "every site" means: find, apply the
first site not yet rewritten, find again, until none is left. The final model
of an exact pass is verified once against the input; only when that fails is
the sequence replayed with a check after every step, to name the site at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import PassError
from ..ir import Model
from .base import Exactness, Pass, Site, verify_exact
from .local_error import local_error
from .registry import get_pass


@dataclass(frozen=True)
class Applied:
    model: Model
    sites: tuple[Site, ...]
    local_errors: tuple[float | None, ...] = ()  # per site, for lossy passes (see passes.local_error)


def apply_pass(model: Model, pass_name: str, anchor: str | None = None,
               params: Mapping[str, Any] | None = None, calib=None) -> Applied:
    """Apply `pass_name` at site `anchor`, or at every site when `anchor` is None."""
    rewrite = get_pass(pass_name)
    resolved = rewrite.resolve_params(params)
    if anchor is not None:
        site = site_at(rewrite, model, anchor, resolved)
        rewritten = rewrite.apply(model, site, calib)
        return Applied(rewritten, (site,), (_local_error(rewrite, model, rewritten, site, calib),))

    current, applied, errors, done = model, [], [], set()
    while True:
        pending = [s for s in rewrite.find(current, **resolved) if s.anchor not in done]
        if not pending:
            break
        site = pending[0]
        rewritten = rewrite.apply(current, site, calib, verify=False)
        errors.append(_local_error(rewrite, current, rewritten, site, calib))
        current = rewritten
        applied.append(site)
        done.add(site.anchor)
    if applied and rewrite.exactness is Exactness.EXACT:
        try:
            verify_exact(rewrite.name, "(all sites)", model, current)
        except Exception:
            _replay_verified(rewrite, model, applied, calib)  # raises, naming the site
            raise
    return Applied(current, tuple(applied), tuple(errors))


def _local_error(rewrite: Pass, before: Model, after: Model, site: Site, calib) -> float | None:
    if rewrite.exactness is Exactness.EXACT:
        return None
    return local_error(before, after, rewrite.output_tensor(before, site), calib)


def site_at(rewrite: Pass, model: Model, anchor: str, params: dict[str, Any]) -> Site:
    sites = {s.anchor: s for s in rewrite.find(model, **params)}
    if anchor in sites:
        return sites[anchor]
    declined = {d.anchor: d.reason for d in rewrite.declined(model, **params)}
    if anchor in declined:
        raise PassError(f"{rewrite.name} does not apply at '{anchor}': {declined[anchor]}")
    if not model.has_node(anchor):
        raise PassError(f"no node named '{anchor}' in the model; "
                        f"`onnx-tailor apply MODEL --pass {rewrite.name} --list-sites` lists its sites")
    listed = ", ".join(sorted(sites)[:8]) + (" ..." if len(sites) > 8 else "") if sites else "none"
    raise PassError(f"'{anchor}' is not a site of {rewrite.name} (its sites: {listed})")


def _replay_verified(rewrite: Pass, model: Model, sites: list[Site], calib) -> None:
    current = model
    for site in sites:
        fresh = {s.anchor: s for s in rewrite.find(current, **site.param_dict)}.get(site.anchor, site)
        current = rewrite.apply(current, fresh, calib, verify=True)
