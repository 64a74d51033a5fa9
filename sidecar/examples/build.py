"""Rebuild the bundled example models from data that scikit-learn ships.

``python -m sidecar.examples.build`` (needs the ``torch``, ``onnx`` and ``dev``
extras). Deterministic: seeded, single-threaded training, so a rebuild gives
the same weights on the same library versions.

Models written under ``sidecar/examples/models``:

- ``digits`` (ONNX): a 64→64→10 MLP on scikit-learn's 8×8 digits. Input
  ``input`` FP32 [-1, 64] (raw pixel values 0–16); outputs ``logits`` and
  ``probabilities`` FP32 [-1, 10]. ``reference.npy`` holds the training
  features for drift detection, ``holdout_*.npy`` rows the model never saw.
- ``digits_torch`` (TorchScript ``model.pt``) and ``digits_export``
  (torch.export ``model.pt2``): the same network and weights.
- ``diabetes`` (ONNX): a 10→32→1 MLP regressor on scikit-learn's diabetes
  data; input ``input`` FP32 [-1, 10]; output ``prediction`` FP32 [-1, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.examples import MODEL_REPOSITORY

SEED = 20261123


def _train_mlp(x: np.ndarray, y: np.ndarray, sizes: list[int], classify: bool, epochs: int) -> Any:
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 64):
            idx = perm[start : start + 64]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    return net


def _linear_weights(net: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    return [
        (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
        for m in net
        if isinstance(m, torch.nn.Linear)
    ]


def _onnx_mlp(
    weights: list[tuple[np.ndarray, np.ndarray]], n_in: int, outputs: dict[str, int], softmax: bool
) -> Any:
    """An ONNX graph of MatMul/Add/Relu layers, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    prev = "input"
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]))
        last = i == len(weights) - 1
        out = next(iter(outputs)) if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            prev = f"relu{i}"
    names = list(outputs)
    if softmax:
        nodes.append(helper.make_node("Softmax", [names[0]], [names[1]], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", d])
            for n, d in outputs.items()
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _Classifier:  # built lazily so importing this module needs no torch
    @staticmethod
    def wrap(net: Any) -> Any:
        import torch

        class DigitsClassifier(torch.nn.Module):
            """The MLP returning (logits, probabilities), like the ONNX graph."""

            def __init__(self, body: torch.nn.Module) -> None:
                super().__init__()
                self.body = body

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logits = self.body(x)
                return logits, torch.softmax(logits, dim=1)

        return DigitsClassifier(net).eval()


def _write_config(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build(root: Path = MODEL_REPOSITORY) -> None:
    """Train and write every example model under ``root``."""
    import onnx
    import torch
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    net = _train_mlp(x_tr / 16.0, y_tr, [64, 64, 10], classify=True, epochs=30)
    # Fold the /16 input scaling into the first layer so the model takes raw pixels.
    with torch.no_grad():
        net[0].weight /= 16.0
    weights = _linear_weights(net)
    model = _onnx_mlp(weights, 64, {"logits": 10, "probabilities": 10}, softmax=True)
    onnx.save(model, str(root / "digits" / "1" / "model.onnx"))
    np.save(root / "digits" / "reference.npy", x_tr)
    np.save(root / "digits" / "holdout_features.npy", x_ho)
    np.save(root / "digits" / "holdout_labels.npy", y_ho)

    wrapped = _Classifier.wrap(net)
    example = torch.from_numpy(x_tr[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what we ship
        traced = torch.jit.trace(wrapped, example)
        (root / "digits_torch" / "1").mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(root / "digits_torch" / "1" / "model.pt"))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    exported = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
    (root / "digits_export" / "1").mkdir(parents=True, exist_ok=True)
    torch.export.save(exported, str(root / "digits_export" / "1" / "model.pt2"))

    diabetes = load_diabetes()
    dx = diabetes.data.astype(np.float32)
    dy = diabetes.target.astype(np.float32)
    mean, std = dx.mean(axis=0), dx.std(axis=0)
    y_scale = float(dy.std())
    y_mean = float(dy.mean())
    rnet = _train_mlp((dx - mean) / std, ((dy - y_mean) / y_scale)[:, None], [10, 32, 1], False, 60)
    rweights = _linear_weights(rnet)
    # Fold standardisation of inputs and de-standardisation of the target into the weights.
    w0, b0 = rweights[0]
    rweights[0] = (
        (w0 / std[:, None]).astype(np.float32),
        (b0 - (mean / std) @ w0).astype(np.float32),
    )
    w1, b1 = rweights[1]
    rweights[1] = ((w1 * y_scale).astype(np.float32), (b1 * y_scale + y_mean).astype(np.float32))
    rmodel = _onnx_mlp(rweights, 10, {"prediction": 1}, softmax=False)
    onnx.save(rmodel, str(root / "diabetes" / "1" / "model.onnx"))
    np.save(root / "diabetes" / "reference.npy", dx)


def main() -> None:
    """Entry point for ``python -m sidecar.examples.build``."""
    for name in ("digits", "diabetes"):
        (MODEL_REPOSITORY / name / "1").mkdir(parents=True, exist_ok=True)
    build()
    print(f"wrote example models under {MODEL_REPOSITORY}")


if __name__ == "__main__":
    main()
