"""Known traffic against the example models, with what the client saw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from sidecar.examples import MODEL_REPOSITORY

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class Sent:
    """What a traffic run sent and got back."""

    ok: Counter[str] = field(default_factory=Counter)  # model → OK requests
    rows: Counter[str] = field(default_factory=Counter)  # model → rows answered OK
    classes: Counter[str] = field(default_factory=Counter)  # digits class name → rows
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model label, code)


def _input(x: np.ndarray) -> triton.InferInput:
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def send_example_traffic(address: str, requests: int = 12, seed: int = 0) -> Sent:
    """Digits and diabetes requests of 1-5 rows, plus one NOT_FOUND and one INVALID_ARGUMENT."""
    rng = np.random.default_rng(seed)
    digits = np.load(MODEL_REPOSITORY / "digits" / "holdout_features.npy").astype(np.float32)
    diabetes = np.load(MODEL_REPOSITORY / "diabetes" / "reference.npy").astype(np.float32)
    client = triton.InferenceServerClient(address)
    sent = Sent()
    try:
        for _ in range(requests):
            rows = int(rng.integers(1, 6))
            x = digits[rng.choice(len(digits), rows, replace=False)]
            probabilities = client.infer("digits", [_input(x)]).as_numpy("probabilities")
            assert probabilities is not None
            sent.ok["digits"] += 1
            sent.rows["digits"] += rows
            sent.classes.update(DIGIT_NAMES[i] for i in probabilities.argmax(axis=1))

            rows = int(rng.integers(1, 6))
            x = diabetes[rng.choice(len(diabetes), rows, replace=False)]
            client.infer("diabetes", [_input(x)])
            sent.ok["diabetes"] += 1
            sent.rows["diabetes"] += rows
        for model, x, code in (
            ("no-such-model", digits[:1], "NOT_FOUND"),
            ("digits", diabetes[:1], "INVALID_ARGUMENT"),
        ):
            try:
                client.infer(model, [_input(x)])
            except InferenceServerException as exc:
                assert code in str(exc.status()), exc
                sent.errors[("" if code == "NOT_FOUND" else model, code)] += 1
            else:
                raise AssertionError(f"{model} with {x.shape} should fail with {code}")
    finally:
        client.close()
    return sent
