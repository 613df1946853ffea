"""The two compiled modules, both optional: the helpers of the userspace data plane (checksums,
TSO segmentation, recvmmsg and TUN read bursts; vpn_gw/accel) and the per-packet path of AEAD
ESP SAs with its anti-replay window (esp/compiled.py; linked against the system libcrypto).
``optional=True``: if one cannot be built (no C compiler, no Python or OpenSSL headers) the
install still succeeds and the pure-Python code is used (docs/esp.md "Compiled helpers",
"Compiled ESP path"). Everything else about the package is in pyproject.toml."""
from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(ext_modules=[
    Extension("vpn_gw.accel._accel", sources=["vpn_gw/accel/_accel.c"], optional=True,
              extra_compile_args=_FLAGS),
    Extension("esp._aead", sources=["esp/_aead.c", "esp/chapoly.c", "esp/aesgcm.c"],
              depends=["esp/chapoly.h", "esp/aesgcm.h", "esp/xor_bytes.h"],
              libraries=["crypto"], optional=True, extra_compile_args=_FLAGS),
])
