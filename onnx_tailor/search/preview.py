"""A candidate's preview: its cheap rewrite scored by its change, the same wherever it is computed.

The search's context keeps previews per (model, site) and decides which to
compute; this is the computation itself, a pure function of the model, its
kernel costs, the site and the cost model, so that a worker process gives
the bytes this process gives (the cost model's trees use no threads).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..costmodel.delta import KernelCosts, neighbourhood, predict_change
from ..costmodel.regressor import CostModel
from ..ir import Model
from ..passes import Site, get_pass


@dataclass(frozen=True)
class Preview:
    """A candidate's predicted change, valid on every model whose region around `footprint` is unchanged."""

    delta_s: float  # predicted latency change against the model it was previewed on
    site_nodes: frozenset[str]
    footprint: frozenset[str]  # the nodes of the kernels it changes, and their neighbours


def preview(cost_model: CostModel, model: Model, costs: KernelCosts, site: Site) -> Preview:
    """Build `site`'s cheap rewrite of `model` and score its change against `model`'s kernels."""
    change = predict_change(cost_model, costs, get_pass(site.pass_name).preview(model, site))
    footprint = neighbourhood(model, change.removed | site.nodes) | change.added
    return Preview(change.latency_s - costs.latency_s, site.nodes, footprint)
