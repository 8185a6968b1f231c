"""Build of the optional compiled PLAID stages, and of the released checkpoints as package data."""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

# The released models a wheel carries, so that `pip install medcolbert` gives the default model with no
# download (checkpoints/ stays the one place they live in the repository).
# The default pair only (90 MB): earlier releases stay in the repository's checkpoints/, loadable by path.
PACKAGED_CHECKPOINTS = ("medcolbert-minilm-v5", "dense-minilm-v2")


class BuildWithCheckpoints(build_py):
    """build_py that also copies the released checkpoints into medcolbert/checkpoints/ of the build."""

    def run(self) -> None:
        super().run()
        for name in PACKAGED_CHECKPOINTS:
            src = Path("checkpoints") / name
            if (src / "model.safetensors").is_file():
                shutil.copytree(src, Path(self.build_lib) / "medcolbert" / "checkpoints" / name, dirs_exist_ok=True)


setup(
    cmdclass={"build_py": BuildWithCheckpoints},
    ext_modules=[
        Extension(
            "medcolbert.search._plaid_cpu",
            sources=["medcolbert/search/_plaid_cpu.c"],
            # No FMA contraction: decompression gives the same float32 values as the torch stages.
            # -fopenmp-simd honours the file's `omp simd` loop hints; it needs no OpenMP runtime.
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-fopenmp-simd"],
            # Without a C compiler the install still succeeds; search then runs the torch engine.
            optional=True,
        )
    ]
)
