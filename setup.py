"""Build of the optional compiled PLAID stages; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "medcolbert.search._plaid_cpu",
            sources=["medcolbert/search/_plaid_cpu.c"],
            extra_compile_args=["-O3", "-std=c11"],
            # Without a C compiler the install still succeeds; search then runs the torch engine.
            optional=True,
        )
    ]
)
