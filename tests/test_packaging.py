"""A wheel install (not editable): the shipped yaml defaults, datasets and checkpoint travel inside the package, are
found from any working directory, and the command line trains one short model from outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

# what a build never needs: version control, run outputs, earlier builds
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "saved",
    "log",
    "log_tensorboard",
    "results",
    "build",
    "dist",
    "shipped",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
)


def _pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """(wheel file, a folder the wheel is installed into with ``pip install --target``)."""
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, root / "source", ignore=NOT_SOURCES)
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(root / "dist"),
        str(root / "source"),
    )
    (wheel,) = (root / "dist").glob("recbole_transfer-*.whl")
    _pip(
        "install", "--no-deps", "--no-index", "--target", str(root / "site"), str(wheel)
    )
    return wheel, root / "site"


@pytest.fixture(scope="module")
def outside(tmp_path_factory, wheel_install):
    """Run ``python args`` from an empty folder outside the checkout, importing the wheel's package."""
    _, site = wheel_install
    workdir = tmp_path_factory.mktemp("elsewhere")
    env = dict(os.environ, PYTHONPATH=str(site))

    def run(*args):
        return subprocess.run(
            [sys.executable, *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
        )

    return run


def test_wheel_carries_the_shipped_folders(wheel_install):
    wheel, _ = wheel_install
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = "recbole_transfer/shipped/"
    for folder in ("properties", "dataset", "pretrained"):
        for path in (REPO / folder).rglob("*"):
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and relative != "dataset/build.py":
                assert shipped + relative in names
    assert shipped + "dataset/build.py" not in names
    assert "recbole_transfer/__main__.py" in names


def test_installed_package_finds_its_files_from_another_directory(
    wheel_install, outside
):
    _, site = wheel_install
    probe = (
        "import json, recbole_transfer\n"
        "from recbole_transfer.config import Config, DATASET_DIR, PRETRAINED_DIR, PROPERTIES_DIR, shipped_file\n"
        "config = Config('UniSRec', 'Scientific', config_dict={'train_stage': 'inductive_ft'})\n"
        "print(json.dumps({'package': recbole_transfer.__file__, 'properties': PROPERTIES_DIR,\n"
        "    'dataset': DATASET_DIR, 'pretrained': PRETRAINED_DIR, 'data_path': config['data_path'],\n"
        "    'loss_type': config['loss_type'], 'task': shipped_file('properties/task/ml100k_gender.yaml')}))\n"
    )
    done = outside("-c", probe)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("package", "properties", "dataset", "pretrained", "data_path", "task"):
        assert found[key].startswith(str(site)), (key, found[key])
    assert found["loss_type"] == "CE"  # properties/model/UniSRec.yaml was read
    assert os.path.isfile(
        os.path.join(found["pretrained"], "UniSRec-Electronics,Sports,Toys,Tools.pth")
    )


def test_installed_command_line_trains_a_model_outside_the_checkout(outside):
    done = outside(
        "-m",
        "recbole_transfer",
        "--model=SASRec",
        "--dataset=Scientific",
        "--epochs=1",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=1",
        "--n_heads=1",
        "--show_progress=False",
        "--log_flops=False",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test result" in done.stdout + done.stderr
