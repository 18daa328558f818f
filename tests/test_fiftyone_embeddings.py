"""A run made with --embeddings in FiftyOne: each sample's embedding is the run's, and the
similarity index built from them sorts as cosine similarity does (real FiftyOne, MongoDB and
fiftyone-brain; skipped without the extra, as tests/test_fiftyone.py)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import test_fiftyone
from test_embeddings_pipeline import EmbeddingSegmenter
from test_fiftyone import labelled, unique
from test_pipeline_local import make_dataset

from jobs import fiftyone as fiftyone_job
from pipeline.reading import fiftyone_dataset as fod

fo = test_fiftyone.fo  # the same fixture: this module's own MongoDB, stopped at its end


@pytest.mark.fiftyone
def test_embeddings_load_and_the_similarity_index_sorts_by_cosine(fo, tmp_path, capsys):
    pytest.importorskip("fiftyone.brain", reason="needs fiftyone-brain (the fiftyone extra)")
    root = make_dataset(tmp_path, count=6, broken=(2,))
    out = labelled(root, segmenter=EmbeddingSegmenter(), embeddings=True)
    name = unique("embeddings")
    assert fiftyone_job.main([str(out), "--name", name]) == 0
    assert f"similarity index {fod.SIMILARITY_KEY!r} over 5 embeddings" in capsys.readouterr().out
    dataset = fo.load_dataset(name)
    table = pq.read_table(out / "embeddings").to_pylist()
    run_vectors = {r["image_id"]: np.asarray(r["embedding"], np.float32) for r in table}
    samples = {s.image_id: s for s in dataset}
    assert set(samples) == set(run_vectors) == {"im0", "im1", "img/3", "im4", "im5"}
    for image_id, sample in samples.items():
        np.testing.assert_array_equal(sample.embedding, run_vectors[image_id])
    assert dataset.info["similarity_brain_key"] == fod.SIMILARITY_KEY
    assert fod.SIMILARITY_KEY in dataset.list_brain_runs()
    # What the App's "sort by similarity" does: the index, queried by a sample, ranks the
    # others by the cosine of the run's own vectors (nothing recomputed: no model here).
    index = dataset.load_brain_results(fod.SIMILARITY_KEY)
    query = samples["im0"]
    view = dataset.sort_by_similarity(query.id, brain_key=index.key, dist_field="distance")
    ranked = [(s.image_id, s.distance) for s in view]
    # fiftyone-brain's sklearn backend centres the vectors (subtracts their mean) first.
    ids = list(run_vectors)
    centred = np.stack([run_vectors[i] for i in ids]).astype(np.float64)
    centred -= centred.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    distance = dict(zip(ids, 1.0 - centred @ centred[ids.index("im0")], strict=True))
    assert [i for i, _ in ranked] == sorted(ids, key=distance.__getitem__)
    assert dict(ranked) == pytest.approx(distance, abs=1e-5)


@pytest.mark.fiftyone
def test_a_run_without_embeddings_has_no_field_and_no_index(fo, tmp_path):
    root = make_dataset(tmp_path, count=3)
    out = labelled(root, segmenter=EmbeddingSegmenter())
    name = unique("plain")
    summary = fod.load_run(str(out), name)
    assert (summary.embeddings, summary.similarity) == (0, None)
    dataset = fo.load_dataset(name)
    assert "embedding" not in dataset.get_field_schema()
    assert dataset.list_brain_runs() == []
