"""The CelebA, CelebA-HQ and MUFAC loaders on fixture folders in the published layouts."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import (
    CELEBA_ATTRIBUTES,
    write_celeba_fixture,
    write_celebahq_fixture,
    write_mufac_fixture,
)

from models.data.base import AGE_GROUPS, DatasetError, FaceData
from models.data.celeba import load_celeba
from models.data.celebahq import load_celebahq
from models.data.mufac import load_mufac

Writer = Callable[[Path], Path]
Loader = Callable[[Path], FaceData]
DATASETS: dict[str, tuple[Writer, Loader]] = {
    "celeba": (write_celeba_fixture, load_celeba),
    "celebahq": (write_celebahq_fixture, load_celebahq),
    "mufac": (write_mufac_fixture, load_mufac),
}


def replace_line(path: Path, number: int, edit: Callable[[str], str]) -> None:
    """Rewrite line `number` (1-based) of a text file with `edit(old line)`."""
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


def attribute_row(name: str, positives: set[str], other: str = "-1") -> str:
    """An attribute-file row with `positives` set to 1 and every other attribute to `other`."""
    values = ["1" if label in positives else other for label in CELEBA_ATTRIBUTES]
    return name + "  " + "  ".join(values)


def raw_attribute_targets(path: Path) -> np.ndarray:
    """Multi-hot targets read straight off the attribute file, value != -1 as positive."""
    rows = [line.split()[1:] for line in path.read_text().splitlines()[2:]]
    return np.array([[value != "-1" for value in row] for row in rows], dtype=np.float32)


def test_celeba_fixture_loads(tmp_path: Path) -> None:
    root = write_celeba_fixture(tmp_path)
    replace_line(
        root / "list_attr_celeba.txt", 4, lambda _: attribute_row("000002.jpg", {"Male", "Young"})
    )
    replace_line(root / "identity_CelebA.txt", 2, lambda _: "000002.jpg 2880")
    data = load_celeba(root)

    assert data.name == "celeba" and len(data) == 18
    assert data.keys[:2] == ["000001.jpg", "000002.jpg"]
    assert data.identities[1] == "2880"
    task = data.task("attributes")
    assert task.kind == "multilabel" and task.labels == CELEBA_ATTRIBUTES
    targets = data.targets["attributes"]
    assert targets.dtype == np.float32 and targets.shape == (18, 40)
    expected = np.zeros(40, dtype=np.float32)
    expected[[CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Young")]] = 1
    np.testing.assert_array_equal(targets[1], expected)
    np.testing.assert_array_equal(targets, raw_attribute_targets(root / "list_attr_celeba.txt"))
    partition = (root / "list_eval_partition.txt").read_text().split()[1::2]
    assert data.meta["partition"] == [int(code) for code in partition]
    assert set(data.meta["partition"]) == {0, 1, 2}


def test_celeba_identities_follow_identity_file(tmp_path: Path) -> None:
    root = write_celeba_fixture(tmp_path, num_identities=4, images_per_identity=5, seed=3)
    data = load_celeba(root)
    rows = dict(line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines())
    assert data.identities == [rows[key] for key in data.keys]
    assert sorted(data.identities.count(i) for i in set(data.identities)) == [5, 5, 5, 5]


def test_celebahq_fixture_loads(tmp_path: Path) -> None:
    root = write_celebahq_fixture(tmp_path)
    # A value other than -1 (here 0) counts as positive, as in 1-SHUI.
    row = attribute_row("0.jpg", {"Smiling"}, other="-1").replace(" -1", "  0", 1)
    replace_line(root / "CelebAMask-HQ-attribute-anno.txt", 3, lambda _: row)
    data = load_celebahq(root)

    assert data.name == "celebahq" and len(data) == 18
    assert data.meta["listed_images"] == 20 and data.meta["dropped_without_identity"] == 2
    assert "18.jpg" not in data.keys and "19.jpg" not in data.keys
    assert len(set(data.identities)) == 6
    targets = data.targets["attributes"]
    assert targets.dtype == np.float32 and targets.shape == (18, 40)
    assert set(np.flatnonzero(targets[0])) == {0, CELEBA_ATTRIBUTES.index("Smiling")}
    raw = raw_attribute_targets(root / "CelebAMask-HQ-attribute-anno.txt")
    np.testing.assert_array_equal(targets, raw[:18])


def test_mufac_fixture_loads(tmp_path: Path) -> None:
    root = write_mufac_fixture(tmp_path)
    val_csv = root / "custom_val_dataset.csv"
    image = val_csv.read_text().splitlines()[1].split(",")[-1]
    replace_line(val_csv, 2, lambda _: f"F0002,D,h,{image}")
    data = load_mufac(root)

    assert data.name == "mufac" and len(data) == 18
    task = data.task("age")
    assert task.kind == "multiclass" and task.labels == tuple(g[0] for g in AGE_GROUPS)
    targets = data.targets["age"]
    assert targets.dtype == np.int64 and targets.shape == (18,)
    assert sorted(set(data.identities)) == [f"F000{f}_{p}" for f in (1, 2, 3) for p in ("D", "M")]
    row = data.keys.index(f"val_images/{image}")
    assert data.identities[row] == "F0002_D" and targets[row] == 7
    for key, target, identity in zip(data.keys, targets, data.identities, strict=True):
        name = key.split("/")[-1]
        assert name.startswith(identity.replace("_", "_AGE_", 1) + "_")
        if key != f"val_images/{image}":  # file names carry the age letter: ..._a1.jpg
            assert name.rsplit("_", 1)[-1][0] == AGE_GROUPS[target][0]
    assert data.meta["official_split"] == ["train"] * 6 + ["val"] * 6 + ["test"] * 6


@pytest.mark.parametrize(
    ("dataset", "size"), [("celeba", (24, 20)), ("celebahq", (24, 24)), ("mufac", (16, 16))]
)
def test_images_load_lazily_as_uint8(tmp_path: Path, dataset: str, size: tuple[int, int]) -> None:
    writer, loader = DATASETS[dataset]
    data = loader(writer(tmp_path))
    image = data.load_image(len(data) - 1)
    assert image.dtype == torch.uint8 and image.shape == (3, *size)
    restored = pickle.loads(pickle.dumps(data.load_image))  # DataLoader workers need this
    assert torch.equal(restored(0), data.load_image(0))


@pytest.mark.parametrize(
    ("dataset", "subfolder"),
    [("celeba", "celeba"), ("celebahq", "CelebAMask-HQ"), ("mufac", "mufac")],
)
def test_files_may_sit_in_the_usual_subfolder(tmp_path: Path, dataset: str, subfolder: str) -> None:
    writer, loader = DATASETS[dataset]
    writer(tmp_path / subfolder)
    data = loader(tmp_path)
    assert len(data) == 18 and data.meta["root"] == str(tmp_path / subfolder)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_fixtures_are_deterministic(tmp_path: Path, dataset: str) -> None:
    writer, loader = DATASETS[dataset]
    first, second = loader(writer(tmp_path / "a")), loader(writer(tmp_path / "b"))
    assert first.keys == second.keys and first.identities == second.identities
    for task in first.tasks:
        np.testing.assert_array_equal(first.targets[task], second.targets[task])


@pytest.mark.parametrize(
    ("dataset", "missing"),
    [
        ("celeba", "img_align_celeba"),
        ("celeba", "list_attr_celeba.txt"),
        ("celeba", "identity_CelebA.txt"),
        ("celeba", "list_eval_partition.txt"),
        ("celebahq", "CelebA-HQ-img"),
        ("celebahq", "CelebAMask-HQ-attribute-anno.txt"),
        ("celebahq", "CelebA-HQ-identity.txt"),
        ("mufac", "custom_train_dataset.csv"),
        ("mufac", "custom_val_dataset.csv"),
        ("mufac", "custom_test_dataset.csv"),
        ("mufac", "train_images"),
        ("mufac", "val_images"),
        ("mufac", "test_images"),
    ],
)
def test_missing_file_is_named(tmp_path: Path, dataset: str, missing: str) -> None:
    writer, loader = DATASETS[dataset]
    root = writer(tmp_path)
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match="missing") as caught:
        loader(root)
    assert caught.value.path == target
    assert missing in str(caught.value)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_missing_root_is_named(tmp_path: Path, dataset: str) -> None:
    _, loader = DATASETS[dataset]
    with pytest.raises(DatasetError, match="missing") as caught:
        loader(tmp_path / "absent")
    assert caught.value.path == tmp_path / "absent"


def drop_last_field(line: str) -> str:
    """The line without its last whitespace-separated field."""
    return line.rsplit(None, 1)[0]


def set_field(index: int, value: str, sep: str | None = None) -> Callable[[str], str]:
    """An edit that sets field `index` of a line to `value`."""

    def edit(line: str) -> str:
        fields = line.split(sep)
        fields[index] = value
        return (sep or " ").join(fields)

    return edit


GARBLED = [
    ("celeba", "list_attr_celeba.txt", 1, lambda _: "many", "image count"),
    ("celeba", "list_attr_celeba.txt", 1, lambda _: "17", "says 17 images"),
    ("celeba", "list_attr_celeba.txt", 2, drop_last_field, "40 attribute names, found 39"),
    ("celeba", "list_attr_celeba.txt", 5, drop_last_field, "found 40 fields"),
    ("celeba", "list_attr_celeba.txt", 5, lambda line: line + " 1", "found 42 fields"),
    ("celeba", "list_attr_celeba.txt", 5, set_field(7, "2"), "is 2, expected one of"),
    ("celeba", "list_attr_celeba.txt", 5, set_field(7, "x"), "'x' is not an integer"),
    ("celeba", "list_attr_celeba.txt", 5, set_field(0, "000001.jpg"), "listed twice"),
    ("celeba", "identity_CelebA.txt", 3, drop_last_field, "found 1 fields"),
    ("celeba", "identity_CelebA.txt", 3, set_field(1, "abc"), "'abc' is not a number"),
    ("celeba", "identity_CelebA.txt", 3, set_field(0, "999999.jpg"), "not in list_attr_celeba"),
    ("celeba", "identity_CelebA.txt", 3, set_field(0, "000001.jpg"), "listed twice"),
    ("celeba", "list_eval_partition.txt", 4, set_field(1, "7"), "'7' is not 0, 1 or 2"),
    ("celebahq", "CelebAMask-HQ-attribute-anno.txt", 2, lambda line: line + " Extra", "found 41"),
    ("celebahq", "CelebAMask-HQ-attribute-anno.txt", 4, lambda line: line + " 1", "42 fields"),
    ("celebahq", "CelebAMask-HQ-attribute-anno.txt", 4, set_field(3, "1.5"), "not an integer"),
    ("celebahq", "CelebA-HQ-identity.txt", 2, set_field(1, "x"), "'x' is not a number"),
    ("celebahq", "CelebA-HQ-identity.txt", 2, lambda line: line + " 6", "found 3 fields"),
    (
        "mufac",
        "custom_train_dataset.csv",
        1,
        lambda _: "family,person,age_class,image_path",
        "lacks",
    ),
    ("mufac", "custom_train_dataset.csv", 3, lambda line: line.rsplit(",", 1)[0], "found 3"),
    ("mufac", "custom_val_dataset.csv", 2, set_field(2, "z", ","), "unknown age class 'z'"),
    ("mufac", "custom_test_dataset.csv", 3, lambda line: line + ",extra", "found 5"),
    ("mufac", "custom_test_dataset.csv", 4, set_field(0, "", ","), "empty family_id"),
]


@pytest.mark.parametrize(
    ("dataset", "file", "line", "edit", "problem"),
    GARBLED,
    ids=[f"{g[1]}:{g[2]}:{g[4]}" for g in GARBLED],
)
def test_garbled_line_is_named(
    tmp_path: Path, dataset: str, file: str, line: int, edit: Callable[[str], str], problem: str
) -> None:
    writer, loader = DATASETS[dataset]
    root = writer(tmp_path)
    replace_line(root / file, line, edit)
    with pytest.raises(DatasetError) as caught:
        loader(root)
    message = str(caught.value)
    assert caught.value.path == root / file
    assert file in message and f"line {line}:" in message and problem in message


@pytest.mark.parametrize(
    ("dataset", "listing", "line", "folder"),
    [
        ("celeba", "list_attr_celeba.txt", 7, "img_align_celeba"),
        ("celebahq", "CelebAMask-HQ-attribute-anno.txt", 6, "CelebA-HQ-img"),
        ("mufac", "custom_val_dataset.csv", 4, "val_images"),
    ],
)
def test_missing_image_is_named(
    tmp_path: Path, dataset: str, listing: str, line: int, folder: str
) -> None:
    writer, loader = DATASETS[dataset]
    root = writer(tmp_path)
    text = (root / listing).read_text().splitlines()[line - 1]
    image = text.split(",")[-1] if listing.endswith(".csv") else text.split()[0]
    (root / folder / image).unlink()
    with pytest.raises(DatasetError) as caught:
        loader(root)
    message = str(caught.value)
    assert caught.value.path == root / listing
    assert f"line {line}:" in message and image in message


def test_celebahq_images_without_identity_need_no_file(tmp_path: Path) -> None:
    root = write_celebahq_fixture(tmp_path)
    (root / "CelebA-HQ-img" / "19.jpg").unlink()
    assert len(load_celebahq(root)) == 18


def test_unreadable_image_is_named_when_loaded(tmp_path: Path) -> None:
    root = write_celeba_fixture(tmp_path)
    broken = root / "img_align_celeba" / "000003.jpg"
    broken.write_bytes(b"not a jpeg")
    data = load_celeba(root)  # images are not read at load time
    with pytest.raises(DatasetError, match="cannot read image") as caught:
        data.load_image(2)
    assert caught.value.path == broken


@pytest.mark.parametrize("file", ["identity_CelebA.txt", "list_eval_partition.txt"])
def test_celeba_row_left_out_is_named(tmp_path: Path, file: str) -> None:
    root = write_celeba_fixture(tmp_path)
    lines = (root / file).read_text().splitlines()
    (root / file).write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    with pytest.raises(DatasetError, match=r"missing a row for image '000003\.jpg'") as caught:
        load_celeba(root)
    assert caught.value.path == root / file
