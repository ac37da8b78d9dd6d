"""Meaning as a vector: a headline and lead mapped to a unit vector, so that two reports of one
event written in different words land close together.

The model is WordLlama's ``l2_supercat`` static token embeddings (256 dimensions), which the
``wordllama`` wheel ships with its tokenizer. A static model is a table lookup and an average:
no neural network runs per item, so embedding costs about as much as tokenizing. The files are
read straight from the installed package; nothing here can reach the network (WordLlama's own
loader can fall back to a download, and importing it configures the root logger, so neither
is used). ``Embedder.load`` raises ``ModelError`` with one line when the package is missing.

The table (32,000 tokens x 256 half-precision floats) is memory-mapped read-only from the
wheel's safetensors file, not read and widened to float32: a process holds only the pages of
tokens it has met, shared with every other process on the machine through the page cache,
and widens the hundred-odd rows one text uses. Each parse worker would otherwise hold its own
float32 copy of the whole table (and briefly the half-precision one beside it).

Vectors are stored quantised to signed bytes (``quantise``): 256 bytes per item, and a cosine
computed from the bytes differs from the float one by well under the margins the story
decision works with (the rounding error of each component is at most 1/254 of the largest).
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator import wordpieces
from aggregator.errors import AggregatorError
from aggregator.wordpieces import SPACE, WordPieces

MODEL_PACKAGE = "wordllama"
WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"
TENSOR = "embedding.weight"
DIMENSIONS = 256

MAX_TOKENS = 160
"""Tokens of headline + lead that are averaged: the lead's first sentences carry the event; the
rest of a long text would only pull every vector towards the average news article."""

READ_CHARS = 1500
"""Characters of text given to the tokenizer (more than ``MAX_TOKENS`` need in any prose)."""

Vector = npt.NDArray[np.float32]
SAFETENSORS_DTYPES = {"F16": "<f2", "F32": "<f4"}

HALF_TO_SINGLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
"""Every half-precision value (indexed by its bits) as the single-precision one ``astype`` gives:
numpy widens half floats one at a time in software, and a lookup in this 256 KB table is cheaper."""


class ModelError(AggregatorError):
    """The embedding model could not be loaded (package missing or its files damaged)."""


class Embedder:
    """The loaded model: ``embed(title, text)`` gives a unit vector (or zeros for no words)."""

    def __init__(self, table: npt.NDArray[np.floating[Any]], tokenizer: Any) -> None:
        self._table = table
        self._rows = table.view(np.ndarray)  # the same memory: a memmap's slices cost a Python hook each
        self._tokenizer = tokenizer
        self._pieces = WordPieces.of(tokenizer)
        self._bare = tokenizer.token_to_id(SPACE)  # a word start standing alone
        self._widen = HALF_TO_SINGLE if table.dtype == np.float16 else None

    def words_remembered(self) -> tuple[int, int]:
        """Words whose ids its word-by-word tokenizing keeps, and the most it keeps."""
        return self._pieces.remembered() if self._pieces is not None else (0, wordpieces.WORDS_REMEMBERED)

    @classmethod
    def load(cls) -> Embedder:
        """Read the weights and tokenizer from the installed ``wordllama`` package's files."""
        spec = importlib.util.find_spec(MODEL_PACKAGE)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"story matching needs the {MODEL_PACKAGE!r} package: pip install {MODEL_PACKAGE}")
        root = Path(next(iter(spec.submodule_search_locations)))
        try:
            from tokenizers import Tokenizer

            table = map_tensor(root / WEIGHTS_FILE, TENSOR)
            tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))
        except (OSError, KeyError, ImportError, ValueError, RuntimeError, Exception) as exc:
            raise ModelError(f"cannot load the embedding model from {root}: {type(exc).__name__}: {exc}") from None
        if table.ndim != 2 or table.shape[1] != DIMENSIONS:
            raise ModelError(f"embedding model in {root} has shape {table.shape}, expected (*, {DIMENSIONS})")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(table, tokenizer)

    def ids(self, title: str, text: str) -> list[int]:
        """The ids of the tokens that are averaged: the first ``MAX_TOKENS`` of the headline and
        the start of the text."""
        joined = f"{title}\n{text[:READ_CHARS]}"
        if self._pieces is None:
            ids: list[int] = self._tokenizer.encode(joined, add_special_tokens=False).ids[:MAX_TOKENS]
            return ids
        return self._pieces.first(joined, MAX_TOKENS)

    def embed(self, title: str, text: str) -> Vector:
        ids = self.ids(title, text)
        if not ids:
            return np.zeros(DIMENSIONS, dtype=np.float32)
        rows = self._rows.take(ids, axis=0, mode="clip")  # an id past the table reads its last row
        if self._widen is not None:
            rows = self._widen.take(rows.view(np.uint16))
        # rows.mean(axis=0), without its Python layer: the same sum, divided by the count as an intp.
        vector: Vector = np.add.reduce(rows.astype(np.float32, copy=False), axis=0)
        np.true_divide(vector, np.intp(len(ids)), out=vector, casting="unsafe")
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def pieces(self, words: list[str]) -> list[int]:
        """How many tokens each word (as it would stand mid-sentence) splits into. The
        tokenizer's vocabulary holds the words its training text used most as single tokens,
        so a word that needs several pieces is a rare one: a free estimate of how common a
        word is in the language, from files the model already ships. Through ``WordPieces``
        where it applies (each word's ids are remembered there, for ``embed`` as well). A bare
        word start (a token of its own before an unusual word) is not a piece."""
        if self._pieces is not None:
            return [sum(1 for i in self._pieces.first(word, len(word) + 1) if i != self._bare) for word in words]
        encoded = self._tokenizer.encode_batch(words, add_special_tokens=False) if words else []
        return [sum(1 for i in e.ids if i != self._bare) for e in encoded]


def map_tensor(path: Path, name: str) -> npt.NDArray[np.floating[Any]]:
    """Tensor ``name`` of a safetensors file as a read-only memory map (no copy is made).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    dtype, shape and byte range after the header, then the data: simple enough to map
    directly, which ``safetensors.numpy`` (it returns copies) does not do. ValueError or
    KeyError for a file that is not what it claims to be.
    """
    with path.open("rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
    entry = header[name]
    start, end = (int(offset) for offset in entry["data_offsets"])
    shape = tuple(int(n) for n in entry["shape"])
    dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
    if end - start != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name!r} has {end - start} bytes for shape {shape} of {entry['dtype']}")
    table: npt.NDArray[np.floating[Any]] = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + start, shape=shape)
    return table


_loaded: Embedder | None = None
_lock = threading.Lock()


def embedder() -> Embedder:
    """The process's model, loaded on first use (a parse worker pays it once)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = Embedder.load()
        return _loaded


def words_remembered() -> tuple[int, int]:
    """Words whose token ids this process keeps (``wordpieces.WORDS_REMEMBERED``), and the most
    it keeps; none while the model is not loaded. For ``bench/soak.py``'s report of caches."""
    return _loaded.words_remembered() if _loaded is not None else (0, wordpieces.WORDS_REMEMBERED)


def quantise(vector: Vector) -> bytes:
    """A unit vector as ``DIMENSIONS`` signed bytes, scaled so its largest component is ±127."""
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    if peak == 0.0:
        return bytes(DIMENSIONS)
    scaled: Vector = np.rint(vector * (127.0 / peak))  # half to even, as np.round, without its dispatch
    return scaled.astype(np.int8).tobytes()


def dequantise_all(stored: Iterable[bytes | memoryview]) -> npt.NDArray[np.float32]:
    """``dequantise`` of several vectors at once, one row each, in one pass rather than one
    per vector (a story's members, when its profile sums them). The same floats to the bit:
    the squared length of integer components below 2**24 is exact in float32 whatever the
    order it is summed in, and each row is divided as ``dequantise`` divides it."""
    rows = np.frombuffer(b"".join(stored), dtype=np.int8).reshape(-1, DIMENSIONS).astype(np.float32)
    squares: list[float] = np.einsum("ij,ij->i", rows, rows).tolist()
    rows /= np.array([math.sqrt(square) or 1.0 for square in squares], dtype=np.float32)[:, None]  # zeros stay zeros
    return rows


def dequantise(stored: bytes) -> Vector:
    """Back from ``quantise``: a unit vector (zeros stay zeros)."""
    vector = np.frombuffer(stored, dtype=np.int8).astype(np.float32)
    norm = math.sqrt(float(np.dot(vector, vector)))
    return vector / np.float32(norm) if norm > 0 else vector
