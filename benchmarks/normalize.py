"""Normalisation benchmark (issue 2): DICOM chest X-ray → two WebP images.

    .venv/bin/python benchmarks/normalize.py [--quick] [--out results.json]

Prints a markdown report to stdout (progress goes to stderr) covering:

1. Single-core throughput on the uncompressed full-size CR `RG1_UNCR.dcm` (1955x1841, 15-bit,
   MONOCHROME1): the fast path (`medvec.imaging.normalize.normalize_bytes`) against a naive float64 /
   LANCZOS / default-WebP reference written here, plus a per-stage breakdown of the fast path.
   The process is pinned to one CPU while these run; each measurement runs twice and the better
   round is kept (another process may be using the CPU at times).
2. Scaling of `medvec.ingest.batches.normalize_batch` across 1 and 2 worker processes.
3. Peak RSS (parent and worker processes) of a 200- and a 2,000-image batch, each batch in its
   own subprocess so its peak is isolated.
4. Decode cost and fast-path throughput of other transfer syntaxes (JPEG 2000, JPEG-LS, RLE).
5. Decoding at the output size (issue 20): the old path (full decode, then resize) against the new
   (JPEG 2000 / HTJ2K wavelet reduction, JPEG DCT scaling) per file, one core, with the grey difference.
   `--sections single,reduced` runs only sections 1 and 5.

Nothing under the project is written: sources, Medvec homes and outputs live in a temporary
folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT))

from medvec.imaging.normalize import NormalizeOptions  # noqa: E402 - after the sys.path fix above

SHARED_DX = ROOT.parent / "shared" / "data" / "dicom" / "DX-chest-PA-mono1-12bit-j2k-lossless.dcm"
TARGET_SPEEDUP = 4.0
TARGET_PER_CORE = 35.0
TARGET_RSS_MB = 1536.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine and versions ----------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("pydicom", "pillow", "numpy", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg",
                 "pylibjpeg-rle", "pyjpegls", "psutil"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        from PIL import features

        out["libwebp"] = features.version("webp") or "?"
    except Exception:  # noqa: BLE001 - informational only
        pass
    return out


class PinnedToOneCore:
    """Restrict this process to a single CPU (restored on exit, so later worker pools get both)."""

    def __init__(self):
        self.before = None
        self.cpu = None

    def __enter__(self):
        if hasattr(os, "sched_setaffinity"):
            self.before = os.sched_getaffinity(0)
            self.cpu = max(self.before)  # the last core: a little less busy with interrupts, usually
            os.sched_setaffinity(0, {self.cpu})
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            os.sched_setaffinity(0, self.before)


# --- the naive reference ---------------------------------------------------------------------

def naive_normalize(data: bytes, size: int = 512, thumb_size: int = 256) -> tuple[bytes, bytes]:
    """What a first implementation would do: float64 all the way, LANCZOS, default WebP effort."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array.astype(np.float64)
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        arr = 255.0 - arr
    full = Image.fromarray(np.rint(arr).astype(np.uint8))

    def lanczos(image, long_side):
        w, h = image.size
        scale = long_side / max(w, h)
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)

    view, thumb = lanczos(full, size), lanczos(full, thumb_size)
    out = []
    for image, quality in ((view, 90), (thumb, 80)):
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=quality)  # default method (4)
        out.append(buffer.getvalue())
    return out[0], out[1]


# --- timing helpers ----------------------------------------------------------------------------

def time_loop(fn, iterations: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    started = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {"iterations": iterations, "wall_s": wall, "images_per_s": iterations / wall,
            "mean_ms": 1000 * wall / iterations, "median_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times)}


def best_of(rounds: list[dict]) -> dict:
    best = max(rounds, key=lambda r: r["images_per_s"])
    return {**best, "rounds_images_per_s": [round(r["images_per_s"], 2) for r in rounds]}


def adaptive_loop(fn, max_iterations: int, budget_s: float, warmup: int = 1) -> list[float]:
    """Per-call seconds: at least 3 calls, at most `max_iterations`, stopping after `budget_s`."""
    for _ in range(warmup):
        fn()
    times, started = [], time.perf_counter()
    while len(times) < max_iterations and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# --- section 1: single core on RG1 ---------------------------------------------------------------

STAGES = [
    ("sha256", "content hash (sha256 of the file bytes)"),
    ("read_dataset", "read/parse (`dicom_read.read_dataset`)"),
    ("decode_first_frame", "decode (`dicom_read.decode_first_frame`)"),
    ("render_grey", "LUT render (`windowing.render_grey`)"),
    ("to_pil", "array → PIL image"),
    ("resize_view", "resize to 512 (`webp_output.fit_long_side`)"),
    ("resize_thumb", "resize 512 → 256 (`fit_long_side`)"),
    ("webp_view", f"WebP encode view (q90, method {NormalizeOptions().webp_method}; `encode_webp`)"),
    ("webp_thumb", f"WebP encode thumb (q80, method {NormalizeOptions().webp_method})"),
]


def stage_breakdown(data: bytes, iterations: int, warmup: int) -> dict:
    import numpy as np
    from PIL import Image

    from medvec.imaging.dicom import decode_first_frame, read_dataset
    from medvec.imaging.normalize import NormalizeOptions
    from medvec.imaging.webp import encode_webp, fit_long_side
    from medvec.imaging.windowing import render_grey

    opts = NormalizeOptions()
    samples: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    for i in range(warmup + iterations):
        t = [time.perf_counter()]
        hashlib.sha256(data).hexdigest()
        t.append(time.perf_counter())
        ds = read_dataset(data)
        t.append(time.perf_counter())
        frame = decode_first_frame(ds)
        t.append(time.perf_counter())
        grey = render_grey(frame.pixels, frame.dataset).pixels
        t.append(time.perf_counter())
        image = Image.fromarray(np.ascontiguousarray(grey))
        t.append(time.perf_counter())
        view = fit_long_side(image, opts.size)
        t.append(time.perf_counter())
        thumb = fit_long_side(view, opts.thumb_size)
        t.append(time.perf_counter())
        encode_webp(view, opts.quality, opts.webp_method)
        t.append(time.perf_counter())
        encode_webp(thumb, opts.thumb_quality, opts.webp_method)
        t.append(time.perf_counter())
        if i >= warmup:
            for (name, _), a, b in zip(STAGES, t, t[1:]):
                samples[name].append(b - a)
    medians = {name: 1000 * statistics.median(v) for name, v in samples.items()}
    return {"iterations": iterations, "median_ms": medians, "sum_ms": sum(medians.values())}


def section_single_core(rg1_path: Path, iterations: int, naive_iterations: int, rounds: int) -> dict:
    import numpy as np
    from PIL import Image

    from medvec.imaging.normalize import normalize_bytes
    from medvec.phi import Pseudonymizer

    data = rg1_path.read_bytes()
    pseudonymizer = Pseudonymizer(None, warn=False)

    def fast():
        return normalize_bytes(data, str(rg1_path), pseudonymizer=pseudonymizer)

    def fast_with_read():
        return normalize_bytes(rg1_path.read_bytes(), str(rg1_path), pseudonymizer=pseudonymizer)

    def naive():
        return naive_normalize(data)

    results = {"fast": [], "fast_with_read": [], "naive": [], "breakdown": []}
    with PinnedToOneCore() as pin:
        for r in range(rounds):
            log(f"single core, round {r + 1}/{rounds} (pinned to CPU {pin.cpu})")
            results["fast"].append(time_loop(fast, iterations, warmup=3))
            results["fast_with_read"].append(time_loop(fast_with_read, iterations, warmup=2))
            results["naive"].append(time_loop(naive, naive_iterations, warmup=1))
            results["breakdown"].append(stage_breakdown(data, iterations, warmup=2))
        sample_fast = fast()
        sample_naive = naive()

    out = {name: best_of(results[name]) for name in ("fast", "fast_with_read", "naive")}
    out["breakdown"] = min(results["breakdown"], key=lambda b: b["sum_ms"])
    out["breakdown"]["rounds_sum_ms"] = [round(b["sum_ms"], 2) for b in results["breakdown"]]
    out["speedup"] = out["fast"]["images_per_s"] / out["naive"]["images_per_s"]
    out["speedup_with_read"] = out["fast_with_read"]["images_per_s"] / out["naive"]["images_per_s"]
    out["pinned_cpu"] = pin.cpu

    # How close the two renderings are (not a quality metric; a check both render the same thing).
    a = np.asarray(Image.open(io.BytesIO(sample_fast.view_webp)).convert("L"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(sample_naive[0])).convert("L"), dtype=np.int16)
    out["outputs"] = {
        "fast_view": list(Image.open(io.BytesIO(sample_fast.view_webp)).size),
        "fast_view_bytes": len(sample_fast.view_webp), "fast_thumb_bytes": len(sample_fast.thumb_webp),
        "naive_view_bytes": len(sample_naive[0]), "naive_thumb_bytes": len(sample_naive[1]),
        "window_source": sample_fast.record.window_source,
        "mean_abs_diff_grey": float(np.abs(a - b).mean()) if a.shape == b.shape else None,
    }
    return out


# --- test data ---------------------------------------------------------------------------------

def write_copies(rg1_path: Path, folder: Path, count: int, transfer_syntax=None) -> list[Path]:
    """`count` distinct files (fresh SOPInstanceUIDs) with RG1's pixels, optionally re-encoded."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(rg1_path)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)  # once: the pixel data stays encapsulated for every copy
    paths = []
    for i in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"rg1-{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --- sections 2 and 3: batches in a subprocess ---------------------------------------------------

def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for c in children:
                out.append(int(c))
                stack.append(int(c))
    return out


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Current RSS (VmRSS) or the peak RSS of the process's current image (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples RSS of this process and all its descendants; keeps the peak of the sum and of each."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_total_kb = 0
        self.peak_self_kb = 0
        self.peak_child_kb = 0
        self.peak_child_hwm_kb = 0  # VmHWM: the kernel's own peak, catches spikes between samples
        self.max_children = 0
        self._halt = threading.Event()

    def run(self):
        me = os.getpid()
        while not self._halt.is_set():
            own = _rss_kb(me)
            pids = _descendants(me)
            kids = [_rss_kb(p) for p in pids]
            self.peak_child_hwm_kb = max([self.peak_child_hwm_kb, *(_rss_kb(p, "VmHWM") for p in pids)])
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_child_kb = max([self.peak_child_kb, *kids])
            self.peak_total_kb = max(self.peak_total_kb, own + sum(kids))
            self.max_children = max(self.max_children, len(kids))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def batch_child(spec_path: str) -> None:
    """Runs inside a fresh interpreter: one `normalize_batch`, then a JSON line on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    from medvec.ingest.batches import BatchManifest, normalize_batch
    from medvec.sources import SourceFile

    baseline_kb = _rss_kb(os.getpid())
    files = [SourceFile(uri=p, size=os.path.getsize(p), mtime=os.path.getmtime(p)) for p in spec["files"]]
    manifest = BatchManifest(batch=spec["batch"], source=spec["source"],
                             created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), files=files)
    stamps: list[float] = []
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    result = normalize_batch(manifest, Path(spec["home"]), workers=spec["workers"],
                             progress=lambda done, total: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - started
    sampler.stop()
    steady = None
    if len(stamps) >= 10:  # rate between the 10% and the last completion: worker start-up excluded
        first = len(stamps) // 10
        steady = (len(stamps) - 1 - first) / (stamps[-1] - stamps[first])
    print(json.dumps({
        "images": len(files), "workers": spec["workers"], "normalized": result.normalized,
        "errors": len(result.errors), "duplicates": len(result.duplicates), "records": len(result.records),
        "seconds": wall, "images_per_s": result.normalized / wall, "steady_images_per_s": steady,
        "first_result_s": (stamps[0] - started) if stamps else None,
        # ru_maxrss of a process started by fork/vfork + exec starts from the *launcher's* RSS at
        # that moment (Linux keeps the high-water mark across exec), so for this subprocess it
        # reports the benchmark's own size; VmHWM is the peak of this process image alone.
        "ru_maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_self_mb": _rss_kb(os.getpid(), "VmHWM") / 1024,
        "vmhwm_worker_max_mb": sampler.peak_child_hwm_kb / 1024,
        "ru_maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "sampled_peak_self_mb": sampler.peak_self_kb / 1024,
        "sampled_peak_child_mb": sampler.peak_child_kb / 1024,
        "sampled_peak_total_mb": sampler.peak_total_kb / 1024,
        "max_processes_seen": sampler.max_children,
        "baseline_after_imports_mb": baseline_kb / 1024,
    }))


def run_batch(paths: list[Path], workdir: Path, workers: int, label: str) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"home-{label}-", dir=workdir))
    spec = {"files": [str(p) for p in paths], "home": str(home), "workers": workers,
            "batch": f"bench-{label}", "source": str(paths[0].parent)}
    spec_path = workdir / f"spec-{label}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--batch-child", str(spec_path)],
                          capture_output=True, text=True, cwd=str(ROOT))
    shutil.rmtree(home, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"batch subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["normalized"] != len(paths) or result["errors"]:
        raise RuntimeError(f"batch {label}: normalised {result['normalized']} of {len(paths)}, "
                           f"{result['errors']} errors")
    return result


# --- section 4: other codecs ---------------------------------------------------------------------

def section_codecs(rg1_path: Path, workdir: Path, max_iterations: int, budget_s: float) -> list[dict]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.uid import JPEGLSLossless, RLELossless

    from medvec.imaging.dicom import decode_first_frame, read_dataset
    from medvec.imaging.normalize import normalize_bytes
    from medvec.phi import Pseudonymizer

    made = workdir / "codecs"
    made.mkdir(exist_ok=True)
    cases: list[tuple[str, Path, str]] = [("RG1_UNCR.dcm (baseline)", rg1_path, "pydicom-data")]
    for name in ("RG1_J2KR.dcm", "RG1_J2KI.dcm"):
        cases.append((name, Path(get_testdata_file(name)), "pydicom-data"))
    for label, syntax in (("RG1 → JPEG-LS lossless", JPEGLSLossless), ("RG1 → RLE lossless", RLELossless)):
        ds = pydicom.dcmread(rg1_path)
        ds.compress(syntax)
        path = made / f"rg1-{syntax.keyword}.dcm"
        ds.save_as(path, enforce_file_format=True)
        cases.append((label, path, f"made here: `ds.compress({syntax.keyword})`"))
    cases.append(("JPEGLSNearLossless_16.dcm", Path(get_testdata_file("JPEGLSNearLossless_16.dcm")), "pydicom"))
    if SHARED_DX.exists():
        cases.append((SHARED_DX.name, SHARED_DX, "../shared/data/dicom"))

    pseudonymizer = Pseudonymizer(None, warn=False)
    rows = []
    with PinnedToOneCore():
        for label, path, origin in cases:
            log(f"codec: {label}")
            data = path.read_bytes()
            header = pydicom.dcmread(path, stop_before_pixels=True)
            parse, decode = [], []

            def parse_and_decode():
                t0 = time.perf_counter()
                ds = read_dataset(data)
                t1 = time.perf_counter()
                decode_first_frame(ds)
                t2 = time.perf_counter()
                parse.append(t1 - t0)
                decode.append(t2 - t1)

            adaptive_loop(parse_and_decode, max_iterations, budget_s)
            parse, decode = parse[1:], decode[1:]  # drop the warm-up call
            full = adaptive_loop(lambda: normalize_bytes(data, str(path), pseudonymizer=pseudonymizer),
                                 max_iterations, budget_s)
            # pydicom picks the first plugin that was *registered*, not the fastest: time each one.
            by_plugin = {}
            syntax = header.file_meta.TransferSyntaxUID
            if syntax.is_compressed:
                plugins = get_decoder(syntax).available_plugins
                for plugin in plugins if len(plugins) > 1 else ():
                    def decode_with(plugin=plugin):
                        pixel_array(pydicom.dcmread(io.BytesIO(data)), decoding_plugin=plugin)
                    by_plugin[plugin] = 1000 * statistics.median(
                        adaptive_loop(decode_with, max(3, max_iterations // 3), budget_s / 2))
            rows.append({
                "file": label, "origin": origin, "transfer_syntax": header.file_meta.TransferSyntaxUID.name,
                "size": f"{header.Columns}x{header.Rows}", "bits_stored": int(header.BitsStored),
                "photometric": str(header.PhotometricInterpretation), "file_mb": len(data) / 1e6,
                "parse_ms": 1000 * statistics.median(parse), "decode_ms": 1000 * statistics.median(decode),
                "full_ms": 1000 * statistics.median(full), "full_images_per_s": 1 / statistics.median(full),
                "iterations": len(full), "decode_ms_by_plugin": by_plugin,
            })
    return rows


# --- section 5: decoding at the output size (issue 20) --------------------------------------------

REDUCED_TARGETS = {"J2K": 4.0, "HTJ2K": 4.0, "JPEG": 2.0}  # issue 20: speed-up of the new path over the old


def make_reduced_cases(workdir: Path) -> list[dict]:
    """The files of section 5: found (shared DX chest, RG1_J2KR) or made here (a DX-sized chest as JPEG 2000
    and HTJ2K, JPEG files). Each case is windowed by its header's VOI, as `normalize_bytes` does, unless
    its `window` says "percentile"."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless

    from medvec.imaging.windowing import render_grey

    made = workdir / "reduced"
    made.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(SHARED_DX if SHARED_DX.exists() else get_testdata_file("RG1_UNCR.dcm"))
    big, note = dx_sized_chest(source)
    path = made / "dx-sized-j2k.dcm"
    big_j2k = copy.deepcopy(big)  # a shallow Dataset.copy() shares elements: setting one sets both
    big_j2k.compress(JPEG2000Lossless)
    big_j2k.save_as(path, enforce_file_format=True)
    label = f"DX-sized chest 2500x3000 {source.BitsStored}-bit, JPEG 2000 lossless"
    cases = [{"label": label, "kind": "J2K", "path": str(path), "origin": note},
             {"label": label + ", percentile window", "kind": "J2K", "path": str(path), "origin": note,
              "window": "percentile"}]
    if SHARED_DX.exists():
        cases.append({"label": "DX chest PA 2000x2128, JPEG 2000 lossless", "kind": "J2K", "path": str(SHARED_DX),
                      "origin": "../shared/data/dicom"})
    cases.append({"label": "RG1_J2KR.dcm, JPEG 2000 lossless", "kind": "J2K",
                  "path": get_testdata_file("RG1_J2KR.dcm"), "origin": "pydicom-data"})
    for name, ds in (("DX-sized chest", big), (Path(source.filename).name, source)):
        htj2k = _htj2k_dicom(ds)
        if htj2k is not None:
            path = made / f"htj2k-lossless-{len(cases)}.dcm"
            path.write_bytes(htj2k)
            cases.append({"label": f"{name} pixels → HTJ2K lossless", "kind": "HTJ2K", "path": str(path),
                          "origin": "made here: itkwasm-htj2k (OpenJPH), 5 levels, one tile"})
    rg1 = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    grey = Image.fromarray(render_grey(rg1.pixel_array, rg1).pixels).resize((2500, 3000), Image.Resampling.BILINEAR)
    for mode, label in (("L", "grey"), ("RGB", "colour (YCbCr, 3 components)")):
        image = grey.convert(mode)
        if mode == "RGB":  # a faint tint so the channels differ and the colour path (not grey-rgb) runs
            arr = np.asarray(image).astype(np.int16)
            arr[..., 0] += 12
            arr[..., 2] -= 12
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        path = made / f"mimic-sized-{mode}.jpg"
        image.save(path, format="JPEG", quality=95)
        cases.append({"label": f"JPEG 2500x3000 q95, {label}", "kind": "JPEG", "path": str(path),
                      "origin": "made here: RG1 rendered, BILINEAR to 2500x3000, Pillow q95"})
    return cases


def dx_sized_chest(source):
    """`source` (a chest radiograph) at a DX detector's 2500x3000, uncompressed: bicubic-resized, then
    seeded Gaussian noise restores the source's median neighbour difference, which resizing smooths away
    (white noise: the hardest case for a reduced decode, since every level averages it differently)."""
    import numpy as np
    from PIL import Image
    from pydicom.uid import ExplicitVRLittleEndian

    pixels = source.pixel_array.astype(np.float32)
    resized = np.asarray(Image.fromarray(pixels, mode="F").resize((2500, 3000), Image.Resampling.BICUBIC))

    def roughness(a):
        return float(np.median(np.abs(np.diff(a, axis=1))))

    target, rng, sigma = roughness(pixels), np.random.default_rng(20), 0.0
    strip = resized[:512]
    while sigma < 4 * target and roughness(strip + rng.normal(0, sigma, strip.shape)) < target:
        sigma += target / 20
    top = 2 ** int(source.BitsStored) - 1
    noisy = np.clip(np.rint(resized + rng.normal(0, sigma, resized.shape)), 0, top).astype(np.uint16)
    ds = copy.deepcopy(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.Rows, ds.Columns = noisy.shape
    ds.PixelData = noisy.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    note = (f"made here: {Path(source.filename).name} bicubic to 2500x3000, Gaussian noise σ = {sigma:.0f} "
            f"(median neighbour difference {roughness(pixels):.0f} as in the source), "
            "`ds.compress(JPEG2000Lossless)` (pylibjpeg-openjpeg, 5 levels)")
    return ds, note


def _htj2k_dicom(source) -> bytes | None:
    """`source`'s pixels re-encoded as HTJ2K lossless (transfer syntax .201) in a DICOM file, or None."""
    try:
        import itkwasm_htj2k
        from itkwasm import Image as ItkImage, ImageType
    except ImportError:
        log("itkwasm-htj2k is not installed (dev extra): no HTJ2K row")
        return None
    import numpy as np
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    pixels = np.ascontiguousarray(source.pixel_array.astype(np.uint16))
    rows, cols = pixels.shape
    image = ItkImage(imageType=ImageType(dimension=2, componentType="uint16", pixelType="Scalar", components=1),
                     size=[cols, rows], data=pixels)
    stream = bytes(itkwasm_htj2k.encode(image, decompositions=5, not_reversible=False, tile_size=[cols, rows],
                                        tile_offset=[0, 0], block_dimensions=[64, 64]))
    ds = copy.deepcopy(source)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15  # OpenJPH writes 16-bit precision for uint16
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.201")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pipeline_at(data: bytes, target: int | None, options: NormalizeOptions) -> tuple:
    """`normalize_bytes`'s decode → render → resize → encode, with the decode's target size chosen:
    None is the old path (full decode), `options.size` what `normalize_bytes` does now."""
    import numpy as np
    from PIL import Image

    from medvec.imaging.dicom import decode_first_frame, read_dataset
    from medvec.imaging.colour import colour_or_grey, to_rgb8
    from medvec.imaging.raster import read_raster, sniff_raster
    from medvec.imaging.webp import encode_webp, fit_long_side
    from medvec.imaging.windowing import has_header_voi, render_grey

    if sniff_raster(data) and data[128:132] != b"DICM":
        pixels, _ = read_raster(data, target)
    else:
        ds = read_dataset(data)
        header_voi = options.window == "header"  # as normalize_bytes decodes and renders
        frame = decode_first_frame(ds, target, window_from_header=header_voi and has_header_voi(ds))
        pixels = (colour_or_grey(to_rgb8(frame.pixels, frame.colour_max))[0] if frame.is_colour
                  else render_grey(frame.pixels, frame.dataset, header_voi).pixels)
    decoded_shape = pixels.shape
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.ndim == 3 else "L")
    view = fit_long_side(image, options.size)
    thumb = fit_long_side(view, options.thumb_size)
    return (encode_webp(view, options.quality, options.webp_method),
            encode_webp(thumb, options.thumb_quality, options.webp_method), decoded_shape, view)


def reduced_child(spec_path: str) -> None:
    """Runs in a fresh interpreter pinned to one CPU: old and new path interleaved, repeat by repeat."""
    import numpy as np
    from PIL import Image

    spec = json.loads(Path(spec_path).read_text())
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    rows = []
    for case in spec["cases"]:
        options = NormalizeOptions(window=case.get("window", "header"))
        data = Path(case["path"]).read_bytes()
        old_view, _, old_shape, old_image = pipeline_at(data, None, options)  # also the warm-up
        new_view, _, new_shape, new_image = pipeline_at(data, options.size, options)
        pre_a = np.asarray(old_image.convert("L"), dtype=np.int16)
        pre_b = np.asarray(new_image.convert("L"), dtype=np.int16)
        old, new = [], []
        for _ in range(spec["repeats"]):
            for target, times in ((None, old), (options.size, new)):
                t0 = time.perf_counter()
                pipeline_at(data, target, options)
                times.append(time.perf_counter() - t0)
        a = np.asarray(Image.open(io.BytesIO(old_view)).convert("L"), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO(new_view)).convert("L"), dtype=np.int16)
        old_ms, new_ms = 1000 * statistics.median(old), 1000 * statistics.median(new)
        rows.append({**case, "file_mb": len(data) / 1e6, "repeats": len(old),
                     "old_ms": old_ms, "new_ms": new_ms, "speedup": old_ms / new_ms,
                     "old_min_ms": 1000 * min(old), "new_min_ms": 1000 * min(new),
                     "speedup_of_min": min(old) / min(new),
                     "old_ms_all": [round(1000 * t, 1) for t in old], "new_ms_all": [round(1000 * t, 1) for t in new],
                     "old_decoded": list(old_shape), "new_decoded": list(new_shape),
                     "view": [b.shape[1], b.shape[0]],
                     "mean_abs_grey_diff": float(np.abs(a - b).mean()) if a.shape == b.shape else None,
                     "max_abs_grey_diff": int(np.abs(a - b).max()) if a.shape == b.shape else None,
                     "mean_abs_grey_diff_before_webp": float(np.abs(pre_a - pre_b).mean())
                     if pre_a.shape == pre_b.shape else None})
        log(f"reduced: {case['label']}: {old_ms:.0f} → {new_ms:.0f} ms ({old_ms / new_ms:.2f}x)")
    print(json.dumps({"cpu": cpu, "rows": rows}))


def section_reduced(workdir: Path, repeats: int) -> dict:
    cases = make_reduced_cases(workdir)
    spec_path = workdir / "spec-reduced.json"
    spec_path.write_text(json.dumps({"cases": cases, "repeats": repeats}))
    load_before = [round(x, 2) for x in os.getloadavg()]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--reduced-child", str(spec_path)],
                          capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"reduced-decode subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    sys.stderr.write(proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["loadavg"] = [load_before, [round(x, 2) for x in os.getloadavg()]]
    return out


def render_reduced(sec: dict) -> list[str]:
    lines = ["## 5. Decoding at the output size (issue 20): old path against new, one core", "",
             f"A fresh interpreter pinned to CPU {sec['cpu']} runs, per file, `normalize_bytes`'s decode → render → "
             "resize to 512 and 256 → WebP (q90/q80, method 0) with the decode's target size None (old: full "
             "decode, then resize) and 512 (new: the largest JPEG 2000 reduction whose long side is ≥ 1.25 x 512 "
             "with the header's window, ≥ 1.5 x 512 with a percentile window, recentred; or libjpeg's smallest DCT "
             "scale ≥ 512), alternating old and new each repeat; medians of the repeats. "
             "Grey difference: the two 512 px WebP views decoded to grey, mean (and max) absolute difference in "
             "levels of 255, and the mean for the two 512 px views before WebP encoding (what "
             "tests/test_reduced_decode.py bounds at 1.5). "
             f"Load average before/after: {sec['loadavg'][0]} / {sec['loadavg'][1]}.", "",
             "| file | decoded (columns x rows) old → new | repeats | old ms (median) | new ms (median) | "
             "speed-up (target) | speed-up of the fastest repeats | grey diff of the WebP views, mean (max) | "
             "before WebP, mean |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sec["rows"]:
        shape = lambda s: "x".join(str(v) for v in (s[1], s[0]))  # noqa: E731 - columns x rows
        lines.append(f"| {r['label']} | {shape(r['old_decoded'])} → {shape(r['new_decoded'])} | {r['repeats']} | "
                     f"{r['old_ms']:.1f} | {r['new_ms']:.1f} | **{r['speedup']:.2f}x** (≥ {REDUCED_TARGETS[r['kind']]:g}x) | "
                     f"{r['speedup_of_min']:.2f}x ({r['old_min_ms']:.0f} / {r['new_min_ms']:.0f} ms) | "
                     f"{fmt(r['mean_abs_grey_diff'], 2)} ({r['max_abs_grey_diff']}) | "
                     f"{fmt(r['mean_abs_grey_diff_before_webp'], 2)} |")
    lines += ["", "Every repeat (ms, old / new): " + "; ".join(
        f"{r['label']}: {r['old_ms_all']} / {r['new_ms_all']}" for r in sec["rows"]), ""]
    return lines

# --- report ------------------------------------------------------------------------------------

def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def render_report(res: dict) -> str:
    m = res["machine"]
    lines = ["# Medvec normalisation benchmark", "",
             f"- command: `{res['command']}`",
             f"- date: {res['date']}",
             f"- machine: {m['cpu_model']}, {m['cpus']} usable cores, {m['memory_gb']:.0f} GB RAM, "
             f"{m['platform']}; load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
             "- libraries: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
             f"- mode: {'quick' if res['quick'] else 'full'}", ""]

    if "single_core" in res:
        lines += render_single_core(res["single_core"])
    if "scaling" in res:
        lines += render_batches(res["scaling"], res["memory"])
    if "codecs" in res:
        lines += render_codecs(res["codecs"])
    if "reduced" in res:
        lines += render_reduced(res["reduced"])
    lines += ["", f"Total benchmark time: {res['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def render_single_core(s1: dict) -> list[str]:
    f, fr, n = s1["fast"], s1["fast_with_read"], s1["naive"]
    lines = ["## 1. One core, RG1_UNCR.dcm (1955x1841, 15-bit, MONOCHROME1, 7.2 MB)", "",
              f"Process pinned to CPU {s1['pinned_cpu']}; each row is the better of "
              f"{len(f['rounds_images_per_s'])} rounds (every round's images/s in brackets).", "",
              "| pipeline | iterations | images/s | ms/image (mean) | ms/image (median) | rounds |",
              "|---|---:|---:|---:|---:|---|"]
    for label, r in (("fast: `normalize_bytes`, bytes in memory", f),
                     ("fast incl. file read (page cache warm)", fr),
                     ("naive: float64 + pydicom LUTs + LANCZOS + WebP method 4", n)):
        lines.append(f"| {label} | {r['iterations']} | **{fmt(r['images_per_s'])}** | {fmt(r['mean_ms'])} | "
                     f"{fmt(r['median_ms'])} | {r['rounds_images_per_s']} |")
    lines += ["",
              f"Speed-up fast / naive: **{s1['speedup']:.2f}x** (target ≥ {TARGET_SPEEDUP:g}x; "
              f"{s1['speedup_with_read']:.2f}x when the fast path also reads the file). "
              f"Fast path per core: **{f['images_per_s']:.1f} images/s** (target ≥ {TARGET_PER_CORE:g}).", ""]
    o = s1["outputs"]
    lines += [f"Outputs: view {o['fast_view'][0]}x{o['fast_view'][1]}, window from `{o['window_source']}`; "
              f"fast WebP {o['fast_view_bytes']:,} + {o['fast_thumb_bytes']:,} bytes, naive "
              f"{o['naive_view_bytes']:,} + {o['naive_thumb_bytes']:,} bytes; mean absolute grey-level "
              f"difference between the two 512 px views {fmt(o['mean_abs_diff_grey'], 2)} (of 255).", ""]

    b = s1["breakdown"]
    lines += ["### Fast path, per stage (median ms, one core)", "",
              "| stage | ms | share |", "|---|---:|---:|"]
    for name, label in STAGES:
        ms = b["median_ms"][name]
        lines.append(f"| {label} | {ms:.2f} | {100 * ms / b['sum_ms']:.0f}% |")
    lines += [f"| **sum of stages** | **{b['sum_ms']:.2f}** | |",
              f"| end-to-end `normalize_bytes` (median) | {f['median_ms']:.2f} | |", "",
              f"End-to-end minus the sum of stages: {f['median_ms'] - b['sum_ms']:+.2f} ms (record building and "
              "call overhead; negative when timing the stages one by one costs more than that). "
              "Rounds' stage sums: " + str(b["rounds_sum_ms"]) + " ms.", ""]

    return lines


def render_batches(sc: dict, mem: dict) -> list[str]:
    lines = [f"## 2. Scaling across processes: `normalize_batch`, {sc['images']} distinct RG1 copies", "",
              "Each run in a fresh interpreter with a fresh Medvec home; better of "
              f"{sc['rounds']} rounds. \"Steady\" is the completion rate after the first 10% of results "
              "(excludes spawning workers and importing medvec in them).", "",
              "| workers | seconds | images/s (overall) | images/s (steady) | first result after s |",
              "|---:|---:|---:|---:|---:|"]
    for w in ("1", "2"):
        r = sc["runs"][w]
        lines.append(f"| {w} | {fmt(r['seconds'], 2)} | **{fmt(r['images_per_s'])}** | {fmt(r['steady_images_per_s'])} | "
                     f"{fmt(r['first_result_s'], 2)} |")
    lines += ["", f"Scaling 1 → 2 workers: **{sc['scaling']:.2f}x** overall, {fmt(sc['scaling_steady'], 2)}x steady "
              "(2 cores: 2.0x is the ceiling; the parent also writes the WebP files and does the bookkeeping).", ""]

    lines += [f"## 3. Memory against batch size (workers=2, {mem['source_encoding']} sources)", "",
              mem["source_note"], "",
              "| images | seconds | images/s | parent peak MB (VmHWM) | max worker peak MB (VmHWM) | "
              "max worker MB (ru_maxrss, RUSAGE_CHILDREN) | sampled peak of parent + workers MB | "
              "parent after imports MB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in mem["runs"]:
        lines.append(f"| {r['images']:,} | {fmt(r['seconds'], 1)} | {fmt(r['images_per_s'])} | {fmt(r['vmhwm_self_mb'], 0)} | "
                     f"{fmt(r['vmhwm_worker_max_mb'], 0)} | {fmt(r['ru_maxrss_children_mb'], 0)} | "
                     f"**{fmt(r['sampled_peak_total_mb'], 0)}** | {fmt(r['baseline_after_imports_mb'], 0)} |")
    small, big = mem["runs"][0], mem["runs"][-1]
    bound = big["vmhwm_self_mb"] + 2 * max(big["vmhwm_worker_max_mb"], big["ru_maxrss_children_mb"])
    lines += ["", f"Upper bound for the {big['images']:,}-image batch (parent peak + 2 x max worker peak, whether or "
              f"not the peaks coincide): **{bound:,.0f} MB** (target < {TARGET_RSS_MB:,.0f} MB). "
              f"Growth from {small['images']:,} to {big['images']:,} images: parent "
              f"{big['vmhwm_self_mb'] - small['vmhwm_self_mb']:+.0f} MB, worker "
              f"{big['vmhwm_worker_max_mb'] - small['vmhwm_worker_max_mb']:+.0f} MB, sampled total "
              f"{big['sampled_peak_total_mb'] - small['sampled_peak_total_mb']:+.0f} MB. "
              "(The parent's own `ru_maxrss`, "
              f"{big['ru_maxrss_self_mb']:.0f} MB, is not used: Linux carries the launcher's RSS across exec into it.)", ""]

    return lines


def render_codecs(codecs: list[dict]) -> list[str]:
    lines = ["## 4. Other transfer syntaxes (one core)", "",
              "Median over the iterations shown; parse = `read_dataset`, decode = `decode_first_frame`, "
              "full = `normalize_bytes` end to end.", "",
              "| file | transfer syntax | size, bits, photometric | MB | parse ms | decode ms | full ms | full images/s | n |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in codecs:
        lines.append(f"| {r['file']} | {r['transfer_syntax']} | {r['size']}, {r['bits_stored']}-bit, {r['photometric']} | "
                     f"{r['file_mb']:.2f} | {r['parse_ms']:.1f} | {r['decode_ms']:.1f} | {r['full_ms']:.1f} | "
                     f"{r['full_images_per_s']:.1f} | {r['iterations']} |")
    plugin_rows = [r for r in codecs if r.get("decode_ms_by_plugin")]
    if plugin_rows:
        lines += ["", "Decode time by pydicom decoding plugin (`pixel_array(ds, decoding_plugin=...)`, parse included; "
                  "the `decode ms` column above is whichever plugin pydicom picks by default):", "",
                  "| file | " + " | ".join(f"plugin: {k}" for k in sorted({k for r in plugin_rows for k in r["decode_ms_by_plugin"]})) + " |",
                  "|---|" + "---:|" * len({k for r in plugin_rows for k in r["decode_ms_by_plugin"]})]
        names = sorted({k for r in plugin_rows for k in r["decode_ms_by_plugin"]})
        for r in plugin_rows:
            cells = [fmt(r["decode_ms_by_plugin"].get(k)) + " ms" if k in r["decode_ms_by_plugin"] else "—" for k in names]
            lines.append(f"| {r['file']} | " + " | ".join(cells) + " |")
    return lines


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and smaller batches (about a minute)")
    parser.add_argument("--out", type=Path, help="also write every number as JSON here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary DICOM copies go (default: the system temp folder)")
    parser.add_argument("--sections", default="single,batches,codecs,reduced",
                        help="comma-separated subset of single (1), batches (2 and 3), codecs (4), reduced (5)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per path in section 5 (default 7, --quick 3); the median is reported")
    parser.add_argument("--batch-child", help=argparse.SUPPRESS)
    parser.add_argument("--reduced-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_child:
        batch_child(args.batch_child)
        return 0
    if args.reduced_child:
        reduced_child(args.reduced_child)
        return 0
    sections = set(args.sections.split(","))
    unknown = sections - {"single", "batches", "codecs", "reduced"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    import logging

    logging.basicConfig(level=logging.WARNING)
    from pydicom.data import get_testdata_file

    started = time.perf_counter()
    quick = args.quick
    iterations, naive_iterations, rounds = (15, 5, 2) if quick else (60, 60, 3)
    scaling_images, scaling_rounds = (60, 1) if quick else (400, 2)
    memory_sizes = (200, 400) if quick else (200, 2000)
    codec_iterations, codec_budget = (3, 2.0) if quick else (15, 4.0)

    exe = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("../..") else sys.executable
    res: dict = {
        "command": shlex.join([exe, *(sys.argv if argv is None else [__file__, *argv])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {"cpu_model": cpu_model(), "cpus": len(usable_cpus()), "platform": platform.platform(),
                    "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
    }
    rg1 = Path(get_testdata_file("RG1_UNCR.dcm") or "")
    if not rg1.is_file():
        print("RG1_UNCR.dcm not found: install pydicom-data (`pip install pydicom-data`)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="medvec-bench-", dir=args.workdir))
    try:
        if "single" in sections:
            res["single_core"] = section_single_core(rg1, iterations, naive_iterations, rounds)
        if "reduced" in sections:
            res["reduced"] = section_reduced(workdir, args.repeats or (3 if quick else 7))
        if "batches" in sections:
            run_batch_sections(res, rg1, workdir, scaling_images, scaling_rounds, memory_sizes)
        if "codecs" in sections:
            res["codecs"] = section_codecs(rg1, workdir, codec_iterations, codec_budget)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_seconds"] = time.perf_counter() - started
    print(render_report(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=str))
        log(f"wrote {args.out}")
    return 0


def run_batch_sections(res: dict, rg1: Path, workdir: Path, scaling_images: int, scaling_rounds: int,
                       memory_sizes: tuple[int, ...]) -> None:
    """Sections 2 and 3: distinct copies of RG1 normalised in batches, each in a fresh interpreter."""
    # Sources for sections 2 and 3: distinct copies (image_id comes from SOPInstanceUID).
    count = max(max(memory_sizes), scaling_images)
    need = count * rg1.stat().st_size
    margin = 20 * 2**30
    if free_bytes(workdir) > need + margin:
        syntax, encoding = None, "uncompressed (explicit VR little endian)"
        note = (f"{count:,} distinct copies of RG1_UNCR.dcm with fresh SOPInstanceUIDs "
                f"({need / 2**30:.1f} GiB on disk, {free_bytes(workdir) / 2**30:.0f} GiB were free); "
                "files are freshly written, so reads come from the page cache.")
    else:
        from pydicom.uid import JPEGLSLossless

        syntax, encoding = JPEGLSLossless, "JPEG-LS lossless"
        note = (f"Not enough free disk for {count:,} uncompressed copies ({need / 2**30:.1f} GiB): RG1 was "
                "re-encoded once as JPEG-LS lossless and copied with fresh SOPInstanceUIDs.")
    log(f"writing {count} copies of RG1 ({encoding}) to {workdir}")
    t0 = time.perf_counter()
    copies = write_copies(rg1, workdir / "sources", count, syntax)
    log(f"wrote them in {time.perf_counter() - t0:.0f} s")

    runs: dict[str, list[dict]] = {"1": [], "2": []}
    for r in range(scaling_rounds):
        for workers in (1, 2):
            log(f"scaling: {scaling_images} images, workers={workers}, round {r + 1}/{scaling_rounds}")
            runs[str(workers)].append(run_batch(copies[:scaling_images], workdir, workers, f"s{workers}-{r}"))
    best = {w: max(v, key=lambda x: x["images_per_s"]) for w, v in runs.items()}
    for w, v in runs.items():
        best[w]["rounds_images_per_s"] = [round(x["images_per_s"], 2) for x in v]
    steady = (best["2"]["steady_images_per_s"] / best["1"]["steady_images_per_s"]
              if best["1"]["steady_images_per_s"] and best["2"]["steady_images_per_s"] else None)
    res["scaling"] = {"images": scaling_images, "rounds": scaling_rounds, "runs": best,
                      "scaling": best["2"]["images_per_s"] / best["1"]["images_per_s"], "scaling_steady": steady}

    mem_runs = []
    for size in memory_sizes:
        log(f"memory: batch of {size} images, workers=2")
        mem_runs.append(run_batch(copies[:size], workdir, 2, f"m{size}"))
    res["memory"] = {"source_encoding": encoding, "source_note": note, "runs": mem_runs}
    shutil.rmtree(workdir / "sources", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
