"""The baseline: a plain transformers Trainer + peft script, run as `python -m bench.training.plain CONFIG.json`.

The same model, examples, LoRA settings, batches, learning rate, seed, steps and validation
evaluations as our worker is given, the examples through the chat template with the loss on
the answer only (as bench.quality's script), and nothing else: no checkpoints (a user's script
at the Trainer's defaults saves every 500 steps), no evaluation by generation, no publishing.
Prints one JSON object: training seconds and the tokens trained on.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from bench.quality.plain_script import _features


def main(config_path: str) -> dict[str, Any]:
    config = json.loads(Path(config_path).read_text())
    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    model: Any = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32)
    lora = LoraConfig(
        r=config["rank"],
        lora_alpha=config["alpha"],
        lora_dropout=config["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    def features(path: str) -> list[dict[str, list[int]]]:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        return [_features(tokenizer, row["prompt"], row["completion"]) for row in rows]

    train, validation = features(config["train_file"]), features(config["validation_file"])
    args = TrainingArguments(
        output_dir=config["work_dir"],
        max_steps=config["steps"],
        per_device_train_batch_size=config["batch_size"],
        per_device_eval_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        eval_strategy="steps",
        eval_steps=config["eval_every"],
        logging_steps=10,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=config["seed"],
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    epochs = config["steps"] * config["batch_size"] / len(train)
    return {"train_s": train_s, "tokens": epochs * sum(len(row["input_ids"]) for row in train)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
