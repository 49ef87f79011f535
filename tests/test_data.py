"""Background sources and tokenizers: local files through `datasets`, the synthetic corpus, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config

from smalllm.config import SyntheticCorpusConfig
from smalllm.data.background import SyntheticCorpus
from smalllm.data.shards import build_corpus, open_corpus
from smalllm.data.tokenizer import byte_tokenizer, char_tokenizer


def test_synthetic_corpus_is_deterministic_and_zipfian():
    a = SyntheticCorpus(SyntheticCorpusConfig(num_words=300), seed=0)
    b = SyntheticCorpus(SyntheticCorpusConfig(num_words=300), seed=0)
    assert a.document(7) == b.document(7) != a.document(8)
    words = " ".join(a.documents(0, 400)).lower().replace(".", "").split()
    counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
    assert counts[0] > 20 * counts[len(counts) // 2]  # a heavy head, as a Zipf law gives


def test_simplified_vocabulary_limits_the_lexicon():
    small = SyntheticCorpus(SyntheticCorpusConfig(num_words=40), seed=0)
    words = set(" ".join(small.documents(0, 300)).lower().replace(".", "").split())
    assert len(words) <= 40 + 6 + 7 + 4  # lexicon + determiners, prepositions, conjunctions


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet"])
def test_local_files_become_token_shards(tmp_path, fmt):
    docs = [f"document number {i} says hello to the testbed." for i in range(120)]
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    elif fmt == "txt":
        path.write_text("\n\n".join(docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), path)
    cfg = tiny_config(
        tmp_path / "run",
        "data.background.source=files",
        f"data.background.paths=[{path}]",
        "data.background.holdout_documents=10",
        "data.tokenizer.kind=byte",
    ).data
    corpus = open_corpus(build_corpus(cfg, tmp_path / "built"))
    assert corpus.index["train_documents"] == 110 and corpus.index["holdout_documents"] == 10
    eod = corpus.tokenizer.eos_token_id
    flat = np.concatenate([np.asarray(p) for p in corpus.train.parts])
    assert int((flat == eod).sum()) == 110
    assert corpus.tokenizer.decode(flat[: flat.tolist().index(eod)].tolist()) == docs[10]


def test_byte_and_char_tokenizers_round_trip():
    for tok in (byte_tokenizer(), char_tokenizer()):
        text = "T_CMP 12+34=46 (ok)"
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
        assert tok.eos_token_id == 1 and tok.pad_token_id == 0
