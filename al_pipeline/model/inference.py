"""[embed/score] Running a model over pixel batches at one fixed batch shape.

Graph backends compile once per input shape, so every batch is padded to the same size.
On an accelerator the batch is large, since small batches are bound by the cost of each
call rather than by the device; on a CPU it stays small, where a large one gains nothing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from al_pipeline.model.devices import accelerator_memory, has_gpu

CPU_BATCH = 32
ACCELERATOR_BATCH = 512
# The free accelerator memory each batch size asks for: generous rules of thumb, not
# measured per backbone. A device with less (small, or shared) scores in smaller batches.
GIB = 1 << 30
MEMORY_FOR_BATCH = ((16 * GIB, 512), (8 * GIB, 256), (4 * GIB, 128))


def scoring_batch(gpu: bool | None = None, free: int | None = None) -> int:
    """The batch size to score with: large on a GPU, smaller where its free memory is
    short (``gpu`` and ``free``: already known, or None to ask the backend)."""
    if not (has_gpu() if gpu is None else gpu):
        return CPU_BATCH
    free = accelerator_memory() if free is None else free
    if free is None:
        return ACCELERATOR_BATCH
    return next((batch for need, batch in MEMORY_FOR_BATCH if free >= need), 64)


def predict_padded(
    model: object, inputs: NDArray[np.generic], batch_size: int
) -> NDArray[np.float32]:
    """``model.predict_on_batch`` on a fixed batch shape, padding the last batch.

    Pixels may be uint8: the model's input layer casts them inside the compiled graph, so
    a quarter of the bytes travel to the device.
    """
    count = len(inputs)
    if count < batch_size:
        pad = np.zeros((batch_size - count, *inputs.shape[1:]), dtype=inputs.dtype)
        inputs = np.concatenate([inputs, pad])
    outputs = model.predict_on_batch(inputs)  # type: ignore[attr-defined]
    return np.asarray(outputs, dtype=np.float32)[:count]
