"""--embeddings through a run in process: embeddings/ beside the labels, one row per labelled
image, the same after a crash and resume, refused as a settings change on resume."""

from __future__ import annotations

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fakes import BrightnessSegmenter
from PIL import Image
from test_pipeline_local import assert_same_outputs, config_for, make_dataset

import gclip
import schemas
from gclip import InferenceConfig
from gclip.catalog import local_dir
from pipeline import ConfigChangedError, LocalBackend, run_labelling
from pipeline.config import labelling_fingerprint
from pipeline.formats.layout import embedding_table_path, shard_path


class EmbeddingSegmenter(BrightnessSegmenter):
    """The brightness labels, and as embedding the unit vector of an image's mean R, G, B,
    255 and its height (an image ``fail_embedding_width`` wide fails to embed)."""

    def __init__(self, fail_embedding_width=None, **kw):
        super().__init__(**kw)
        self.fail_embedding_width = fail_embedding_width
        self.embedded = 0

    def image_embeddings(self, images):
        rows = []
        for image in images:
            if image.shape[1] == self.fail_embedding_width:
                raise ValueError(f"cannot embed width {image.shape[1]}")
            rows.append([*image.reshape(-1, 3).mean(axis=0), 255.0, float(image.shape[0])])
        self.embedded += len(images)
        vectors = np.asarray(rows, np.float32).reshape(-1, 5)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def expected_vector(path):
    image = np.asarray(Image.open(path).convert("RGB"))
    vector = np.asarray([*image.reshape(-1, 3).mean(axis=0), 255.0, image.shape[0]], np.float32)
    return vector / np.linalg.norm(vector)


def embeddings_of(out):
    """image_id -> embedding of the whole embeddings/ dataset (one table of all shards)."""
    table = pq.read_table(out / "embeddings")
    return dict(zip(table["image_id"].to_pylist(), table["embedding"].to_pylist(), strict=True))


def test_a_demo_run_embeds_every_labelled_image_as_open_clip_does(tmp_path):
    """The real demo model in process; a broken image has no row; every row validates."""
    root = make_dataset(tmp_path, broken=(5,))
    small = InferenceConfig(short_side=32, crop=32, stride=32)  # the labels are not under test
    config = config_for(root, model=gclip.DEMO_MODEL, embeddings=True, inference=small)
    summary = run_labelling(config, LocalBackend())
    assert summary.ok and summary.images_labelled == 6 and summary.images_failed == 1
    out = root / "out"
    for index in range(3):
        table = pq.read_table(out / embedding_table_path(index))
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
        assert table.schema.field("image_id").type == pa.string()
        for row in table.to_pylist():
            schemas.validate(row, "embedding_row")
    annotated = set(pq.read_table(out / "annotations")["image_id"].to_pylist())
    vectors = embeddings_of(out)
    assert set(vectors) == annotated and len(vectors) == 6 and "im5" not in vectors
    # Independently: open_clip's own model and eval transform on the image files.
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{local_dir(gclip.DEMO_MODEL)}"
    )
    model.eval()
    for i in (0, 1, 2, 3, 4, 6):
        image_id = f"img/{i}" if i == 3 else f"im{i}"
        with torch.no_grad():
            pixels = preprocess(Image.open(root / "img" / f"{i}.png").convert("RGB"))
            expected = model.encode_image(pixels.unsqueeze(0), normalize=True)[0].numpy()
        np.testing.assert_allclose(vectors[image_id], expected, atol=2e-6)


def test_embeddings_are_written_before_the_marker_and_resume_equals_a_clean_run(tmp_path):
    root = make_dataset(tmp_path, broken=(5,))
    clean = root / "clean"
    run_labelling(
        config_for(root, embeddings=True, output=str(clean)), LocalBackend(EmbeddingSegmenter())
    )
    vectors = embeddings_of(clean)
    for i in (0, 1, 2, 3, 4, 6):
        image_id = f"img/{i}" if i == 3 else f"im{i}"
        np.testing.assert_allclose(
            vectors[image_id], expected_vector(root / "img" / f"{i}.png"), atol=1e-6
        )
    assert list(vectors) == ["im0", "im1", "im2", "img/3", "im4", "im6"]  # manifest order

    config = config_for(root, embeddings=True)
    run_labelling(config, LocalBackend(EmbeddingSegmenter()))
    out = root / "out"
    # kill -9 of shard 1's worker between its embeddings and its marker; of shard 2's before
    # it wrote anything (each file is written atomically: whole or absent).
    (out / shard_path(1)).unlink()
    (out / shard_path(2)).unlink()
    (out / embedding_table_path(2)).unlink()
    (out / "annotations.json").unlink()
    again = EmbeddingSegmenter()
    run_labelling(config, LocalBackend(again))
    assert again.embedded == 3  # shards 1 and 2 only (im5 is broken)
    assert_same_outputs(out, clean)
    assert pq.read_table(out / "embeddings").equals(pq.read_table(clean / "embeddings"))


def test_the_flag_is_fingerprinted_and_adding_it_on_resume_is_refused(tmp_path):
    root = make_dataset(tmp_path)
    plain, embedded = config_for(root), config_for(root, embeddings=True)
    prints = {
        labelling_fingerprint(c.labelling, c.labelling.method, None, "v")
        for c in (plain, embedded, config_for(root, embeddings=True, embedding_dtype="float16"))
    }
    assert len(prints) == 3
    run_labelling(plain, LocalBackend(EmbeddingSegmenter()))
    assert not (root / "out" / "embeddings").exists()
    with pytest.raises(ConfigChangedError, match="embeddings: false -> true"):
        run_labelling(embedded, LocalBackend(EmbeddingSegmenter()))


def test_float16_vectors_and_an_image_that_fails_to_embed(tmp_path):
    root = make_dataset(tmp_path)
    Image.fromarray(np.full((5, 30, 3), 200, np.uint8)).save(root / "img" / "4.png")
    config = config_for(root, embeddings=True, embedding_dtype="float16")
    summary = run_labelling(config, LocalBackend(EmbeddingSegmenter(fail_embedding_width=30)))
    # The image that cannot be embedded is failed, labels and all: every labelled image
    # has its embedding.
    assert summary.ok and summary.images_failed == 1 and summary.images_labelled == 6
    out = root / "out"
    assert "im4" not in set(pq.read_table(out / "annotations")["image_id"].to_pylist())
    table = pq.read_table(out / "embeddings")
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 5)
    vectors = embeddings_of(out)
    assert "im4" not in vectors and len(vectors) == 6
    np.testing.assert_allclose(vectors["im0"], expected_vector(root / "img" / "0.png"), atol=1e-3)
    # Relabelling the failed image adds its row, in manifest order, the others kept.
    run_labelling(config, LocalBackend(EmbeddingSegmenter()), retry_failed=True)
    vectors = embeddings_of(out)
    assert list(vectors) == ["im0", "im1", "im2", "img/3", "im4", "im5", "im6"]
    np.testing.assert_allclose(vectors["im4"], expected_vector(root / "img" / "4.png"), atol=1e-3)


def test_a_segmenter_that_cannot_embed_fails_the_shard(tmp_path):
    root = make_dataset(tmp_path)
    summary = run_labelling(config_for(root, embeddings=True), LocalBackend(BrightnessSegmenter()))
    assert summary.shards_failed == 3
