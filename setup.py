"""Build script for the compiled kernels (everything else is in setup.cfg).

Each ``hybrid_ps/**/_*.pyx`` is one Cython extension, compiled ahead of time by
``pip install`` (``-O3``, no fast-math: the kernels must round as numpy does).
"""

from __future__ import annotations

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

_KERNELS = {str(path.with_suffix("")).replace("/", "."): str(path)
            for path in sorted(Path("hybrid_ps").glob("**/_*.pyx"))}
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]

extensions = [
    Extension(name, [source], include_dirs=[numpy.get_include()], extra_compile_args=_FLAGS,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for name, source in _KERNELS.items()
]

setup(ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False,
                                                 "cdivision": True, "initializedcheck": False}))
