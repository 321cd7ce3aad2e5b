"""channel_removal's greedy elimination: the in-place variant keeps the channels the general one keeps."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.passes.channel_removal import _greedy_blocks, _greedy_in_place
from onnx_tailor.passes.least_squares import Moments


def _states(channels: int, consumers: int, dead: int, seed: int) -> list:
    """_greedy's per-consumer state on seeded activations whose first `dead` channels are always zero."""
    rng = np.random.default_rng(seed)
    states = []
    for _ in range(consumers):
        x = rng.standard_normal((400, channels)) * rng.uniform(0.1, 2.0, channels)
        x[:, :dead] = 0.0  # removing a dead channel costs exactly 0: ties, broken by the lowest channel
        m = Moments.of(x, x @ rng.standard_normal((channels, 12)), True)
        gram, cross = m.centred()
        inverse = np.linalg.inv(gram + 1e-3 * np.trace(gram) / channels * np.eye(channels))
        states.append([inverse, inverse @ cross, 1, max(m.yy, 1e-30)])
    return states


@pytest.mark.parametrize("channels, consumers, dead, keep", [(48, 1, 0, 32), (64, 2, 5, 20), (40, 1, 3, 1)])
def test_in_place_elimination_keeps_the_channels_the_general_one_keeps(channels, consumers, dead, keep):
    states = _states(channels, consumers, dead, seed=channels)
    inverses = [np.array(state[0]) for state in states]
    kept = _greedy_in_place(states, channels, keep)
    assert all(np.array_equal(state[0], inverse) for state, inverse in zip(states, inverses))  # not changed
    assert np.array_equal(kept, _greedy_blocks(states, channels, keep))
    assert len(kept) == keep and (dead == 0 or not set(range(min(dead, channels - keep))) & set(kept))
