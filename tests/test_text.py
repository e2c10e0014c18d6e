"""Item text -> PLM vectors: encoding, alignment, cache, word drop, and the one-line errors."""
import random
import shutil

import pytest
import torch

from recbole_transfer.config import Config
from recbole_transfer.data import text
from recbole_transfer.data.dataset import TextSequentialDataset

from conftest import DATASET_DIR, FAST


@pytest.fixture(scope="module")
def plm():
    return text.load_plm(text.DEFAULT_PLM)


@pytest.fixture(scope="module")
def sample_texts():
    item_text = text.read_item_text(str(DATASET_DIR / "Scientific" / "Scientific.text"))
    return list(item_text.items())[:48]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_cache"))


def test_encode_shape_and_input_order(plm, sample_texts):
    texts = [t for _, t in sample_texts]
    vectors = text.encode_texts(texts, *plm, show_progress=False)
    assert vectors.shape == (len(texts), 384)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    shuffled = text.encode_texts([texts[i] for i in order], *plm, show_progress=False)
    assert torch.allclose(shuffled, vectors[order], atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bucketed_batches_equal_one_by_one(plm, sample_texts, pooling):
    tokenizer, model = plm
    texts = [t for _, t in sample_texts[:6]] + [""]
    fast = text.encode_texts(texts, tokenizer, model, pooling=pooling, token_budget=256, show_progress=False)
    with torch.no_grad():
        for row, t in enumerate(texts):
            enc = tokenizer(t, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state
            expected = hidden[0, 0] if pooling == "cls" else hidden[0].mean(0)
            assert torch.allclose(fast[row], expected, atol=1e-4)


def test_token_budget_batches_respect_budget():
    lengths = [5, 40, 3, 17, 17, 60, 2, 9]
    batches = text.token_budget_batches(lengths, token_budget=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64


def test_matrix_alignment_padding_and_cache(sample_texts, cache_dir, monkeypatch):
    item_text = dict(sample_texts[:12])
    tokens = ["[PAD]"] + list(reversed(list(item_text)))
    aligned = text.align_item_text(item_text, tokens)
    matrix = text.item_text_matrix("Sci", aligned, cache_dir=cache_dir, show_progress=False)
    assert matrix.shape == (13, 384) and torch.count_nonzero(matrix[0]) == 0
    tokenizer, model = text.load_plm(text.DEFAULT_PLM)
    direct = text.encode_texts([item_text[t] for t in tokens[1:]], tokenizer, model, show_progress=False)
    assert torch.allclose(matrix[1:], direct, atol=1e-5)

    def no_plm(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded on a cache hit")

    monkeypatch.setattr(text, "load_plm", no_plm)
    again = text.item_text_matrix("Sci", aligned, cache_dir=cache_dir, show_progress=False)
    assert torch.equal(again, matrix)
    # any change of content or settings is a new key
    key = text.cache_key("Sci", aligned, text.DEFAULT_PLM, "cls", 256, 0.0, 2020)
    assert key != text.cache_key("Sci", aligned, text.DEFAULT_PLM, "mean", 256, 0.0, 2020)
    assert key != text.cache_key("Sci", aligned[:-1] + [aligned[-1] + "!"], text.DEFAULT_PLM, "cls", 256, 0.0, 2020)
    assert key != text.cache_key("Sci", aligned, text.DEFAULT_PLM, "cls", 64, 0.0, 2020)
    assert key != text.cache_key("Sci", aligned, text.DEFAULT_PLM, "cls", 256, 0.2, 2020)


def test_word_drop():
    sentence = " ".join(f"w{i}" for i in range(1000))
    first = text.word_drop(sentence, 0.3, random.Random(7))
    assert first == text.word_drop(sentence, 0.3, random.Random(7))
    assert 620 < len(first.split()) < 780
    assert len(text.word_drop("one two", 1.0, random.Random(1)).split()) == 1
    assert text.word_drop("", 0.5, random.Random(1)) == ""


def test_word_drop_variant_differs_and_is_cached_separately(sample_texts, cache_dir):
    aligned = [""] + [t for _, t in sample_texts[:8]]
    plain = text.item_text_matrix("Sci", aligned, cache_dir=cache_dir, show_progress=False)
    dropped = text.item_text_matrix("Sci", aligned, cache_dir=cache_dir, word_drop_ratio=0.5, show_progress=False)
    assert plain.shape == dropped.shape and not torch.allclose(plain, dropped)


# --- errors -----------------------------------------------------------------------------------------------------
def test_missing_text_file(tmp_path):
    path = str(tmp_path / "X.text")
    with pytest.raises(text.ItemTextError) as err:
        text.read_item_text(path)
    assert str(err.value) == (f"item text file {path} not found: this model needs item text; "
                              "run python -m recbole_transfer.data.prepare or add the file")


@pytest.mark.parametrize(
    "content, message",
    [
        ("item\ttext\nA\tx\n", "header must be 'item_id:token\ttext:token_seq', got 'item\ttext'"),
        ("item_id:token\ttext:token_seq\nA\tx\ty\n", ":2: expected 2 tab-separated columns, got 3"),
        ("item_id:token\ttext:token_seq\nA\tx\nA\ty\n", ":3: item A appears twice"),
    ],
)
def test_malformed_text_file(tmp_path, content, message):
    path = tmp_path / "X.text"
    path.write_text(content)
    with pytest.raises(text.ItemTextError) as err:
        text.read_item_text(str(path))
    assert str(err.value) == f"{path}{'' if message.startswith(':') else ': '}{message}"


def test_alignment_errors():
    with pytest.raises(text.ItemTextError, match=r"^1 items of the dataset have no text in X.text, e.g. B$"):
        text.align_item_text({"A": "a"}, ["[PAD]", "A", "B"], source="X.text")
    with pytest.raises(text.ItemTextError, match=r"^1 rows of X.text name items that are not in the dataset, e.g. Z$"):
        text.align_item_text({"A": "a", "Z": "z"}, ["[PAD]", "A"], source="X.text")
    # an item filtered out by RecBole is still known
    assert text.align_item_text({"A": "a", "Z": "z"}, ["[PAD]", "A"], known_tokens={"A", "Z"}) == ["", "a"]


def test_unknown_pooling(plm):
    with pytest.raises(text.ItemTextError, match=r"^unknown plm_pooling 'max': use one of cls, mean$"):
        text.encode_texts(["a"], *plm, pooling="max")


def test_unloadable_plm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(text.ItemTextError) as err:
        text.load_plm("/nonexistent/model")
    message = str(err.value)
    assert message.startswith("cannot load plm_name=/nonexistent/model offline")
    assert message.endswith("pass plm_name=/path/to/local/folder (a transformers save_pretrained folder)")


# --- the dataset class ------------------------------------------------------------------------------------------
def _text_config(root, cache_dir):
    return Config("SASRec", "Scientific", config_dict=dict(FAST, data_path=str(root), text_cache_dir=cache_dir))


def test_dataset_matrix_aligned_with_item_ids(tiny_root, cache_dir, plm):
    dataset = TextSequentialDataset(_text_config(tiny_root, cache_dir))
    tokens = dataset.field2id_token["item_id"]
    assert dataset.plm_embedding.shape == (dataset.item_num, 384) and len(tokens) == dataset.item_num
    assert torch.count_nonzero(dataset.plm_embedding[0]) == 0
    item_text = text.read_item_text(str(tiny_root / "Scientific" / "Scientific.text"))
    picks = [1, len(tokens) // 2, len(tokens) - 1]
    expected = text.encode_texts([item_text[tokens[i]] for i in picks], *plm, show_progress=False)
    assert torch.allclose(dataset.plm_embedding[picks], expected, atol=1e-5)


def test_dataset_rejects_text_row_for_unknown_item(tiny_root, tmp_path, cache_dir):
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "Scientific", root / "Scientific")
    with open(root / "Scientific" / "Scientific.text", "a", encoding="utf-8") as f:
        f.write("B0NOTANITEM\tsome text\n")
    with pytest.raises(text.ItemTextError,
                       match=r"^1 rows of Scientific.text name items that are not in the dataset, e.g. B0NOTANITEM$"):
        TextSequentialDataset(_text_config(root, cache_dir))


def test_dataset_rejects_item_without_text(tiny_root, tmp_path, cache_dir):
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "Scientific", root / "Scientific")
    path = root / "Scientific" / "Scientific.text"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8")
    dropped = lines[-1].split("\t")[0]
    with pytest.raises(text.ItemTextError,
                       match=rf"^1 items of the dataset have no text in Scientific.text, e.g. {dropped}$"):
        TextSequentialDataset(_text_config(root, cache_dir))
