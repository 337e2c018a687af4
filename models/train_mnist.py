"""Train the MNIST nets of the Q-CNN paper (dev-only; needs PyTorch, never imported by qcnn at run time).

    python models/train_mnist.py mlp3 mlp5 lenet [--epochs N] [--threads 2] [--data PATH]

Nets (input 1x1x28x28 float32 = pixel/255, output logits 1x10):
  mlp3   784-1000-10, ReLU                              (paper Table 2: 1.35% float test error)
  mlp5   784-1000-1000-1000-10, ReLU                    (paper Table 2: 1.12%)
  lenet  conv5x5x20-relu-maxpool2 -> conv5x5x50-relu-maxpool2 -> fc500-relu -> fc10

Training: Adam with a cosine learning-rate decay, small random affine augmentation (shift, rotation,
scale) on every batch, dropout on the hidden fully connected layers. Seeds are fixed and the thread count
is pinned; the committed .onnx files in models/onnx/ are the artifact (re-running reproduces them up to
floating-point summation order; the committed files were made with `lenet mlp3` at --threads 2 and
`mlp5 --threads 1`, see mnist_results.json). The test set is only used for the final report, never for selection.

The ONNX graph is written by hand with onnx.helper from the trained weights, so it contains only plain
ops (Flatten, Gemm, Relu, Conv, MaxPool) and carries the preprocessing in metadata_props.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcnn.schema.writer import write_atomic  # the installed package (pip install -e .)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _data import load_mnist  # noqa: E402  (plain import: this script runs outside the package)

OPSET = 13
PREPROCESS = {"scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0], "layout": "NCHW", "input": [1, 1, 28, 28]}
PAPER_ERR = {"mlp3": 1.35, "mlp5": 1.12, "lenet": None}
TARGET_ERR = {"mlp3": 1.6, "mlp5": 1.4, "lenet": 1.0}
# name -> (epochs, learning rate, dropout, seed)
RECIPES = {"mlp3": (40, 1e-3, 0.2, 1), "mlp5": (15, 1e-3, 0.2, 2), "lenet": (30, 1e-3, 0.3, 3)}


def make_torch_net(name, dropout):
    import torch.nn as nn

    if name == "mlp3":
        dims = [784, 1000, 10]
    elif name == "mlp5":
        dims = [784, 1000, 1000, 1000, 10]
    elif name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(800, 500), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(500, 10))
    else:
        raise ValueError(name)
    layers = [nn.Flatten()]
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def augment(x, gen):
    """Random affine per image: shift up to 2 px, rotation up to 10 degrees, scale 0.9-1.1."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    sc = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (2.0 / 14.0)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (2.0 / 14.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def train(name, data, epochs=None, threads=2, log=print):
    import torch
    import torch.nn.functional as F

    ep_default, lr, dropout, seed = RECIPES[name]
    epochs = epochs or ep_default
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed + 100)
    xtr = torch.from_numpy(data["x_train"].astype(np.float32) / 255.0).unsqueeze(1)
    ytr = torch.from_numpy(data["y_train"].astype(np.int64))
    net = make_torch_net(name, dropout)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bs = 128
    steps_per_epoch = math.ceil(len(xtr) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for ep in range(epochs):
        t0 = time.time()
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot, correct = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = augment(xtr[idx], gen), ytr[idx]
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        log(f"{name} epoch {ep + 1}/{epochs} loss {tot / len(xtr):.4f} "
            f"train-acc(aug) {100 * correct / len(xtr):.2f}% {time.time() - t0:.1f}s")
    net.eval()
    return net


def torch_error(net, data):
    import torch

    x = torch.from_numpy(data["x_test"].astype(np.float32) / 255.0).unsqueeze(1)
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return 100.0 * (pred.numpy() != data["y_test"]).mean()


def to_onnx(name, net):
    """Write the trained torch Sequential as a plain-op ONNX graph (batch 1)."""
    import torch.nn as nn

    nodes, inits = [], []
    cur = "input"
    k = 0
    for m in net:
        if isinstance(m, nn.Dropout):
            continue  # identity at inference
        k += 1
        out = f"{name}_{k}"
        if isinstance(m, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1, name=f"flatten{k}"))
        elif isinstance(m, nn.ReLU):
            nodes.append(helper.make_node("Relu", [cur], [out], name=f"relu{k}"))
        elif isinstance(m, nn.MaxPool2d):
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[2, 2], strides=[2, 2],
                                          name=f"pool{k}"))
        elif isinstance(m, nn.Conv2d):
            w, b = f"conv{k}_w", f"conv{k}_b"
            inits += [numpy_helper.from_array(m.weight.detach().numpy().astype(np.float32), w),
                      numpy_helper.from_array(m.bias.detach().numpy().astype(np.float32), b)]
            nodes.append(helper.make_node("Conv", [cur, w, b], [out], kernel_shape=list(m.kernel_size),
                                          strides=[1, 1], pads=[0, 0, 0, 0], name=f"conv{k}"))
        elif isinstance(m, nn.Linear):
            w, b = f"fc{k}_w", f"fc{k}_b"
            inits += [numpy_helper.from_array(m.weight.detach().numpy().astype(np.float32), w),
                      numpy_helper.from_array(m.bias.detach().numpy().astype(np.float32), b)]
            nodes.append(helper.make_node("Gemm", [cur, w, b], [out], transB=1, name=f"fc{k}"))
        else:
            raise TypeError(type(m))
        cur = out
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes, f"mnist-{name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="qcnn.models.train_mnist")
    model.ir_version = 8
    helper.set_model_props(model, {
        "qcnn.preprocess": json.dumps(PREPROCESS, sort_keys=True),
        "qcnn.dataset": "mnist",
        "qcnn.output": "logits",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_error(model_bytes, data):
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    x = data["x_test"].astype(np.float32) / 255.0
    wrong = 0
    for i in range(len(x)):
        logits = sess.run(None, {"input": x[i].reshape(1, 1, 28, 28)})[0]
        wrong += int(logits.argmax() != data["y_test"][i])
    return 100.0 * wrong / len(x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="+", choices=sorted(RECIPES))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "onnx"))
    args = ap.parse_args(argv)
    data = load_mnist(args.data)
    results_path = os.path.join(HERE, "mnist_results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    os.makedirs(args.out, exist_ok=True)
    for name in args.nets:
        t0 = time.time()
        net = train(name, data, args.epochs, args.threads, log=lambda s: print(s, flush=True))
        secs = time.time() - t0
        terr = torch_error(net, data)
        model = to_onnx(name, net)
        raw = model.SerializeToString()
        oerr = ort_error(raw, data)
        path = os.path.join(args.out, f"mnist-{name}.onnx")
        write_atomic(path, raw)
        epochs, lr, dropout, seed = RECIPES[name]
        results[f"mnist-{name}"] = {
            "file": f"onnx/mnist-{name}.onnx", "bytes": len(raw),
            "float_test_error_pct": round(oerr, 2), "torch_test_error_pct": round(terr, 2),
            "target_error_pct": TARGET_ERR[name], "paper_error_pct": PAPER_ERR[name],
            "epochs": args.epochs or epochs, "lr": lr, "dropout": dropout, "seed": seed,
            "train_seconds": round(secs, 1), "threads": args.threads, "augment": "affine shift2px rot10 scale0.1",
        }
        print(f"{name}: torch {terr:.2f}% onnxruntime {oerr:.2f}% ({len(raw)} bytes, {secs:.0f}s)", flush=True)
        write_atomic(results_path, (json.dumps(results, indent=2, sort_keys=True) + "\n").encode())


if __name__ == "__main__":
    main()
