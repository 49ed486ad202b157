"""Report cleaning as the official loader does it, and the local tokenizer."""

from __future__ import annotations

import pytest
import torch

from pipeline.ctclip.text import TokenizerError, clean_report, load_tokenizer, report_text, tokenize
from tests.helpers.ctclip import tiny_model, write_vocab


def test_clean_report_deletes_quotes_and_parentheses_only():
    assert clean_report('The "left" lung (upper lobe) isn\'t clear.') == "The left lung upper lobe isnt clear."


def test_report_text_joins_like_the_official_loader():
    assert report_text("Findings here.", "Impression (mild).") == "Findings here.Impression mild."
    assert report_text("Not given.", "Only impressions.") == "Only impressions."
    assert report_text("Only findings.", None) == "Only findings."
    assert report_text(float("nan"), "x") == "x"


def test_tokenizer_from_a_local_folder(tmp_path):
    tok = load_tokenizer(write_vocab(tmp_path / "tok"))
    ids, mask = tokenize(tok, ["Lung nodule is present.", "the heart"], max_length=10)
    # [CLS]=2, lung=10, nodule=11, is=6, present=8, .=17, [SEP]=3 (lower-cased WordPiece)
    assert ids[0].tolist() == [2, 10, 11, 6, 8, 17, 3]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    ids, mask = tokenize(tok, ["the heart"], max_length=10, pad_to_max_length=True)
    assert ids.shape == (1, 10) and mask.sum() == 4


def test_padding_to_the_longest_text_gives_the_official_latents(tmp_path):
    model = tiny_model(seed=4)
    tok = load_tokenizer(write_vocab(tmp_path / "tok"))
    texts = ["Lung nodule is present.", "the heart size is normal."]
    short = model.encode_text(*tokenize(tok, texts, max_length=64))
    full = model.encode_text(*tokenize(tok, texts, max_length=64, pad_to_max_length=True))
    assert torch.allclose(short, full, atol=1e-6)


def test_tokenizer_folder_without_vocab_is_named(tmp_path):
    with pytest.raises(TokenizerError, match="no vocab.txt"):
        load_tokenizer(tmp_path)


def test_a_vocabulary_without_bert_tokens_or_too_big_for_the_model_is_named(tmp_path):
    folder = write_vocab(tmp_path / "tok")
    assert len(load_tokenizer(folder, vocab_size=64)) >= 5
    (folder / "vocab.txt").write_text("")  # e.g. an interrupted download
    with pytest.raises(TokenizerError, match=r"vocab.txt: not a BERT vocabulary \(0 lines, no \[PAD\] \[UNK\]"):
        load_tokenizer(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\nlung\n")  # BertTokenizer would append [UNK] as id 4
    with pytest.raises(TokenizerError, match=r"4 lines, no \[UNK\]\)"):
        load_tokenizer(folder)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(70)]))
    with pytest.raises(TokenizerError, match="74 tokens, but the model's text encoder has 64"):
        load_tokenizer(folder, vocab_size=64)


def test_split_sentences_keeps_the_official_join_apart():
    from pipeline.ctclip.text import split_sentences

    text = report_text("Heart is enlarged. No effusion.", "Cardiomegaly.")
    assert split_sentences(text) == ["Heart is enlarged.", "No effusion.", "Cardiomegaly."]
    assert split_sentences("no end") == ["no end"]


def test_sentence_mean_pooling_is_the_normalised_mean_of_sentence_latents(tmp_path):
    import torch
    import torch.nn.functional as F

    from pipeline.ctclip.model import CTCLIP
    from pipeline.ctclip.text import encode_texts
    from schemas.ctclip import CTCLIPConfig

    tok = load_tokenizer(write_vocab(tmp_path))
    base = CTCLIP("tiny").cfg.model_dump(mode="json")
    texts = ["There is no effusion. The heart size is normal.", "Lung nodule."]
    torch.manual_seed(0)
    cls_model = CTCLIP("tiny")
    assert torch.equal(encode_texts(cls_model, tok, texts), cls_model.encode_text(*tokenize(tok, texts)))
    base["text"]["pooling"] = "sentence_mean"
    model = CTCLIP(CTCLIPConfig.model_validate(base))
    model.load_state_dict(cls_model.state_dict())  # same weights: pooling is not a weight
    got = encode_texts(model, tok, texts)
    parts = model.encode_text(*tokenize(tok, ["There is no effusion.", "The heart size is normal."]))
    assert torch.allclose(got[0], F.normalize(parts.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(got[1], model.encode_text(*tokenize(tok, ["Lung nodule."]))[0], atol=1e-6)
