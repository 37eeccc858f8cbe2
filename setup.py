"""Builds the Cython rating kernel in ext/ as engine.rating._kernel_c.

Everything else about the package lives in pyproject.toml; this file exists
only because setuptools needs code to describe a compiled extension.
SETAPAY_KERNEL_DEBUG=1 builds with bounds checks and assertions on.
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SETAPAY_KERNEL_DEBUG") == "1"

extension = Extension(
    "engine.rating._kernel_c",
    sources=["ext/_kernel_c.pyx"],
    include_dirs=[numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    + ([] if DEBUG else ["-DNDEBUG"]),
)

setup(
    ext_modules=cythonize(
        [extension],
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": DEBUG,
        },
    ),
)
