"""The final model as an MLflow pyfunc: give it a support set and queries, it adapts and classifies.

One input row is one few-shot task:
    support_images  list of encoded images (PNG, JPEG ...: raw bytes, or their base64 text)
    support_labels  list of str, one per support image
    query_images    list of encoded images to classify
One output row per task:
    predictions     list of str, the predicted label of each query image
    scores          list of {label: probability}, one per query image

    >>> model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")          # or models:/<model id>
    >>> model.predict({"support_images": [png_a, png_b], "support_labels": ["a", "b"], "query_images": [png_q]})
       predictions                      scores
    0          [a]  [{'a': 0.93, 'b': 0.07}]

Over REST (`mlflow models serve`), images travel as base64 strings in JSON:
    {"dataframe_records": [{"support_images": ["iVBORw0...", ...], "support_labels": ["a", ...], "query_images": [...]}]}
MLflow hands a binary column's JSON strings to `predict` as the base64 text, still encoded, so images that are
valid strict base64 are decoded here; raw image files never are (their headers are not base64 text).

The model's device comes from `model_config={"device": "cuda"}` at load time (default "cpu").
This module imports mlflow at its top: only metadist.tracking's `log_model` imports it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow.pyfunc
import pandas as pd

ARTIFACT_KEY = "checkpoint"
# The model's Python part, logged as "models from code": MLflow runs this script at load time, so the logged
# model holds no pickled object (metadist checkpoints are pickle-free too).
ENTRY_SCRIPT = """\
import mlflow.models

from metadist.tracking.pyfunc_model import FewShotPyfunc

mlflow.models.set_model(FewShotPyfunc())
"""
INPUT_COLUMNS = ("support_images", "support_labels", "query_images")


def signature():
    """Input and output schema: lists per row (MLflow Array types), images as binary."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Schema

    return ModelSignature(
        inputs=Schema([
            ColSpec(Array(DataType.binary), "support_images"),
            ColSpec(Array(DataType.string), "support_labels"),
            ColSpec(Array(DataType.binary), "query_images"),
        ]),
        outputs=Schema([
            ColSpec(Array(DataType.string), "predictions"),
            ColSpec(Array(Map(DataType.double)), "scores"),
        ]),
    )  # fmt: skip


def image_bytes(image: Any, where: str) -> Any:
    """Encoded image bytes from raw bytes or base64 (text or bytes); arrays pass through for the classifier."""
    if isinstance(image, str):
        try:
            return base64.b64decode(image, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"{where}: a string image must be base64-encoded image bytes ({exc})") from exc
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = bytes(image)
        try:
            return base64.b64decode(image, validate=True)
        except binascii.Error:
            return image  # not base64 text: the encoded image itself
    return image


def _rows(model_input: Any) -> list[dict]:
    """One dict per task from a DataFrame, a dict (one task), or a list of dicts."""
    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    elif isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        rows = model_input
    else:
        raise TypeError(
            f"model input must be a DataFrame, a dict or a list of dicts with {list(INPUT_COLUMNS)}; "
            f"got {type(model_input).__name__}"
        )
    for i, row in enumerate(rows):
        missing = [c for c in INPUT_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"task {i}: missing column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    return rows


class FewShotPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # mlflow.pyfunc re-exports it lazily
    """Adapts the meta-trained checkpoint (artifact "checkpoint") to each row's support set, then classifies."""

    def load_context(self, context) -> None:
        from metadist.inference import FewShotClassifier  # lazily: torch and the model code load only here

        device = (context.model_config or {}).get("device", "cpu")
        self.classifier = FewShotClassifier.from_checkpoint(context.artifacts[ARTIFACT_KEY], device=device)

    # The DataFrame hint tells MLflow the schema comes from the signature, not from type hints.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        predictions, scores = [], []
        for i, row in enumerate(_rows(model_input)):
            support = [image_bytes(x, f"task {i}: support_images[{j}]") for j, x in enumerate(row["support_images"])]
            queries = [image_bytes(x, f"task {i}: query_images[{j}]") for j, x in enumerate(row["query_images"])]
            task = self.classifier.adapt(support, [str(label) for label in row["support_labels"]])
            result = self.classifier.classify(task, queries)
            predictions.append([p.label for p in result])
            scores.append([dict(p.scores) for p in result])
        return pd.DataFrame({"predictions": predictions, "scores": scores})
