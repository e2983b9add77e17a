"""What people use today, kept verbatim as the reference that tests and benchmarks compare against.

- `DataCollatorCTCWithPadding`: the Hugging Face example's collator
  (transformers' examples/pytorch/speech-recognition/run_speech_recognition_ctc.py).
- `ARPA_EOS_LOOP`: the loop from the wav2vec2 + n-gram blog post (Patrick von Platen, "Boosting
  Wav2Vec2 with n-grams in Transformers") that adds the missing `</s>` to an ARPA file; it reads
  5gram.arpa and writes 5gram_correct.arpa in its working folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
            import torch  # here, so that importing the ARPA baseline does not load torch

            batch["attention_mask"] = batch["attention_mask"].to(torch.long)
        return batch


ARPA_EOS_LOOP = """\
with open ("5gram.arpa", "r") as read_file, open ("5gram_correct.arpa", "w") as write_file:
 has_added_eos = False
 for line in read_file:
  if not has_added_eos and "ngram 1=" in line:
   count = line.strip ().split ("=")[-1]
   write_file.write (line.replace (f"{count}", f"{int (count) + 1}"))
  elif not has_added_eos and "<s>" in line:
   write_file.write (line)
   write_file.write (line.replace ("<s>", "</s>"))
   has_added_eos = True
  else:
   write_file.write (line)
"""
