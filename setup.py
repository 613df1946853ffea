"""The one compiled module: optional helpers of the userspace data plane (checksums, TSO
segmentation, recvmmsg and TUN read bursts; vpn_gw/accel). ``optional=True``: if it cannot be
built (no C compiler, no Python headers) the install still succeeds and the pure-Python code is
used (docs/esp.md "Compiled helpers"). Everything else about the package is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "vpn_gw.accel._accel",
    sources=["vpn_gw/accel/_accel.c"],
    optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)])
