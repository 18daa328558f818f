"""The run as a PyTorch dataset, read by a DataLoader of several workers; the README's
"Train on the labels" example, run as written on a demo output."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_fixtures import demo_output, expected_images, fake_output
from PIL import Image

from pipeline.reading import LabelledImages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    return demo_output(tmp_path_factory)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    return fake_output(tmp_path_factory)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("run_name", ["fake_run", pytest.param("demo_run", marks=pytest.mark.slow)])
def test_items_are_the_images_and_the_runs_label_maps_across_workers(run_name, request):
    run = request.getfixturevalue(run_name)
    expected = expected_images(run)
    dataset = LabelledImages(str(run))
    assert len(dataset) == len(expected) and dataset.ignore_index == 255
    assert dataset.classes == [c["name"] for c in next(iter(expected.values()))["categories"]]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    for n, (image, labels) in enumerate(loader):
        image_id = dataset.record(n).image_id
        assert image.dtype == torch.uint8 and labels.dtype == torch.int64
        np.testing.assert_array_equal(
            image[0].permute(1, 2, 0).numpy(), _pixels(expected[image_id]["bytes"])
        )
        np.testing.assert_array_equal(labels[0].numpy(), expected[image_id]["labels"])


def test_transform_gets_the_pair(fake_run):
    dataset = LabelledImages(str(fake_run), transform=lambda image, labels: labels.shape)
    assert dataset[0] == (dataset.record(0).height, dataset.record(0).width)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Train on the labels", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readmes_training_loop_runs_as_written_on_the_demo_output(demo_run, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo").symlink_to(demo_run)
    (tmp_path / "train.py").write_text(_readme_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", done.stdout)]
    assert len(losses) >= 2 and all(np.isfinite(losses)), done.stdout
