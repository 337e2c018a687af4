"""Locating and loading the shared MNIST arrays (kept apart so the trainer can import it cheaply)."""

import os

import numpy as np

# models/ is one level below the repository root; shared data lives beside the repository.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_REL = os.path.join("shared", "data", "mnist.npz")


def mnist_candidates():
    """Places searched for mnist.npz, most specific first."""
    out = []
    env = os.environ.get("QCNN_SHARED")
    if env:
        out.append(os.path.join(env, "data", "mnist.npz"))
    out.append(os.path.join(os.path.dirname(_REPO_ROOT), MNIST_REL))
    out.append(os.path.join(os.path.dirname(os.getcwd()), MNIST_REL))
    return out


def load_mnist(path=None):
    """Return a dict with x_train, y_train, x_test, y_test (uint8) from mnist.npz.

    `path` may be the .npz file itself; otherwise `<repo root>/../shared/data/mnist.npz`
    (or $QCNN_SHARED/data/mnist.npz) is used. Raises FileNotFoundError naming the places tried.
    """
    tried = [path] if path is not None else mnist_candidates()
    for p in tried:
        if p is not None and os.path.isfile(p):
            with np.load(p) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            return arrays
    raise FileNotFoundError("mnist.npz not found; looked in: " + ", ".join(str(p) for p in tried))
