"""A candidate's preview: its cheap rewrite scored by its change, the same wherever it is computed.

The search's context keeps previews per (model, site) and decides which to
compute; this is the computation itself, a pure function of the model, its
kernel costs, the sites, the passes' parameters and the cost model, so that a
worker process gives the bytes this process gives (the cost model's trees use
no threads).

A rewrite is previewed on a region cut out around its site (`ir.regions`)
rather than on the whole model, whenever the region can tell the whole
model's answer; the whole model answers otherwise. The region is a sketch
(`ir.Model`'s `sketch`): the rewrite's large weights keep their dims but not
their values, which no score reads. The new kernels of all the sites
previewed together are predicted in one regressor call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import logging

from ..costmodel.delta import (KernelCosts, Unscored, neighbourhood, region_around, score, unscored_change,
                               unscored_region_change)
from ..costmodel.regressor import CostModel
from ..ir import Model
from ..ir.regions import extract
from ..passes import Site, get_pass
from ..passes.base import Pass

_log = logging.getLogger(__name__)

# How far (in kernels) around a site's kernels a region preview cuts: a rewrite changes its own kernels and the
# shapes its neighbours read, whose fusion then changes; past that, most rewrites stay inside.
REGION_HOPS = 1


@dataclass(frozen=True)
class Preview:
    """A candidate's predicted change, valid on every model whose region around `footprint` is unchanged."""

    delta_s: float  # predicted latency change against the model it was previewed on
    site_nodes: frozenset[str]
    footprint: frozenset[str]  # the nodes of the kernels it changes, and their neighbours


def previews(cost_model: CostModel, model: Model, costs: KernelCosts, sites: list[Site],
             params: dict[str, dict]) -> tuple[list[Preview], int]:
    """Each site's preview on `model` (whose kernel costs are `costs`), and how many of them the whole
    model had to answer. `params`: each pass's parameters, as the search finds its sites with."""
    cuts: dict[frozenset[str], _Cut] = {}
    rows: dict = {}  # new kernels' rows by signature: 351 new kernels of the detector's 92 sites are 195 distinct
    changes = [change(cost_model, model, costs, site, params.get(site.pass_name, {}), cuts, rows) for site in sites]
    found = []
    for site, scored in zip(sites, score(cost_model, [unscored for unscored, _ in changes])):
        footprint = neighbourhood(model, scored.removed | site.nodes) | scored.added
        found.append(Preview(scored.latency_s - costs.latency_s, site.nodes, footprint))
    return found, sum(whole for _, whole in changes)


def change(cost_model: CostModel, model: Model, costs: KernelCosts, site: Site, params: dict,
           cuts: dict | None = None, rows: dict | None = None) -> tuple[Unscored, bool]:
    """The cheap rewrite's change against `model`'s kernels, and whether the whole model had to answer: on
    the region around the site when that can tell, else on the whole model. `cuts`, `rows`: as
    `region_change`'s."""
    rewrite = get_pass(site.pass_name)
    try:
        found = region_change(cost_model, costs, model, rewrite, site, params, cuts, rows)
    except Exception:  # a region is only a shortcut: whatever goes wrong there, the whole model answers
        _log.debug("region preview of %s failed", site.step, exc_info=True)
        found = None
    if found is not None:
        return found, False
    return unscored_change(cost_model, costs, rewrite.preview(model, site)), True


def region_change(cost_model: CostModel, costs: KernelCosts, model: Model, rewrite: Pass, site: Site,
                  params: dict, cuts: dict | None = None, rows: dict | None = None) -> Unscored | None:
    """`site`'s change found on a region cut out around it (`ir.regions`), or None when the region cannot be
    trusted to give the whole model's answer: the pass does not find the same site there, or the rewrite reaches
    the region's border (`costmodel.delta.unscored_region_change`). `costs`: `model`'s kernels. `cuts`: the
    regions of `model` cut so far, by their nodes: sites of several passes on one block share a region (58
    regions for the detector's 92 sites), and with it what passes derive from it (consumers, shapes). `rows`:
    as `costmodel.delta.unscored_region_change`'s, for `cost_model`."""
    cuts = {} if cuts is None else cuts
    names = frozenset(region_around(model, costs, site.nodes, REGION_HOPS))
    if names not in cuts:
        # A sketch: the rewrite's new weights are scored by their dims, never built into protos (`ir.Model`).
        cuts[names] = _Cut(extract(model, set(names), sketch=True))
    cut = cuts[names]
    if cut.region is None:
        return None
    found = (rewrite.name, repr(sorted(params.items())))
    if found not in cut.sites:
        cut.sites[found] = {}
        for local in rewrite.find(cut.region, **params):
            cut.sites[found].setdefault(local.step, local)
    local = cut.sites[found].get(site.step)
    if local is None or local.nodes != site.nodes:
        return None
    return unscored_region_change(cost_model, costs, model, cut.region, rewrite.preview(cut.region, local), rows)


@dataclass
class _Cut:
    """A region cut out of a model, and the sites each pass found on it (by pass and parameters)."""

    region: Model | None
    sites: dict = field(default_factory=dict)
