"""The optional compiled packet path (relay/_accel.c), the one thing pyproject.toml cannot
declare without setuptools' "experimental" warning. ``optional=True``: without a C compiler,
the Python headers or libsrtp2 the build skips it and relay/accel.py runs its pure-Python twin.
Everything else is in pyproject.toml.

``PARLEY_LIBSRTP=PREFIX`` (scripts/setup.sh sets it): link the static libsrtp that
scripts/libsrtp.sh built there against OpenSSL, instead of Debian's libsrtp2 (built against
NSS); ``relay.accel.SRTP_CRYPTO`` then says "openssl"."""

import os
from pathlib import Path

from setuptools import Extension, setup

prefix = Path(os.environ.get("PARLEY_LIBSRTP", "") or "/nonexistent")
if (prefix / "lib" / "libsrtp2.a").is_file() and (prefix / "include" / "srtp2").is_dir():
    macros = [("PARLEY_SRTP_CRYPTO", '"openssl"')]
    libraries = ["crypto"]
    if Path("/usr/include/nettle/gcm.h").is_file():  # Debian's nettle-dev
        # SRTP's AES-GCM on Nettle (relay/_accel.c): fewer fixed costs per packet than OpenSSL 3
        macros.append(("PARLEY_SRTP_NETTLE", "1"))
        libraries.append("nettle")
    accel = Extension(
        "parley.relay._accel",
        sources=["relay/_accel.c"],
        include_dirs=[str(prefix / "include")],
        extra_objects=[str(prefix / "lib" / "libsrtp2.a")],
        depends=[str(prefix / "lib" / "libsrtp2.a")],  # relink when it was rebuilt
        libraries=libraries,
        # libsrtp's symbols stay inside the module (pylibsrtp carries its own copy)
        extra_link_args=["-Wl,--exclude-libs,ALL"],
        define_macros=macros,
        optional=True,
    )
else:
    accel = Extension(
        "parley.relay._accel",
        sources=["relay/_accel.c"],
        libraries=["srtp2"],
        optional=True,
    )

setup(ext_modules=[accel])
