"""The prebuilt vocabulary index gives exactly the rows the per-chunk ``pc.index_in`` lookup gave."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsys.data.encoding import SparseEncoder, VocabIndex, Where
from recsys.data.spec import SparseSpec


def reference_positions(values: pa.Array, vocab: pa.Array) -> np.ndarray:
    """The lookup the encoder used before: a hash table of the vocabulary rebuilt per call."""
    if not len(vocab):
        return np.full(len(values), -1)
    if values.type != vocab.type:
        try:
            values = pc.cast(values, vocab.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values, vocab = pc.cast(values, pa.string()), pc.cast(vocab, pa.string())
    return np.asarray(pc.fill_null(pc.index_in(values, value_set=vocab), -1)).astype(np.int64)


def _random_ints(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(-2**62, 2**62, n, dtype=np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_ids_match_reference(seed):
    rng = np.random.default_rng(seed)
    vocab = np.unique(_random_ints(rng, 5000))
    rng.shuffle(vocab)
    values = np.concatenate([rng.choice(vocab, 20000), _random_ints(rng, 3000), [2**63 - 1, -2**63]])
    rng.shuffle(values)
    got = VocabIndex(pa.array(vocab)).positions(pa.array(values))
    np.testing.assert_array_equal(got, reference_positions(pa.array(values), pa.array(vocab)))
    assert (got >= 0).sum() >= 20000  # the in-vocabulary values were found, at their positions
    np.testing.assert_array_equal(vocab[got[got >= 0]], values[got >= 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_text_ids_nulls_and_casts_match_reference(seed):
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in rng.permutation(4000)], dtype=object)
    vocab = pa.array(words[:3000])
    values = list(rng.choice(words, 10000)) + [None, "", "w"] * 10
    rng.shuffle(values)
    arr = pa.array(values, pa.string())
    np.testing.assert_array_equal(VocabIndex(vocab).positions(arr), reference_positions(arr, vocab))
    # integer text against an integer vocabulary casts to int; text that is no integer compares as text
    ints = pa.array([30, 10, 20])
    for probe in (pa.array(["10", "99", "30"]), pa.array(["10", "x", None]), pa.array([10, None, 20]),
                  pa.array([20, 30], pa.int32())):
        np.testing.assert_array_equal(VocabIndex(ints).positions(probe), reference_positions(probe, ints))
    assert VocabIndex(ints).positions(pa.array(["10", "x", None])).tolist() == [1, -1, -1]
    assert VocabIndex(pa.array([], pa.string())).positions(pa.array(["a"])).tolist() == [-1]


def test_encoder_rows_unchanged_and_index_follows_vocab():
    rng = np.random.default_rng(3)
    enc = SparseEncoder(SparseSpec(name="item"))
    train = pa.array(rng.zipf(1.3, 50000).astype(np.int64) % 100000)
    enc.fit(train, Where("f", 0))
    enc.finalize()
    probe = pa.array(rng.integers(0, 200000, 30000, dtype=np.int64))
    got = enc.transform(probe, Where("f", 0))
    np.testing.assert_array_equal(got, reference_positions(probe, enc.vocab) + 1)
    assert got.min() >= 0 and got.max() < enc.num_embeddings
    # a vocabulary loaded later (resume, scoring) is looked up through its own index, not the old one
    enc.load_state(enc.state(), pa.array([7, 5]))
    assert enc.transform(pa.array([5, 7, 1]), Where("f", 0)).tolist() == [2, 1, 0]


def test_multi_hot_text_rows_unchanged():
    enc = SparseEncoder(SparseSpec(name="tags", multi_hot=True, separator="|"))
    enc.fit(pa.array(["a|b", "b", "c|b|a", None]), Where("f", 0))
    enc.finalize()
    got = enc.transform(pa.array(["b|zz|a", "", "c"]), Where("f", 0))
    assert enc.vocab.to_pylist() == ["b", "a", "c"]
    assert got.values.tolist() == [1, 0, 2, 3] and got.offsets.tolist() == [0, 3, 3, 4]
