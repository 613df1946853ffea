"""Run a command inside a throwaway QEMU guest booted with Debian's 6.1 kernel.

Why: the machines this project runs its tests on have a kernel with the XFRM netlink API but
without ESP (and without XFRM interfaces), so kernel SAs can only be exercised in a guest. See
docs/xfrm.md ("Testing in a QEMU guest") for the measured timings.

How:

* Kernel: ``apt-get download`` of the package ``linux-image-amd64`` depends on (or
  ``$VPN_GW_GUEST_KERNEL_PKG``), ``dpkg-deb -x`` into the cache folder, ``depmod -b``, and the
  uncompressed ELF ``vmlinux`` cut out of ``vmlinuz`` (booted directly through its PVH entry,
  which is several seconds faster than a bzImage under TCG). Nothing under /boot changes.
* Cache: ``$VPN_GW_GUEST_CACHE`` or ``/var/cache/vpn-gw-guest`` (outside the work tree, so
  nothing to git-ignore). About 70 MB downloaded, 400 MB unpacked, reused across runs.
* Initramfs: a static busybox, the few modules needed to mount the host's root over virtio-9p
  (read-only) with a tmpfs overlay on top, and an /init that switch_roots into it. The guest
  therefore sees the host's Python, virtualenv, iproute2 and this repository at the same paths.
* Results: a second 9p share (read-write) mounted at /results in the guest. The command's
  output goes to /results/output.txt and its exit status to /results/rc; tests put their own
  files there too.
* Bounded: the guest powers off when the command ends (the command itself runs under
  ``timeout``); the host kills QEMU (by its PID) when ``timeout`` seconds pass.

Use::

    from tests.kernel_guest.runner import run_guest
    res = run_guest(".venv/bin/python -m pytest -q tests/kernel_guest/guest_tests", timeout=170)
    res.rc, res.output, res.results_dir, res.console

or from the shell: ``.venv/bin/python -m tests.kernel_guest.runner -- uname -a``.
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("/var/cache/vpn-gw-guest")
META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
# Modules the initramfs loads to mount the host root (dependencies are added from modules.dep).
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng")
INSTALL_HINT = ("install with: apt-get install --no-install-recommends qemu-system-x86 "
                "busybox-static kmod (scripts/setup.sh does this)")


class GuestError(RuntimeError):
    """The guest could not be prepared or started (the message says what is missing)."""


@dataclass
class Kernel:
    package: str
    version: str
    root: Path        # the unpacked package (lib/modules/<version> inside)
    vmlinux: Path     # uncompressed ELF with a PVH note

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


@dataclass
class GuestResult:
    rc: int | None            # the command's exit status; None if it never reported one
    output: str               # its stdout + stderr
    console: str              # the serial console (kernel messages, init errors)
    results_dir: Path         # the second 9p share, with whatever the command wrote
    elapsed: float
    timed_out: bool

    def describe(self, tail: int = 60) -> str:
        def last(text: str) -> str:
            return "\n".join(text.splitlines()[-tail:])
        return (f"guest rc={self.rc} timed_out={self.timed_out} after {self.elapsed:.1f}s\n"
                f"--- output (last {tail} lines) ---\n{last(self.output)}\n"
                f"--- console (last {tail} lines) ---\n{last(self.console)}")


# --------------------------------------------------------------------------- helpers

def cache_dir() -> Path:
    return Path(os.environ.get("VPN_GW_GUEST_CACHE") or DEFAULT_CACHE)


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise GuestError(f"command not found: {argv[0]} ({INSTALL_HINT})") from None
    except subprocess.TimeoutExpired:
        raise GuestError(f"timed out after {timeout}s: {' '.join(argv)}") from None
    return p


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def qemu_binary() -> str:
    q = shutil.which("qemu-system-x86_64")
    if q is None:
        raise GuestError(f"qemu-system-x86_64 not found; {INSTALL_HINT}")
    return q


def check_prerequisites() -> None:
    """Raise GuestError naming whatever is missing to boot a guest."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the runner downloads into the cache and QEMU shares / read-only)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (package qemu-system-x86)")
    if not BUSYBOX.exists():
        missing.append(f"{BUSYBOX} (package busybox-static)")
    if shutil.which("depmod") is None and not Path("/sbin/depmod").exists():
        missing.append("depmod (package kmod)")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing:
        raise GuestError("cannot start the kernel guest, missing: " + "; ".join(missing) + f" -- {INSTALL_HINT}")


# --------------------------------------------------------------------------- kernel

def kernel_package() -> str:
    """linux-image-6.1.0-N-amd64: what linux-image-amd64 currently depends on."""
    env = os.environ.get("VPN_GW_GUEST_KERNEL_PKG")
    if env:
        return env
    for attempt in range(2):
        p = _run(["apt-cache", "depends", META_PACKAGE], timeout=60)
        for line in p.stdout.splitlines():
            line = line.strip()
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split(":", 1)[1].strip()
        if attempt == 0:
            _run(["apt-get", "update", "-q"], timeout=300)
    cached = sorted(cache_dir().glob("linux-image-*-amd64/ready"))
    if cached:  # offline: use what was fetched before
        return cached[-1].parent.name
    raise GuestError(f"cannot find the kernel package: 'apt-cache depends {META_PACKAGE}' names none "
                     f"(run apt-get update, or set VPN_GW_GUEST_KERNEL_PKG)")


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    """Cut the compressed payload out of a bzImage (like the kernel's scripts/extract-vmlinux)."""
    data = vmlinuz.read_bytes()
    for magic, decomp in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08\x00", "gzip")):
        start = data.find(magic)
        while start >= 0:
            try:
                if decomp == "xz":
                    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
                    elf = d.decompress(data[start:])
                else:
                    elf = gzip.GzipFile(fileobj=__import__("io").BytesIO(data[start:])).read()
            except (lzma.LZMAError, OSError, EOFError):
                elf = b""
            if elf[:4] == b"\x7fELF":
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise GuestError(f"no xz/gzip-compressed ELF kernel found in {vmlinuz}")


def ensure_kernel(log=print) -> Kernel:
    """Download and unpack the kernel into the cache once; later calls reuse it."""
    check_prerequisites()
    pkg = kernel_package()
    base = cache_dir() / pkg
    with _locked(cache_dir() / ".lock"):
        if not (base / "ready").exists():
            t0 = time.monotonic()
            if base.exists():
                shutil.rmtree(base)
            dl = base / "download"
            dl.mkdir(parents=True)
            os.chmod(dl, 0o777)  # apt-get download runs as _apt when it can
            p = _run(["apt-get", "download", pkg], cwd=dl, timeout=600)
            if p.returncode != 0:
                _run(["apt-get", "update", "-q"], timeout=300)
                p = _run(["apt-get", "download", pkg], cwd=dl, timeout=600)
            debs = list(dl.glob("*.deb"))
            if p.returncode != 0 or not debs:
                raise GuestError(f"apt-get download {pkg} failed: {p.stderr.strip()[-500:]}")
            p = _run(["dpkg-deb", "-x", str(debs[0]), str(base / "root")], timeout=600)
            if p.returncode != 0:
                raise GuestError(f"dpkg-deb -x failed: {p.stderr.strip()}")
            shutil.rmtree(dl)
            versions = [d.name for d in (base / "root" / "lib" / "modules").iterdir()]
            if len(versions) != 1:
                raise GuestError(f"unexpected module folders in {pkg}: {versions}")
            version = versions[0]
            depmod = shutil.which("depmod") or "/sbin/depmod"
            p = _run([depmod, "-b", str(base / "root"), version], timeout=300)
            if p.returncode != 0:
                raise GuestError(f"depmod failed: {p.stderr.strip()}")
            extract_vmlinux(base / "root" / "boot" / f"vmlinuz-{version}", base / "vmlinux")
            (base / "ready").write_text(version + "\n")
            for old in cache_dir().glob("linux-image-*"):
                if old != base and old.is_dir():  # a previous kernel version: 400 MB each
                    shutil.rmtree(old, ignore_errors=True)
            log(f"kernel guest: {pkg} fetched and unpacked in {time.monotonic() - t0:.1f}s into {base}")
        version = (base / "ready").read_text().strip()
    return Kernel(pkg, version, base / "root", base / "vmlinux")


# --------------------------------------------------------------------------- initramfs

def _module_closure(kernel: Kernel, names: tuple[str, ...]) -> list[str]:
    """Relative paths of the modules (and their dependencies), dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.split(".ko")[0].replace("-", "_")] = mod
    builtin = {Path(x).name.split(".ko")[0].replace("-", "_")
               for x in (kernel.modules / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in reversed(deps.get(mod, [])):
            visit(d)
        order.append(mod)

    for n in names:
        n = n.replace("-", "_")
        if n in by_name:
            visit(by_name[n])
        elif n not in builtin:
            raise GuestError(f"kernel module {n} not found in {kernel.modules}")
    return order


class _Cpio:
    """Writer for the "newc" cpio format the kernel unpacks as initramfs."""

    def __init__(self):
        self.buf = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        self.ino += 1
        self.buf += hdr.encode() + nb
        self.buf += b"\0" * (-len(self.buf) % 4)
        self.buf += data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.buf)


INIT = r"""#!/bin/busybox sh
# Stage 1 (initramfs): mount the host root read-only over 9p with a tmpfs overlay, then
# switch_root into it and run the stage-2 script the runner left in the results share.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /hostroot /rw /newroot
mount -t proc proc /proc
mount -t devtmpfs dev /dev
fail() { echo "vpn-gw-guest: $*"; echo o > /proc/sysrq-trigger; sleep 5; }
for m in $(cat /modules.list); do insmod "/modules/$m" || echo "vpn-gw-guest: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /hostroot \
  || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/hostroot,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "cannot mount the overlay"
mkdir -p "/newroot/lib/modules/@VERSION@" /newroot/results
mount --bind "/newroot@MODULES@" "/newroot/lib/modules/@VERSION@" || fail "cannot bind the modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/results \
  || fail "cannot mount the results share"
umount /proc
exec switch_root /newroot /bin/sh /results/stage2.sh
"""

STAGE2 = r"""#!/bin/sh
# Stage 2 (PID 1 in the host's root filesystem, overlaid): mount the usual pseudo file systems,
# run the command with a time limit, record its output and status, power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
# /tmp stays the host's (through the writable overlay): the repository may live there.
mkdir -p /run/netns /run/lock
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
hostname vpn-gw-guest
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 VPN_GW_IN_GUEST=1 PYTHONDONTWRITEBYTECODE=1
@ENV@
modprobe virtio_rng 2>/dev/null
cd "@CWD@"
echo "vpn-gw-guest: running command (limit @LIMIT@s)"
timeout -k 5 @LIMIT@ /bin/sh /results/command.sh > /results/output.txt 2>&1
echo $? > /results/rc
sync
echo "vpn-gw-guest: command finished, powering off"
echo o > /proc/sysrq-trigger
sleep 10
"""


def build_initramfs(kernel: Kernel) -> Path:
    """The initramfs for this kernel (cached next to it)."""
    with _locked(cache_dir() / ".lock"):
        return _build_initramfs(kernel)


def _build_initramfs(kernel: Kernel) -> Path:
    out = kernel.root.parent / "initramfs.cpio"
    digest = hashlib.sha256(INIT.encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    stamp = f"{kernel.version} {digest} {INITRAMFS_MODULES}"
    stamp_file = kernel.root.parent / "initramfs.stamp"
    if out.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return out
    mods = _module_closure(kernel, INITRAMFS_MODULES)
    cpio = _Cpio()
    for d in ("bin", "modules", "dev", "proc", "sys", "hostroot", "newroot", "rw"):
        cpio.dir(d)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    names = []
    for m in mods:
        name = Path(m).name
        cpio.file(f"modules/{name}", (kernel.modules / m).read_bytes())
        names.append(name)
    cpio.file("modules.list", ("\n".join(names) + "\n").encode())
    modules_on_host = str(kernel.modules)
    init = INIT.replace("@VERSION@", kernel.version).replace("@MODULES@", modules_on_host)
    cpio.file("init", init.encode(), 0o755)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(cpio.finish())
    tmp.replace(out)
    stamp_file.write_text(stamp)
    return out


# --------------------------------------------------------------------------- run

def run_guest(command: str, *, timeout: float = 170.0, cwd: Path | str = ROOT, memory: int = 1024,
              smp: int = 2, env: dict[str, str] | None = None, results_dir: Path | None = None,
              log=print) -> GuestResult:
    """Boot the guest, run ``command`` (a shell command line) in ``cwd``, power off.

    The whole run (boot included) is bounded by ``timeout`` seconds. Raises GuestError when the
    guest cannot be prepared or started; a command that fails or a guest that hangs is
    reported in the GuestResult (rc != 0, or rc None and timed_out)."""
    t0 = time.monotonic()
    kernel = ensure_kernel(log=log)
    initrd = build_initramfs(kernel)
    qemu = qemu_binary()
    if results_dir is None:
        results_dir = Path(tempfile.mkdtemp(prefix="vpn-gw-guest-"))
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "output.txt", "console.log"):
        (results_dir / stale).unlink(missing_ok=True)
    # The command gets the time left after boot; keep a margin for boot and power-off.
    limit = max(10, int(timeout - 25))
    env_lines = "\n".join(f"export {k}='{v}'" for k, v in (env or {}).items())
    (results_dir / "stage2.sh").write_text(
        STAGE2.replace("@ENV@", env_lines).replace("@CWD@", str(cwd)).replace("@LIMIT@", str(limit)))
    (results_dir / "command.sh").write_text(command + "\n")
    console = results_dir / "console.log"
    argv = [
        qemu, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", str(memory), "-smp", str(smp),
        "-kernel", str(kernel.vmlinux), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=4 random.trust_cpu=on",
        "-display", "none", "-vga", "none", "-nic", "none", "-no-reboot", "-monitor", "none",
        "-serial", f"file:{console}",
        "-device", "virtio-rng-pci",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results_dir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
    ]
    left = timeout - (time.monotonic() - t0)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        raise GuestError(f"cannot start QEMU: {e}") from None
    timed_out = False
    try:
        qemu_out, _ = proc.communicate(timeout=max(left, 5))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the process group QEMU leads (start_new_session)
        qemu_out, _ = proc.communicate()
    qemu_text = qemu_out.decode(errors="replace") if qemu_out else ""
    elapsed = time.monotonic() - t0
    console_text = console.read_text(errors="replace") if console.exists() else ""
    rc_file = results_dir / "rc"
    rc = int(rc_file.read_text().strip()) if rc_file.exists() and rc_file.read_text().strip() else None
    output = (results_dir / "output.txt").read_text(errors="replace") if (results_dir / "output.txt").exists() else ""
    if rc is None and not timed_out and "vpn-gw-guest: running command" not in console_text:
        raise GuestError(f"the guest did not start (QEMU exit {proc.returncode}): {qemu_text.strip()[-1500:]}\n"
                         f"--- console ---\n{console_text[-3000:]}")
    if qemu_text.strip():
        console_text += "\n--- qemu ---\n" + qemu_text
    return GuestResult(rc, output, console_text, results_dir, elapsed, timed_out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run a command in the kernel guest")
    ap.add_argument("--timeout", type=float, default=170.0)
    ap.add_argument("--results", type=Path, default=None, help="results folder (default: a temp dir)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")
    import shlex
    try:
        res = run_guest(shlex.join(cmd) if len(cmd) > 1 else cmd[0], timeout=args.timeout,
                        results_dir=args.results, log=lambda m: print(m, file=sys.stderr))
    except GuestError as e:
        print(f"kernel guest: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(res.output)
    print(f"[guest rc={res.rc} in {res.elapsed:.1f}s, results in {res.results_dir}]", file=sys.stderr)
    return res.rc if res.rc is not None else 3


if __name__ == "__main__":
    sys.exit(main())
