"""The optional compiled packet path (relay/_accel.c), the one thing pyproject.toml cannot
declare without setuptools' "experimental" warning. ``optional=True``: without a C compiler,
the Python headers or libsrtp2 the build skips it and relay/accel.py runs its pure-Python twin.
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "parley.relay._accel",
            sources=["relay/_accel.c"],
            libraries=["srtp2"],
            optional=True,
        )
    ]
)
