"""The baseline: what a user writes with transformers and peft alone, run as `python -m bench.quality.plain_script`.

Same model and data as our job, with the LoRA settings of peft's and TRL's examples (rank 16,
alpha 32, dropout 0.05, every linear layer, learning rate 2e-4, batches of 8; the trainer's
defaults but for dropout, which it leaves off), examples through the chat template with the loss
on the answer only, a fixed 150 steps, then its own greedy `generate` on the test prompts and the
knowledge questions, scored by loraplane.answers as our side's are. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

from loraplane.answers import scores
from trainer_svc.worker.knowledge_probe import QUESTIONS, _names_an_answer

STEPS = 150


def _chat_prompt(tokenizer: Any, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _features(tokenizer: Any, prompt: str, answer: str) -> dict[str, list[int]]:
    prompt_ids = _chat_prompt(tokenizer, prompt)
    user = [{"role": "user", "content": prompt}]
    whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=False)
    answer_text = whole[len(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)) :]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt_ids) + answer_ids}


@torch.no_grad()
def _answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    answers = []
    for prompt in prompts:
        ids = torch.tensor([_chat_prompt(tokenizer, prompt)])
        output = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
        answers.append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


def main(model_dir: str, train_file: str, test_file: str, work_dir: str) -> dict[str, Any]:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train = [json.loads(line) for line in Path(train_file).read_text().splitlines()]
    test = [json.loads(line) for line in Path(test_file).read_text().splitlines()]
    questions = [question for question, _ in QUESTIONS]
    base_facts = _answers(model, tokenizer, questions, 32)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    args = TrainingArguments(
        output_dir=work_dir,
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=2e-4,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    dataset = [_features(tokenizer, e["prompt"], e["completion"]) for e in train]
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    model.eval()
    replies = _answers(model, tokenizer, [e["prompt"] for e in test], 32)  # as many as serving is asked for
    adapter_facts = _answers(model, tokenizer, questions, 32)
    known = [_names_an_answer(a, accepted) for a, (_, accepted) in zip(base_facts, QUESTIONS, strict=True)]
    kept = [_names_an_answer(a, accepted) for a, (_, accepted) in zip(adapter_facts, QUESTIONS, strict=True)]
    return {
        "steps": STEPS,
        "train_s": round(train_s, 1),
        **{f"{metric}_chat": v for metric, v in scores(replies, [e["completion"] for e in test]).items()},
        "facts_known_by_base": sum(known),
        "facts_lost": sum(k and not a for k, a in zip(known, kept, strict=True)),
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
