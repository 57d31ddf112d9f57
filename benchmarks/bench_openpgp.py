"""OpenPGP decrypt + verify: pgpy, the hub's GnuPG backend and what the hub picks, against gpg.

A CMO's ``gpg`` signs and encrypts a Parquet-like (incompressible) file of 1, 20 and 200 MB to the
sponsor's key. Each is decrypted and verified in one run:

* ``pgpy`` — :class:`cmohub.crypto.openpgp.PgpyBackend` (whole message in memory);
* ``gnupg backend`` — :class:`cmohub.crypto.gnupg.GnupgBackend` (``gpg`` streams file to file,
  the hub adds its packet scan and signature policy);
* ``hub (auto)`` — :func:`cmohub.crypto.openpgp.verify_decrypt` as the pipelines call it:
  pgpy up to ``Policy.stream_threshold`` (8 MiB), GnuPG above;
* ``gpg`` — the ``gpg`` command line alone, the reference.

Each library run is a fresh child process that loads and unlocks the keys first (a worker keeps
them), then times the call (best of 3; one pgpy run at 200 MB). Reported: seconds, speed relative to
gpg (gpg time / tool time: goal ≥ 0.5x), and peak memory: the extra resident set of the Python
process during the timed calls (its high-water mark reset just before them, /proc/self/clear_refs)
and the largest ``gpg`` child; goal ≤ 1.2 × payload + 100 MB. Also
shown: the first call's cost (passphrase and RSA private key rebuilt, then cached) and pgpy
signing a compressed payload with and without compression.

    python -m benchmarks openpgp              # 1, 20 and 200 MB
    python -m benchmarks openpgp 1 20         # other sizes (MB)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import measure_command, print_table

DEFAULT_SIZES_MB = (1, 20, 200)
PASSPHRASE = "benchmark passphrase"
MB = 1_000_000

CHILD = r"""
import gc, json, os, resource, sys, time
from pathlib import Path
from cmohub.crypto import openpgp as pgp
from cmohub.sensitive import Sensitive

work, message, backend_name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
repeats = int(sys.argv[4])
sender = pgp.load_public_key(work / "cmo.pub.asc")
recipient = pgp.load_secret_key(work / "hub.sec.asc", passphrase=Sensitive(sys.argv[5]))
backend = {"pgpy": pgp.pgpy_backend, "gnupg": pgp.gnupg_backend, "auto": lambda: None}[backend_name]()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

out = work / f"out-{backend_name}"
started = time.perf_counter()  # warm up on a 1 kB message: unlock and cache the key
pgp.verify_decrypt(work / "warm.pgp", sender=sender, recipient=recipient, out=out, backend=backend)
first_seconds = time.perf_counter() - started
out.unlink()
gc.collect()
before = rss()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set size to the current one
best = None
for _ in range(repeats):
    started = time.perf_counter()
    verified = pgp.verify_decrypt(message, sender=sender, recipient=recipient, out=out, backend=backend)
    elapsed = time.perf_counter() - started
    best = elapsed if best is None else min(best, elapsed)
    out.unlink()
peak = status("VmHWM")
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"seconds": best, "first": first_seconds, "extra": max(0, peak - before),
                  "children_peak": children, "backend": verified.backend}))
"""

COMPRESS_CHILD = r"""
import json, sys, time
from pathlib import Path
from cmohub.crypto import openpgp as pgp

work, payload = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
signer = pgp.load_secret_key(work / "cmo.sec.asc")
recipient = pgp.load_public_key(work / "hub.pub.asc")
pgp.sign_encrypt(b"warm up", signer=signer, recipients=[recipient], backend=pgp.pgpy_backend())
times = {}
for label, compress in (("zlib", True), ("auto", None)):
    started = time.perf_counter()
    pgp.sign_encrypt(payload, signer=signer, recipients=[recipient], compress=compress,
                     backend=pgp.pgpy_backend())
    times[label] = time.perf_counter() - started
print(json.dumps(times))
"""


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    for _ in range(3):  # gpg-agent fails a private-key operation now and then (see gnupg.py)
        done = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--yes", "--trust-model", "always",
             "--pinentry-mode", "loopback", "--passphrase", PASSPHRASE, *args],
            input=stdin, capture_output=True, check=False, timeout=3600,
        )  # fmt: skip
        if done.returncode == 0:
            return done
    raise RuntimeError(f"gpg {' '.join(args)} failed: {done.stderr.decode()[-500:]}")


SETUP_CHILD = r"""
import json, sys
from pathlib import Path
from cmohub.crypto.openpgp import generate_key, write_private
from cmohub.sensitive import Sensitive

work = Path(sys.argv[1])
hub = generate_key("Benchmark hub", "hub@bench.invalid", passphrase=Sensitive(sys.argv[2]))
cmo = generate_key("Benchmark CMO", "cmo@bench.invalid")
write_private(work / "hub.sec.asc", hub.armored)
(work / "hub.pub.asc").write_bytes(hub.public.armored)
write_private(work / "cmo.sec.asc", cmo.armored)
(work / "cmo.pub.asc").write_bytes(cmo.public.armored)
(work / "fingerprints.json").write_text(json.dumps({"hub": hub.fingerprint, "cmo": cmo.fingerprint}))
"""


def setup(work: Path) -> Path:
    """Keys (hub: protected; CMO) made in a child, and a GnuPG home for the CMO's gpg.

    This process never imports pgpy or cmohub: a child forked from a big parent would start
    with the parent's resident set counted in its peak.
    """
    measure_command([sys.executable, "-c", SETUP_CHILD, str(work), PASSPHRASE], label="keys")
    home = Path(tempfile.mkdtemp(prefix="bench-gpg-"))
    home.chmod(0o700)
    keys = (work / "cmo.sec.asc").read_bytes() + (work / "hub.sec.asc").read_bytes()
    _gpg(home, "--import", stdin=keys)
    return home


def make_warm_up(work: Path, home: Path) -> None:
    fingerprints = json.loads((work / "fingerprints.json").read_text())
    _gpg(home, "--local-user", fingerprints["cmo"], "--recipient", fingerprints["hub"],
         "--output", str(work / "warm.pgp"), "--sign", "--encrypt", stdin=os.urandom(1024))  # fmt: skip


def make_message(work: Path, home: Path, size_mb: int) -> Path:
    """An incompressible payload signed and encrypted by the CMO's gpg, as delivered."""
    fingerprints = json.loads((work / "fingerprints.json").read_text())
    payload = work / f"payload-{size_mb}.parquet"
    with payload.open("wb") as handle:
        handle.write(b"PAR1")
        remaining = size_mb * MB - 4
        while remaining > 0:
            chunk = os.urandom(min(remaining, 1 << 24))
            handle.write(chunk)
            remaining -= len(chunk)
    message = work / f"payload-{size_mb}.parquet.pgp"
    _gpg(home, "--local-user", fingerprints["cmo"], "--recipient", fingerprints["hub"],
         "--compress-algo", "none", "--output", str(message), "--sign", "--encrypt", str(payload))  # fmt: skip
    return message


def measure_library(work: Path, message: Path, backend: str, repeats: int) -> dict[str, Any]:
    measured = measure_command(
        [sys.executable, "-c", CHILD, str(work), str(message), backend, str(repeats), PASSPHRASE],
        label=f"{backend} {message.name}",
    )
    return dict(measured.result)


def measure_gpg(home: Path, message: Path, repeats: int) -> dict[str, Any]:
    out = message.with_suffix(".gpg-out")
    _gpg(home, "--output", str(out), "--decrypt", str(message))  # warm up the agent
    best = None
    peak = 0.0
    for _ in range(repeats):
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        measured = measure_command(
            ["gpg", "--homedir", str(home), "--batch", "--yes", "--trust-model", "always",
             "--pinentry-mode", "loopback", "--passphrase", PASSPHRASE, "--status-fd", "1",
             "--output", str(out), "--decrypt", str(message)],
            label="gpg",
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
        peak = max(peak, measured.peak_rss_mib)
    out.unlink(missing_ok=True)
    return {"seconds": best, "peak_mib": peak}


def _mib(value: float) -> str:
    return f"{value / (1 << 20):.0f}"


def main(argv: list[str]) -> None:
    if shutil.which("gpg") is None:
        print("gpg is not installed: nothing to compare against")
        return
    sizes = [int(a) for a in argv] or list(DEFAULT_SIZES_MB)
    work = Path(tempfile.mkdtemp(prefix="bench-openpgp-"))
    home = setup(work)
    make_warm_up(work, home)
    rows: list[list[object]] = []
    firsts: list[list[object]] = []
    try:
        for size in sizes:
            message = make_message(work, home, size)
            repeats = 3
            gpg = measure_gpg(home, message, repeats)
            payload_mib = size * MB / (1 << 20)
            budget = 1.2 * payload_mib + 100
            rows.append([f"{size} MB", "gpg", f"{gpg['seconds']:.2f}", "1.00x", "-",
                         f"{gpg['peak_mib']:.0f}", f"{budget:.0f}"])  # fmt: skip
            for backend in ("pgpy", "gnupg", "auto"):
                # pgpy holds a large message several times over: one run is enough there.
                runs = 1 if backend == "pgpy" and size >= 100 else repeats
                result = measure_library(work, message, backend, runs)
                speed = gpg["seconds"] / result["seconds"]
                label = "hub (auto)" if backend == "auto" else backend
                if backend == "gnupg":
                    label = "gnupg backend"
                rows.append([
                    f"{size} MB", f"{label} [{result['backend']}]", f"{result['seconds']:.2f}",
                    f"{speed:.2f}x", _mib(result["extra"]), _mib(result["children_peak"]),
                    f"{budget:.0f}",
                ])  # fmt: skip
                if backend in ("pgpy", "gnupg") and size == sizes[0]:
                    firsts.append([label, f"{result['first']:.3f}", f"{result['seconds']:.3f}"])
            message.unlink()
        print("decrypt + verify, speed relative to gpg (goal >= 0.5x), memory in MiB")
        print_table(
            ["size", "tool [backend used]", "seconds", "speed", "extra peak (py)",
             "gpg child peak", "budget"],
            rows,
        )  # fmt: skip
        print()
        print(f"first call on a 1 kB message (unlock, rebuild the private key) vs {sizes[0]} MB")
        print_table(["backend", "first call s", f"{sizes[0]} MB call s"], firsts)
        compress_size = min(20, max(sizes))
        payload = work / f"payload-{compress_size}.parquet"
        if payload.exists():
            measured = measure_command(
                [sys.executable, "-c", COMPRESS_CHILD, str(work), str(payload)],
                label="compress",
            )
            times = measured.result
            print()
            print(f"pgpy sign + encrypt of a {compress_size} MB Parquet-like payload")
            print_table(
                ["compression", "seconds", "relative"],
                [["ZLIB (pgpy's habit)", f"{times['zlib']:.2f}", f"{times['zlib'] / times['auto']:.1f}x"],
                 ["none (hub: already compressed)", f"{times['auto']:.2f}", "1.0x"]],
            )  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
