"""jobs.search: exact top-k over shards against brute force, --where filters, the page."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from curation_fixtures import brightness_images, label_images, unit_rows, write_embeddings

import jobs.search
from pipeline.curation import open_embeddings, parse_where, top_k
from pipeline.curation.queries import text_query
from pipeline.errors import InputError

D = 24
N = 14  # 4 shards of 4, 4, 4, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A labelled run of N bright/dark images with random embeddings (one float16 shard),
    its images and embeddings."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("search")
    images = brightness_images(rng, N)
    ids = np.array([f"im{i:03d}" for i in range(N)], dtype=object)
    out = label_images(root, images, list(ids))
    vectors = unit_rows(rng, N, D)
    vectors[9] = vectors[2]  # an exact tie across shards: run order breaks it
    write_embeddings(out, vectors, ids, float16_shards=(1,))
    stored = vectors.copy()
    stored[4:8] = vectors[4:8].astype(np.float16).astype(np.float32)
    return out, images, ids, stored


def brute_force(vectors, query, ids, passed=None):
    """Ids and scores of every image, best first (ties: run order), by a full sort."""
    scores = vectors.astype(np.float64) @ (query / np.linalg.norm(query))
    order = np.lexsort((np.arange(len(scores)), -scores))
    if passed is not None:
        order = order[passed[order]]
    return [ids[i] for i in order], scores[order]


def test_top_k_equals_a_full_sort_across_shards(run):
    out, _, ids, vectors = run
    assert open_embeddings(str(out)).total == N and open_embeddings(str(out)).dimension == D
    rng = np.random.default_rng(1)
    for query in [rng.normal(size=D), vectors[2] * 3.0]:  # the second ties rows 2 and 9
        expected_ids, expected_scores = brute_force(vectors, query, ids)
        for k in (1, 3, 5, N, N + 10):
            hits = top_k(str(out), query, k)
            assert [h.image_id for h in hits] == expected_ids[:k]
            np.testing.assert_allclose([h.score for h in hits], expected_scores[:k], atol=1e-5)
    hits = top_k(str(out), vectors[2], 2)
    assert [h.image_id for h in hits] == ["im002", "im009"]  # tied: earlier shard first
    assert (hits[0].shard, hits[0].row, hits[1].shard, hits[1].row) == (0, 2, 2, 1)


def pixel_shares(images):
    """Per image, its bright share and mean confidence as the fake segmenter decides them."""
    shares, confidences = [], []
    for image in images:
        m = image.astype(np.float32).mean(axis=2)
        shares.append(float((m > 127).mean()))
        confidences.append(float((0.5 + np.abs(m - 127.5) / 255).mean()))
    return np.array(shares), np.array(confidences)


def test_where_filters_on_the_summary_table(run):
    out, images, ids, vectors = run
    shares, confidences = pixel_shares(images)
    query = np.random.default_rng(2).normal(size=D)
    middle = float(np.median(confidences))
    cases = {
        "bright>0.5": shares > 0.5,
        "dark >= 0.3 AND bright<0.6": ((1 - shares) >= 0.3 - 1e-9) & (shares < 0.6),
        f"mean_confidence>{middle!r}": confidences > middle,
    }
    for text, passed in cases.items():
        assert 0 < passed.sum() < N, text  # each filter keeps some images, not all
        clauses = parse_where([text], ["dark", "bright"])
        expected_ids, _ = brute_force(vectors, query, ids, passed)
        assert [h.image_id for h in top_k(str(out), query, N, clauses)] == expected_ids, text
        assert [h.image_id for h in top_k(str(out), query, 2, clauses)] == expected_ids[:2]
    both = parse_where(["bright>0.5", f"mean_confidence<={middle!r}"], ["dark", "bright"])
    expected_ids, _ = brute_force(vectors, query, ids, (shares > 0.5) & (confidences <= middle))
    assert [h.image_id for h in top_k(str(out), query, N, both)] == expected_ids


@pytest.mark.parametrize("text", ["car>0.1", "bright>", "bright ~ 0.1", "import os"])
def test_bad_filters_are_refused_with_the_syntax(text):
    with pytest.raises(InputError, match="NAME OP NUMBER"):
        parse_where([text], ["dark", "bright"])


class _QueryText:
    """A stand-in for the run's model: ``embed_names`` returns a fixed query."""

    def __init__(self, query):
        self.query = query
        self.texts = []

    def embed_names(self, names):
        self.texts += names
        return torch.tensor(self.query, dtype=torch.float32)[None]


def test_the_job_prints_the_hits_and_writes_their_page(run, monkeypatch, capsys):
    out, images, ids, vectors = run
    shares, _ = pixel_shares(images)
    fake = type("FakeSegmenter", (), {})()
    fake.text = _QueryText(vectors[5])
    monkeypatch.setattr(jobs.search, "run_segmenter", lambda output: fake)
    argv = [str(out), "a bright scene", "--top", "3", "--where", "bright>0.2"]
    assert jobs.search.main(argv) == 0
    assert fake.text.texts == ["a bright scene"]
    expected_ids, _ = brute_force(vectors, vectors[5], ids, shares > 0.2)
    printed = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[:3]]
    assert printed == expected_ids[:3]
    [page] = (out / "search").iterdir()
    assert page.name.startswith("a-bright-scene-") and page.suffix == ".html"
    text = page.read_text()
    shown = re.findall(r"#\d+ <b>([^<]+)</b>", text)
    assert shown == expected_ids[:3]
    # every hit with a labelled pixel is drawn (image | overlay | legend) inline
    assert text.count('src="data:image/') == 3 and "bright &gt; 0.2" not in text
    assert "bright&gt;0.2" in text


def test_the_job_refuses_bad_input_with_exit_2(run, tmp_path, monkeypatch, capsys):
    out, *_ = run
    monkeypatch.setattr(jobs.search, "run_segmenter", lambda output: pytest.fail("no model"))
    assert jobs.search.main([str(out), "x", "--where", "car>0.1"]) == 2
    assert "neither mean_confidence nor a class" in capsys.readouterr().err
    plain = label_images(tmp_path, brightness_images(np.random.default_rng(0), 3))
    monkeypatch.setattr(jobs.search, "run_segmenter", lambda output: None)
    monkeypatch.setattr(jobs.search, "text_query", lambda seg, text: np.ones(D))
    assert jobs.search.main([str(plain), "x"]) == 2
    assert "--embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        jobs.search.main([str(out)])  # neither text nor image


def test_text_query_is_the_template_ensemble_of_the_model():
    """A text is embedded as a vocabulary name is: every template, normalised, averaged,
    normalised again; checked against open_clip's encode_text directly."""
    import gclip

    segmenter = gclip.load_segmenter("demo")
    templates = ["a photo of a {}.", "a {}."]  # what the demo checkpoint ships
    model = segmenter.text._model
    tokens = segmenter.text._tokenizer([t.format("red circle") for t in templates])
    with torch.no_grad():
        per_template = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
    expected = torch.nn.functional.normalize(per_template.mean(0), dim=-1).numpy()
    np.testing.assert_allclose(text_query(segmenter, " red circle "), expected, atol=1e-6)
    with pytest.raises(InputError):
        text_query(segmenter, "  ")
