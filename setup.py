"""Packaging: the metadata lives in setup.cfg. A wheel also carries the shipped yaml defaults (properties/), datasets
(dataset/) and pretrained checkpoints (pretrained/) as package data under recbole_transfer/shipped/, so a
non-editable install finds them from any working directory; an editable install reads them from the checkout.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("properties", "dataset", "pretrained")
# development-only files of the shipped folders (the dataset rebuild script)
LEFT_OUT = {os.path.join("dataset", "build.py")}


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's own folders are found beside the package
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(self.build_lib, "recbole_transfer", "shipped")
        for folder in SHIPPED:
            for root, dirs, files in os.walk(os.path.join(here, folder)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    source = os.path.join(root, name)
                    relative = os.path.relpath(source, here)
                    if relative in LEFT_OUT:
                        continue
                    destination = os.path.join(target, relative)
                    os.makedirs(os.path.dirname(destination), exist_ok=True)
                    shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithShippedFiles})
