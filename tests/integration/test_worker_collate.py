from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq

from trainer_svc.dataset import PromptCompletion, TextExample
from trainer_svc.worker.collate import TrainedPositionsCollator, training_collator
from trainer_svc.worker.model import load_tokenizer
from trainer_svc.worker.tokenization import IGNORE_INDEX, tokenize_example

EXAMPLES = [
    PromptCompletion(prompt="What colour is the sky on a clear day?", completion="Blue."),
    PromptCompletion(prompt="Two and two?", completion="Four, as everyone knows."),
    PromptCompletion(prompt="Name a prime number greater than ten, please.", completion="Eleven."),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def model(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def _loss_and_gradients(model, batch: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_keeping_trained_positions_alone_changes_neither_loss_nor_gradients(model, tokenizer) -> None:
    features = [tokenize_example(example, tokenizer, "chat").features() for example in EXAMPLES]
    batch = TrainedPositionsCollator(tokenizer)(features)
    padded = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)(features)
    kept = batch["logits_to_keep"]
    assert 0 < len(kept) < padded["input_ids"].shape[1] - 1  # the prompts' positions are left out
    assert (batch["shift_labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()

    loss, gradients = _loss_and_gradients(model, batch)
    assert model(**batch).logits.shape[1] == len(kept)
    full_loss, full_gradients = _loss_and_gradients(model, padded)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    for gradient, full in zip(gradients, full_gradients, strict=True):
        torch.testing.assert_close(gradient, full, rtol=1e-4, atol=1e-6)


def test_text_examples_keep_every_position(tokenizer) -> None:
    features = [tokenize_example(TextExample(text="A whole document is trained."), tokenizer, "raw").features()]
    batch = TrainedPositionsCollator(tokenizer)(features)
    assert batch["logits_to_keep"].tolist() == list(range(len(features[0]["input_ids"]) - 1))


def test_a_model_without_logits_to_keep_gets_plain_padding(model, tokenizer) -> None:
    class Plain(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> None: ...

    assert isinstance(training_collator(model, tokenizer), TrainedPositionsCollator)
    assert isinstance(training_collator(Plain(), tokenizer), DataCollatorForSeq2Seq)
