"""The torch-free catalog (models/catalog.py) against the implementations, and the layer rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_data import write_celeba_fixture, write_celebahq_fixture, write_mufac_fixture

from models.catalog import ARCHITECTURES, DATASETS, METHODS
from models.data.base import AGE_GROUPS
from models.data.registry import DatasetSpec, load_dataset
from models.methods import get_method, list_methods, register_method
from models.methods.base import UnlearningMethod
from models.nets import KNOWN_ARCHS, create_model

REPO = Path(__file__).resolve().parent.parent


def test_every_registered_method_is_catalogued_with_its_needs_and_preparation() -> None:
    assert set(METHODS) == set(list_methods())
    for name, info in METHODS.items():
        method = get_method(name)
        assert method.needs == info.needs, name
        prepares = type(method).prepare is not UnlearningMethod.prepare
        assert prepares == info.prepares, name


def test_a_method_that_disagrees_with_the_catalog_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.methods import registry

    class Stray(UnlearningMethod):
        Config = dict

        def unlearn(self, model, request, artifacts, cfg):  # type: ignore[no-untyped-def]
            return model

    with pytest.raises(ValueError, match=r"not in models/catalog\.py"):
        register_method("not_catalogued")(Stray)
    monkeypatch.delitem(registry._METHODS, "ssd")
    with pytest.raises(ValueError, match="disagrees with the catalog"):
        register_method("ssd")(Stray)  # ssd prepares; Stray has no prepare of its own


def test_catalogued_architectures_have_their_head_where_the_catalog_says() -> None:
    assert tuple(ARCHITECTURES) == KNOWN_ARCHS
    for arch, info in ARCHITECTURES.items():
        network = create_model(arch, 3, 224 if "224" in arch else 32)
        assert network.get_classifier() is getattr(network, info.head), arch


def test_catalogued_data_sets_load_with_their_tasks_and_label_counts(tmp_path: Path) -> None:
    folders = {
        "celeba": write_celeba_fixture(tmp_path / "celeba"),
        "celebahq": write_celebahq_fixture(tmp_path / "celebahq"),
        "mufac": write_mufac_fixture(tmp_path / "mufac"),
    }
    assert set(folders) == {name for name, info in DATASETS.items() if not info.built_in}
    for name, info in DATASETS.items():
        root = folders.get(name)
        spec = DatasetSpec(name=name, root=None if root is None else str(root), num_identities=10)
        data = load_dataset(spec)
        assert set(info.tasks) == set(data.tasks), name
        for task, labels in info.tasks.items():
            if labels is not None:
                assert labels == data.task(task).num_outputs == len(data.task(task).labels)
    assert DATASETS["mufac"].tasks["age"] == len(AGE_GROUPS)
    assert [name for name, info in DATASETS.items() if info.built_in] == ["synthfaces"]


def test_a_loader_that_disagrees_with_the_catalog_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_mufac_fixture(tmp_path / "mufac")
    monkeypatch.setitem(DATASETS["mufac"].tasks, "age", 9)
    with pytest.raises(ValueError, match="the catalog says 9"):
        load_dataset(DatasetSpec(name="mufac", root=str(root)))


def _python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_app_never_imports_worker() -> None:
    pattern = re.compile(r"^\s*(from worker\b|import worker\b)", re.MULTILINE)
    offenders = [str(p) for p in _python_files("app") if pattern.search(p.read_text())]
    assert offenders == []


def test_models_never_import_app_or_worker() -> None:
    pattern = re.compile(r"^\s*(from (app|worker)\b|import (app|worker)\b)", re.MULTILINE)
    offenders = [str(p) for p in _python_files("models") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_module_outside_tests_and_migrations_exceeds_450_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for folder in ("app", "worker", "models", "bench")
        for p in _python_files(folder)
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
