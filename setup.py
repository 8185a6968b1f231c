"""Build of the optional compiled PLAID stages; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
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
