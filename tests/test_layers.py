"""The package's layers: imports run runner -> trainers -> models -> plm / data -> utils, compat alone patches
third-party objects, and one key (source_datasets) names source domains."""

import ast

import pytest

from conftest import FAST, REPO, cut_users

from recbole_transfer.config import ConfigError
from recbole_transfer.errors import UserInputError
from recbole_transfer.utils import find_path

PACKAGE = REPO / "recbole_transfer"
RUNNER = {
    "__main__",
    "cli",
    "config",
    "quick_start",
    "registry",
    "hyper",
    "compare",
    "measure",
    "pretrained",
    "recommend",
}
# layer -> the package modules (first dotted part after recbole_transfer) it must not import
FORBIDDEN = {
    "utils": RUNNER | {"trainer", "model", "data", "plm", "compat"},
    "plm": RUNNER | {"trainer", "model", "data"},
    "data": RUNNER | {"trainer", "model"},
    "model": RUNNER | {"trainer"},
    "trainer": RUNNER,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield parts[0], path


def _package_imports(path):
    """First dotted part (after ``recbole_transfer``) of every package module ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "recbole_transfer":
                if len(parts) > 1:
                    found.add(parts[1])
                else:  # from recbole_transfer import compat, plm
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "recbole_transfer" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_imports_run_one_way():
    wrong = []
    for layer, path in _modules():
        for imported in _package_imports(path) & FORBIDDEN.get(layer, set()):
            wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert wrong == []


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    path = tmp_path / "x.py"
    path.write_text(
        "def f():\n    from recbole_transfer.model.plm_init import X\n",
        encoding="utf-8",
    )
    assert _package_imports(path) == {"model"}


def _third_party_patches(path):
    """``name.attr = ...`` / ``setattr(name, ...)`` where ``name`` is an imported third-party module or class
    (``sys.argv``, the process's own arguments, is not a third-party object)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if not a.name.startswith("recbole_transfer")
            )
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and not node.module.startswith("recbole_transfer")
        ):
            imported.update(a.asname or a.name for a in node.names)
    imported.discard("sys")
    patches = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            if (
                isinstance(target, ast.Attribute)
                and isinstance(base, ast.Name)
                and base.id in imported
            ):
                patches.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Name) and first.id in imported:
                patches.append(f"{path.name}:{node.lineno}")
    return patches


def test_only_compat_patches_third_party_objects(tmp_path):
    assert _third_party_patches(
        PACKAGE / "compat.py"
    )  # the checker finds compat's own patches
    wrong = [
        hit
        for _, path in _modules()
        if path.name != "compat.py"
        for hit in _third_party_patches(path)
    ]
    assert wrong == []


def test_no_reference_to_documents_the_project_does_not_ship():
    files = (
        list(PACKAGE.rglob("*.py"))
        + list((REPO / "properties").rglob("*.yaml"))
        + [REPO / "README.md"]
    )
    assert [
        str(f.relative_to(REPO))
        for f in files
        if "DESIGN" in f.read_text(encoding="utf-8")
    ] == []


def test_paths_resolve_from_the_working_directory(tmp_path):
    (tmp_path / "here.pth").write_bytes(b"")
    assert find_path("here.pth") == "here.pth"  # conftest runs every test in tmp_path
    assert (
        find_path("README.md") is None
    )  # the repository's own files are not a fallback
    assert find_path(str(REPO / "README.md")) == str(REPO / "README.md")


# --- one key for source domains -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old", ["source_dataset", "xcross_sources", "pretrain_datasets"]
)
def test_old_source_keys_are_refused_with_the_new_name(old):
    from recbole_transfer.config import Config

    with pytest.raises(ConfigError) as err:
        Config("SASRec", "Scientific", config_dict={old: "Tools", **FAST})
    assert (
        str(err.value)
        == f"'{old}' was renamed: use source_datasets (a list, e.g. --source_datasets=\"['A','B']\")"
    )


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    """Scientific with two of its shipped family (Pantry: ID only, Tools: with text) and a pair domain."""
    root = tmp_path_factory.mktemp("family")
    for name in ("Scientific", "Pantry", "Tools", "ABE_Beauty"):
        cut_users(name, 30, root)
    return root


def test_default_sources_are_the_targets_shipped_family(family_root):
    from recbole_transfer.config import Config, default_source_datasets

    config = Config(
        "MetaRec", "Scientific", config_dict=dict(FAST, data_path=str(family_root))
    )
    assert config["source_datasets"] == [
        "Pantry",
        "Tools",
    ]  # present in data_path, by name, never the target
    assert default_source_datasets(["Scientific"], "text", str(family_root)) == [
        "Tools"
    ]
    assert default_source_datasets(["Pantry"], "all", str(family_root)) == [
        "Scientific",
        "Tools",
    ]
    assert (
        default_source_datasets(["ABE_Beauty"], "all", str(family_root)) == []
    )  # its partner is not there
    given = Config(
        "MetaRec",
        "Scientific",
        config_dict=dict(FAST, data_path=str(family_root), source_datasets="Tools"),
    )
    assert given["source_datasets"] == ["Tools"]
    assert (
        Config(
            "SASRec", "Scientific", config_dict=dict(FAST, data_path=str(family_root))
        )["source_datasets"]
        is None
    )


def test_no_shipped_yaml_hard_codes_sources():
    for path in (REPO / "properties" / "model").glob("*.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("source_datasets:"):
                assert line.split("#")[0].split(":", 1)[1].strip() == "~", path.name


def test_peterrec_takes_exactly_one_source(tmp_path):
    from recbole_transfer.quick_start import build

    with pytest.raises(UserInputError) as err:
        build(
            "PeterRec",
            "ABE_Electronics",
            config_file_list=[str(REPO / "properties/task/beauty_to_electronics.yaml")],
            config_dict=dict(
                FAST, source_datasets=["ABE_Beauty", "AFK_Food"], pretrained_path=None
            ),
        )
    assert str(err.value) == (
        "fine-tuning needs source_datasets with one dataset (whose sequences are the input); got 2"
    )


def test_unisrec_recipe_refuses_the_target_as_a_source():
    from recbole_transfer.recipe import run_recipe

    with pytest.raises(UserInputError) as err:
        run_recipe(
            "UniSRec",
            "Scientific",
            config_dict=dict(FAST, source_datasets="Tools,Scientific"),
        )
    assert (
        str(err.value)
        == "source_datasets must not include the target dataset 'Scientific'"
    )
