"""The wheel's packages; all other metadata is in pyproject.toml.

configs/ stays at the top of the checkout and ships inside the package as mmtool/configs/ (a package-dir
mapping pyproject.toml cannot state next to a package search): mmtool/recipes.py finds it in either place.
"""
from setuptools import find_packages, setup

CODE = find_packages(include=[f"{top}{sub}" for top in ("mmtool", "stage1_clip", "stage2_projector", "stage3_llm")
                              for sub in ("", ".*")])
setup(packages=[*CODE, "mmtool.configs"], package_dir={"mmtool.configs": "configs"},
      package_data={"mmtool.configs": ["**/*.yaml", "**/*.json"]})
