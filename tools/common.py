"""Helpers shared by qcnn-compare, qcnn-bench and qcnn-demo.

- where the shared data lives (../shared next to the repository, or $QCNN_SHARED);
- image folders: listing, ImageNet labels from `<wnid>_<name>.JPEG` file names, synthetic images;
- inputs for a .qcnn model from images (its stored preprocessing) or from an .npz of arrays;
- an onnxruntime session pinned to one thread, latency statistics, round-robin timing;
- peak RSS of "load a model and run it" measured in a fresh subprocess (so one engine's memory
  does not hide the other's);
- a description of the machine, printed with every measurement.

Run as `python -m qcnn.tools.common rss ENGINE MODEL INPUTS.npy` it is the RSS child process.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# ---------------------------------------------------------------------------------------------- data
def shared_dir() -> Optional[Path]:
    """The shared data folder: $QCNN_SHARED if set (even if missing: that simulates a fresh machine),
    else ../shared beside the repository or the current directory."""
    env = os.environ.get("QCNN_SHARED")
    if env:
        candidates = [Path(env)]
    else:
        candidates = [Path(__file__).resolve().parents[1].parent / "shared", Path.cwd().parent / "shared"]
    for c in candidates:
        if (c / "data").is_dir() or (c / "models").is_dir():
            return c
    return None


def list_images(folder) -> List[str]:
    """Image files of a folder, sorted by name (so runs are reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def read_imagenet_classes(path) -> Dict[str, int]:
    """`index wnid name` lines -> {wnid: index}."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[1]] = int(parts[0])
    return out


def find_classes_file(images_dir=None) -> Optional[Path]:
    """imagenet-classes.txt next to the image folder, or in the shared data folder."""
    cands = []
    if images_dir is not None:
        cands.append(Path(images_dir).parent / "imagenet-classes.txt")
    sd = shared_dir()
    if sd is not None:
        cands.append(sd / "data" / "imagenet-classes.txt")
    return next((c for c in cands if c.is_file()), None)


def labels_from_names(paths: Sequence[str], wnid_to_index: Dict[str, int]) -> Optional[np.ndarray]:
    """Class index per image from `<wnid>_<name>.ext` file names; None unless every name has a known wnid."""
    labels = []
    for p in paths:
        wnid = Path(p).name.split("_", 1)[0]
        if wnid not in wnid_to_index:
            return None
        labels.append(wnid_to_index[wnid])
    return np.asarray(labels, dtype=np.int64)


def write_synthetic_images(folder, count: int, size: int = 256, seed: int = 0) -> List[str]:
    """Smooth random colour images (upsampled low-resolution noise at a few scales), saved as PNG.

    Stand-ins for photos when no real images are available: smooth like natural images so
    convolution responses look more like real ones than white noise would.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"synthetic_{i:04d}.png"
        paths.append(str(path))
        if path.exists():
            continue
        img = np.zeros((size, size, 3), np.float32)
        for cells, weight in ((2, 1.0), (4, 0.6), (8, 0.4), (32, 0.2)):
            small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
            big = Image.fromarray(small, "RGB").resize((size, size), Image.BICUBIC)
            img += weight * np.asarray(big, np.float32)
        img /= 2.2
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path)
    return paths


def load_npz_inputs(path, input_shape: Sequence[int], count: Optional[int] = None):
    """(x, y) from an .npz: MNIST-style x_test/y_test uint8 (scaled by 1/255), or a float array `x`.

    x is reshaped to (N,) + input_shape; y is None when the file has no labels.
    """
    with np.load(path) as d:
        if "x_test" in d:
            x, y = d["x_test"], d["y_test"] if "y_test" in d else None
        elif "x" in d:
            x, y = d["x"], d["y"] if "y" in d else None
        else:
            raise ValueError(f"{path}: expected arrays x_test (+ y_test) or x (+ y), found {sorted(d.keys())}")
        if count is not None:
            x = x[:count]
            y = None if y is None else y[:count]
        x = np.asarray(x)
        y = None if y is None else np.asarray(y, dtype=np.int64)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    n = x.shape[0]
    if int(np.prod(x.shape[1:])) != int(np.prod(input_shape)):
        raise ValueError(f"{path}: samples have shape {x.shape[1:]}, the model wants {tuple(input_shape)}")
    return np.ascontiguousarray(x.reshape((n,) + tuple(input_shape))), y


def preprocess_images(paths: Sequence[str], preprocessing, input_shape) -> np.ndarray:
    """Images -> float32 (N, C, H, W) with the preprocessing stored in a .qcnn file."""
    from qcnn.runtime.preprocess import preprocess_images as _pre

    return _pre(list(paths), preprocessing, tuple(input_shape))


# ---------------------------------------------------------------------------------------------- engines
def ort_session(model, threads: int = 1, profile_prefix: Optional[str] = None):
    """onnxruntime CPU session with `threads` intra-op threads and 1 inter-op thread (sequential)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    src = model if isinstance(model, (bytes, str)) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def ort_runner(sess) -> Callable[[np.ndarray], np.ndarray]:
    """x (any shape with the right element count per image) -> first output as (N, -1)."""
    inp = sess.get_inputs()[0]
    dims = list(inp.shape)

    def run(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        shape = [n] + [d if isinstance(d, int) and d > 0 else -1 for d in dims[1:]]
        y = sess.run(None, {inp.name: x.reshape(shape).astype(np.float32, copy=False)})[0]
        return np.asarray(y).reshape(n, -1)

    return run


def qcnn_runner(model) -> Callable[[np.ndarray], np.ndarray]:
    """qcnn.runtime.Model -> x (N, ...) to first output as (N, -1)."""
    shape = tuple(model.input_shape[1:])

    def run(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        y = model.run(np.ascontiguousarray(x.reshape((n,) + shape), dtype=np.float32))
        y = y[0] if isinstance(y, list) else y
        return np.asarray(y).reshape(n, -1)

    return run


# ---------------------------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    if not len(values):
        raise ValueError("median of no values")
    return float(statistics.median(values))


def time_call(fn: Callable[[], object]) -> float:
    """Seconds taken by one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(fns: Dict[str, Callable[[], object]], runs: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Time each function `runs` times, round-robin (a, b, c, a, b, c, ...) after `warmup` rounds.

    Round-robin spreads slow phases of a shared machine (other jobs, frequency changes) evenly
    over the engines instead of penalising whichever happened to run during them.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(time_call(fn))
    return times


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- memory
def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux VmHWM of /proc/self/status: ru_maxrss would also count the parent's memory at fork
    time (the kernel carries the high-water mark across exec), inflating a small child's number.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024.0


def measure_rss(engine: str, model_path, inputs: np.ndarray, lut: str = "int8", isa: str = "auto",
                threads: int = 1, timeout: float = 600, dense: str = "auto") -> Dict[str, float]:
    """Peak RSS (MiB) of a fresh Python process that loads `model_path` with `engine` and runs `inputs`.

    Returns {"rss_mb": peak, "baseline_mb": peak after imports, before loading the model}.
    engine: "onnx" (onnxruntime) or "qcnn".
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qcnn-rss-") as tmp:
        npy = os.path.join(tmp, "inputs.npy")
        np.save(npy, np.ascontiguousarray(inputs, dtype=np.float32))
        cmd = [sys.executable, "-m", "qcnn.tools.common", "rss", engine, str(model_path), npy,
               "--lut", lut, "--isa", isa, "--dense", dense, "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS measurement for {engine} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_child(argv: List[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m qcnn.tools.common rss")
    p.add_argument("engine", choices=["onnx", "qcnn"])
    p.add_argument("model")
    p.add_argument("inputs")
    p.add_argument("--lut", default="int8")
    p.add_argument("--isa", default="auto")
    p.add_argument("--dense", default="auto")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    x = np.load(a.inputs)
    if a.engine == "onnx":
        import onnxruntime  # noqa: F401  (imports count as baseline, not as model memory)

        baseline = _peak_rss_mb()
        run = ort_runner(ort_session(a.model, threads=a.threads))
    else:
        from qcnn.runtime import Model

        baseline = _peak_rss_mb()
        run = qcnn_runner(Model(a.model, lut=a.lut, isa=a.isa, dense=a.dense))
    for i in range(x.shape[0]):
        run(x[i : i + 1])
    print(json.dumps({"rss_mb": round(_peak_rss_mb(), 1), "baseline_mb": round(baseline, 1)}))
    return 0


# ---------------------------------------------------------------------------------------------- machine
def machine_info(isa: str = "auto") -> Dict[str, object]:
    """CPU model, core counts, the ISA qcnn's kernels use, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    info: Dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                               "numpy": np.__version__}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:  # other jobs on the machine make latencies noisy: say how busy it was
        info["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        from qcnn.runtime import _core

        info["qcnn_isa"] = _core.isa_selected() if isa == "auto" else isa
    except Exception as exc:  # the compiled core may be missing on a broken install
        info["qcnn_isa"] = f"unavailable ({exc.__class__.__name__})"
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def machine_line(info: Dict[str, object]) -> str:
    usable = info.get("cores_usable")
    cores = f"{info['cores']} cores" + (f" ({usable} usable)" if usable and usable != info["cores"] else "")
    ort = f", onnxruntime {info['onnxruntime']}" if "onnxruntime" in info else ""
    load = f"; load average {info['load_average']}" if "load_average" in info else ""
    return (f"machine: {info['cpu']}, {cores}; qcnn ISA {info['qcnn_isa']}; Python {info['python']}, "
            f"numpy {info['numpy']}{ort}{load}")


def file_size(path) -> int:
    return os.path.getsize(path)


def human_bytes(n: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), as model sizes are usually quoted."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return f"{n:.2f} GB"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rss":
        sys.exit(_rss_child(sys.argv[2:]))
    print(__doc__)
