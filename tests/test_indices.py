"""ir/indices.py: random integer inputs stay inside the tables they index."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_tailor.ir import Model, run, seeded_inputs
from onnx_tailor.ir.indices import index_limits
from onnx_tailor.ir.runtime import FALLBACK_INTEGER_LIMIT
from tests.odd_shapes import two_embeddings


def test_each_input_gets_the_rows_of_the_smallest_table_it_reaches():
    model = Model(two_embeddings())
    assert index_limits(model) == {"input_ids": 1000, "token_type_ids": 2}  # input_ids through a Cast
    feeds = seeded_inputs(model)
    assert feeds["token_type_ids"].max() <= 1 and 1 < feeds["input_ids"].max() < 1000
    assert run(model, feeds)["embedded"].shape == (1, 6, 8)


def _int_model(nodes, initializers, inputs) -> Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.INT64, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_smallest_of_several_tables_and_onehot_depth_count():
    shared = _int_model([helper.make_node("Gather", ["big", "ids"], ["a"]),
                         helper.make_node("Gather", ["small", "ids"], ["b"]),
                         helper.make_node("OneHot", ["ids", "depth", "values"], ["c"]),
                         helper.make_node("Sum", ["a", "b", "c"], ["y"])],
                        {"big": np.ones((50, 5), np.float32), "small": np.ones((7, 5), np.float32),
                         "depth": np.array(5, np.int64), "values": np.array([0, 1], np.float32)},
                        {"ids": ["n"]})
    assert index_limits(shared) == {"ids": 5}


def test_an_integer_that_indexes_nothing_gets_the_small_fallback_range():
    counted = _int_model([helper.make_node("Cast", ["mask"], ["y"], to=TensorProto.FLOAT)], {}, {"mask": ["n", 9]})
    assert index_limits(counted) == {}
    values = seeded_inputs(counted)["mask"]
    assert values.min() >= 0 and values.max() < FALLBACK_INTEGER_LIMIT
