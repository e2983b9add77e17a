"""The Hugging Face example's data collator, kept as the reference our batches are tested and
benchmarked against (transformers' examples/pytorch/speech-recognition/run_speech_recognition_ctc.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DataCollatorCTCWithPadding:
    """Pads input values with the processor's feature extractor and labels with -100."""

    processor: Any  # a Wav2Vec2Processor
    padding: bool | str = "longest"

    def __call__(self, features: list[dict]) -> dict:
        input_features = [{"input_values": f["input_values"]} for f in features]
        label_features = [{"input_ids": f["labels"]} for f in features]
        batch = self.processor.pad(input_features, padding=self.padding, return_tensors="pt")
        labels_batch = self.processor.pad(labels=label_features, padding=self.padding, return_tensors="pt")
        # replace padding with -100 to ignore loss correctly
        batch["labels"] = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if "attention_mask" in batch:
            batch["attention_mask"] = batch["attention_mask"].to(torch.long)
        return batch
