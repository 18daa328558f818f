"""jobs.manifest: folders, patterns, S3 prefixes, COCO files, lists and http URLs made into the
manifest that jobs.label reads, with ids, sizes and hashes checked against the real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_storage import serve

import schemas
from jobs import label as label_job
from jobs import manifest as manifest_job
from pipeline.planning import probe as probe_module
from pipeline.planning.manifest import open_manifest, read_range
from pipeline.planning.sources import glob_regex

# id -> (width, height) upright, of the images the `data` fixture writes
IMAGES = {
    "a.jpg": (20, 10),
    "B.JPG": (12, 8),
    "ünïcödé 猫.jpg": (7, 5),
    "with space.png": (6, 3),
    "nested/c.png": (9, 4),
    "nested/deeper/d.jpeg": (5, 11),
    "nested/deeper/e.webp": (8, 8),
    "nested/f.gif": (4, 6),
    "nested/g.bmp": (3, 2),
    "nested/h.TIFF": (10, 1),
    "rotated.jpg": (10, 30),  # stored 30 x 10 with EXIF orientation 6
    "big-header.jpg": (13, 7),  # a 70 kB comment before the pixels
}
CORRUPT = "corrupt.jpg"
OTHER = {"notes.txt": b"not an image", "README": b"no extension", "nested/meta.json": b"{}"}
HIDDEN = {".DS_Store": b"\0", ".cache/x.jpg": b"\0", "nested/._c.png": b"\0"}


def image_bytes(name: str, width: int, height: int) -> bytes:
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tiff": "TIFF"}.get(name.rsplit(".", 1)[1].lower())
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (width * 7 % 256, height * 13 % 256, 90))
    if name == "rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # turn 90 degrees: the upright image is `height` wide
        image.resize((height, width)).save(buffer, "JPEG", exif=exif.tobytes())
    elif name == "big-header.jpg":
        image.save(buffer, "JPEG", comment=b"x" * 65000, exif=b"Exif\0\0" + b"\0" * 6000)
    else:
        image.save(buffer, fmt or name.rsplit(".", 1)[1].upper())
    return buffer.getvalue()


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    files = {name: image_bytes(name, *size) for name, size in IMAGES.items()}
    files |= {CORRUPT: b"\xff\xd8 this is not really a JPEG", **OTHER, **HIDDEN}
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def make(capsys, *args: str) -> tuple[int, str, str]:
    code = manifest_job.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(location: str) -> list[dict]:
    """The manifest's rows as jobs.label's reader gives them, each checked by the schema."""
    manifest = open_manifest(location)
    rows = [row for f in manifest.files for row in read_range(f.uri, 0, f.rows).to_pylist()]
    for row in rows:
        schemas.validate(row, "manifest_row")
    return rows


def test_a_folder_lists_its_images_with_relative_ids(data, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code, stdout, _ = make(capsys, data, "--output", out)
    assert code == 0
    rows = rows_of(str(out))
    assert [r["image_id"] for r in rows] == sorted([*IMAGES, CORRUPT])  # not probed: kept
    assert all(r["uri"] == str(data / r["image_id"]) for r in rows)
    assert set(pq.read_schema(out).names) == {"image_id", "uri"}
    assert (
        "skipped 6 hidden or non-image file(s) (.json: 1, .txt: 1, hidden: 3, no extension: 1)"
        in stdout
    )
    assert f"{len(IMAGES) + 1} images in {out}" in stdout
    assert f"python -m jobs.label --manifest {out} --vocabulary VOCAB.txt" in stdout


def test_probe_and_sha256_match_the_files(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.parquet"
    code, stdout, _ = make(capsys, data, "--output", out, "--probe", "--sha256", "--threads", 3)
    assert code == 0
    rows = {r["image_id"]: r for r in rows_of(str(out))}
    assert set(rows) == set(IMAGES)  # the corrupt file is left out
    for image_id, (width, height) in IMAGES.items():
        assert (rows[image_id]["width"], rows[image_id]["height"]) == (width, height), image_id
        digest = hashlib.sha256((data / image_id).read_bytes()).hexdigest()
        assert rows[image_id]["sha256"] == digest
    sidecar = Path(f"{out}.unreadable.jsonl")
    [failure] = [json.loads(line) for line in sidecar.read_text(encoding="utf-8").splitlines()]
    schemas.validate(failure, "failure")
    assert failure["image_id"] == CORRUPT and failure["error"] == "ImageDecodeError"
    assert f"1 unreadable file(s) left out, all listed in {sidecar}" in stdout
    assert f"{data / CORRUPT}: ImageDecodeError" in stdout
    # sizes alone read just the head of each file, the whole only past a 64 kB header
    whole: list[str] = []
    real = probe_module.read_bytes
    monkeypatch.setattr(probe_module, "read_bytes", lambda uri: whole.append(uri) or real(uri))
    assert make(capsys, data, "--output", out, "--probe")[0] == 0
    assert whole == [str(data / "big-header.jpg")]
    assert "sha256" not in pq.read_schema(out).names
    assert make(capsys, data, "--output", out, "--sha256")[0] == 0
    assert pq.read_schema(out).names == ["image_id", "uri", "sha256"]
    assert not sidecar.exists()  # it described the earlier listing
    assert CORRUPT in [r["image_id"] for r in rows_of(str(out))]  # hashed, never decoded


def test_the_same_files_give_the_same_bytes(data, tmp_path, capsys):
    """Rows are sorted by id, whichever the order of the SOURCEs or of the listing."""
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "z.png").write_bytes(image_bytes("z.png", 2, 2))
    outs = [tmp_path / f"m{i}.parquet" for i in range(3)]
    assert make(capsys, data, tmp_path / "more", "--output", outs[0], "--probe")[0] == 0
    assert make(capsys, data, tmp_path / "more", "--output", outs[1], "--probe")[0] == 0
    assert make(capsys, tmp_path / "more", data, "--output", outs[2], "--probe")[0] == 0
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_patterns_list_what_they_match(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        "data/**/*.jpg": [
            "a.jpg",
            "big-header.jpg",
            "corrupt.jpg",
            "rotated.jpg",
            "ünïcödé 猫.jpg",
        ],
        "data/*.JPG": ["B.JPG"],  # patterns are case-sensitive, as the shell's are
        "data/nested/**/*.[jp][pn]*g": ["c.png", "deeper/d.jpeg"],
        "data/nested/*": ["c.png", "f.gif", "g.bmp", "h.TIFF"],  # not recursive; meta.json skipped
    }
    for pattern, ids in cases.items():
        assert make(capsys, pattern, "--output", "m.parquet")[0] == 0, pattern
        rows = rows_of("m.parquet")
        assert [r["image_id"] for r in rows] == ids, pattern
        root = data / "nested" if "nested" in pattern else data
        assert [r["uri"] for r in rows] == [str(root / i) for i in ids]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.jpg", "a.jpg", True),
        ("*.jpg", "x/a.jpg", False),
        ("**/*.jpg", "a.jpg", True),
        ("**/*.jpg", "x/y/a.jpg", True),
        ("x/**", "x/y/a.jpg", True),
        ("[!a-c]?.png", "d1.png", True),
        ("[!a-c]?.png", "b1.png", False),
        ("a+b(1).jpg", "a+b(1).jpg", True),
    ],
)
def test_glob_patterns(pattern, path, matches):
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


UNREADABLE = "photos.parquet.unreadable.jsonl"


def test_an_s3_prefix(s3_env, data, capsys):
    fs = s3_env
    for name in ("a.jpg", "ünïcödé 猫.jpg", "nested/deeper/d.jpeg", CORRUPT, "notes.txt"):
        with fs.open_output_stream(f"data/photos/{name}") as stream:
            stream.write((data / name).read_bytes())
    out = "s3://labels/manifests/photos.parquet"
    code, stdout, _ = make(capsys, "s3://data/photos", "--output", out, "--probe", "--sha256")
    assert code == 0 and "skipped 1 hidden or non-image file(s) (.txt: 1)" in stdout
    rows = rows_of(out)
    ids = ["a.jpg", "nested/deeper/d.jpeg", "ünïcödé 猫.jpg"]
    assert [r["image_id"] for r in rows] == ids
    assert [r["uri"] for r in rows] == [f"s3://data/photos/{i}" for i in ids]
    assert [(r["width"], r["height"]) for r in rows] == [IMAGES[i] for i in ids]
    assert [r["sha256"] for r in rows] == [
        hashlib.sha256((data / i).read_bytes()).hexdigest() for i in ids
    ]
    with fs.open_input_stream(f"labels/manifests/{UNREADABLE}") as stream:
        assert json.loads(stream.read())["uri"] == f"s3://data/photos/{CORRUPT}"
    listed = [i.path for i in fs.get_file_info(pafs.FileSelector("labels", recursive=True))]
    assert sorted(listed) == [
        "labels/manifests",
        "labels/manifests/photos.parquet",
        f"labels/manifests/{UNREADABLE}",
    ]  # no temporaries left
    assert make(capsys, "s3://data/photos/**/*.jpeg", "--output", out)[0] == 0
    assert [(r["image_id"], r["uri"]) for r in rows_of(out)] == [
        ("nested/deeper/d.jpeg", "s3://data/photos/nested/deeper/d.jpeg")
    ]
    assert not fs.get_file_info(f"labels/manifests/{UNREADABLE}").is_file  # stale: removed


def test_a_coco_file(data, tmp_path, capsys):
    coco = {
        "images": [
            {"id": 1, "file_name": "nested/c.png", "width": 9, "height": 4},
            {"id": 2, "file_name": "ünïcödé 猫.jpg", "width": 7, "height": 5},
            {"id": 3, "file_name": "a.jpg"},
        ],
        "annotations": [],
        "categories": [],
    }
    (data / "coco.json").write_text(json.dumps(coco), encoding="utf-8")
    out = tmp_path / "m.parquet"
    assert make(capsys, data / "coco.json", "--output", out)[0] == 0  # root: the file's folder
    rows = rows_of(str(out))
    assert [r["image_id"] for r in rows] == ["a.jpg", "nested/c.png", "ünïcödé 猫.jpg"]
    assert [r["uri"] for r in rows] == [str(data / r["image_id"]) for r in rows]
    assert [(r["width"], r["height"]) for r in rows] == [(None, None), (9, 4), (7, 5)]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "coco.json").write_text(json.dumps(coco), encoding="utf-8")
    args = (tmp_path / "ann" / "coco.json", "--image-root", data, "--output", out, "--probe")
    assert make(capsys, *args)[0] == 0
    assert rows_of(str(out)) == [
        {"image_id": i, "uri": str(data / i), "width": IMAGES[i][0], "height": IMAGES[i][1]}
        for i in ["a.jpg", "nested/c.png", "ünïcödé 猫.jpg"]
    ]
    coco["images"].append({"id": 4, "file_name": "a.jpg"})
    (data / "coco.json").write_text(json.dumps(coco), encoding="utf-8")
    code, _, err = make(capsys, data / "coco.json", "--output", out)
    assert code == 2
    assert f"'a.jpg': {data / 'a.jpg'} ({data / 'coco.json'} images[2])" in err
    assert f"({data / 'coco.json'} images[3])" in err


def test_a_list_of_paths_and_uris(data, tmp_path, capsys):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(image_bytes("elsewhere.png", 4, 4))
    lines = [
        "# a comment",
        "a.jpg",
        "",
        "  nested/deeper/d.jpeg  ",
        "ünïcödé 猫.jpg",
        str(outside),
        f"file://{data / 'B.JPG'}",
        "s3://bucket/key.jpg",
        "https://example.org/images/x.png",
    ]
    (data / "list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "m.parquet"
    assert make(capsys, data / "list.txt", "--output", out)[0] == 0
    expected = {
        "a.jpg": str(data / "a.jpg"),
        "nested/deeper/d.jpeg": str(data / "nested/deeper/d.jpeg"),
        "ünïcödé 猫.jpg": str(data / "ünïcödé 猫.jpg"),
        str(outside): str(outside),  # not under the list's folder: the full path
        "B.JPG": str(data / "B.JPG"),
        "s3://bucket/key.jpg": "s3://bucket/key.jpg",
        "https://example.org/images/x.png": "https://example.org/images/x.png",
    }
    rows = rows_of(str(out))
    assert [r["image_id"] for r in rows] == sorted(expected)
    assert {r["image_id"]: r["uri"] for r in rows} == expected
    (data / "list.lst").write_text("a.jpg\nnested/c.png\n./a.jpg\n", encoding="utf-8")
    code, _, err = make(capsys, data / "list.lst", "--output", out)
    assert code == 2 and "1 image_id(s) name more than one row" in err
    assert f"{data / 'list.lst'} line 1" in err and f"{data / 'list.lst'} line 3" in err


def test_colliding_and_overlapping_sources_are_refused(data, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.jpg").write_bytes(image_bytes("a.jpg", 2, 2))
    out = tmp_path / "m.parquet"
    code, _, err = make(capsys, data, tmp_path / "other", "--output", out)
    assert code == 2 and not out.exists()
    assert (
        f"'a.jpg': {data / 'a.jpg'} ({data}), {tmp_path / 'other' / 'a.jpg'} ({tmp_path / 'other'})"
        in err
    )
    assert "pass the folders' common parent as one SOURCE" in err
    code, _, err = make(capsys, data, data / "nested", "--output", out)
    assert code == 2 and "6 file(s) are listed more than once" in err
    assert (
        f"{str(data / 'nested/c.png')!r}: nested/c.png ({data}), c.png ({data / 'nested'})" in err
    )


def test_http_urls_are_probed_and_read(data, tmp_path, capsys):
    ids = ["a.jpg", "nested/deeper/d.jpeg", "ünïcödé 猫.jpg"]
    with serve(data) as (base, _):
        lines = [f"{base}/{i}" for i in ids] + [f"{base}/missing.jpg", f"{base}/{CORRUPT}"]
        (tmp_path / "urls.txt").write_text("\n".join(lines), encoding="utf-8")
        out = tmp_path / "m.parquet"
        code, stdout, _ = make(
            capsys, tmp_path / "urls.txt", "--output", out, "--probe", "--sha256"
        )
        assert code == 0
        rows = rows_of(str(out))
        assert [r["uri"] for r in rows] == [r["image_id"] for r in rows] == lines[:3]
        assert [(r["width"], r["height"]) for r in rows] == [IMAGES[i] for i in ids]
        assert [r["sha256"] for r in rows] == [
            hashlib.sha256((data / i).read_bytes()).hexdigest() for i in ids
        ]
        failures = [json.loads(x) for x in Path(f"{out}.unreadable.jsonl").read_text().splitlines()]
        assert [(f["uri"], f["error"]) for f in failures] == [
            (f"{base}/{CORRUPT}", "ImageDecodeError"),
            (f"{base}/missing.jpg", "FileNotFoundError"),
        ]
        assert "HTTP 404" in failures[1]["message"]
        assert "2 unreadable file(s) left out" in stdout
        # the labelling job's image reader fetches them
        from pipeline.formats.descriptors import ImageRecord
        from pipeline.formats.images import load

        decoded = load(ImageRecord(0, ids[2], rows[2]["uri"], sha256=rows[2]["sha256"]))
        assert decoded.shape == (5, 7, 3)


def test_the_labelling_job_plans_the_manifest(data, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert make(capsys, data, "--output", out, "--probe")[0] == 0
    (tmp_path / "vocabulary.txt").write_text("sky\nroad\n", encoding="utf-8")
    vocabulary = str(tmp_path / "vocabulary.txt")
    args = ["--dry-run", "--model", "demo", "--manifest", str(out), "--vocabulary", vocabulary]
    assert label_job.main([*args, "--output", str(tmp_path / "run")]) == 0
    assert f"{len(IMAGES)} images in 1 file(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-folder"], "SOURCE missing-folder does not exist"),
        (["data/notes.txt", "--image-root", "data"], "--image-root applies to COCO"),
        (["data/nested/meta.json"], "has no 'images' list, so it is not a COCO file"),
        (["data/README"], "is a file of no known kind"),
        (["data/.cache/*.png"], "no image found"),
        (["http://127.0.0.1:9/images/"], "web folders cannot be listed"),
        (["data", "--output", "m"], "must name a .parquet file"),
    ],
)
def test_bad_input_exits_2_with_the_fix(data, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    output = [] if "--output" in args else ["--output", "m.parquet"]
    code, _, err = make(capsys, *args, *output)
    assert code == 2 and message in err, err
    assert not os.path.exists("m.parquet") and not os.path.exists("m")
