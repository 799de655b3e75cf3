"""Text classification with a Hugging Face ``Trainer``, tuned by PBT through ``popbt.transformers``.

Nothing is downloaded: the corpus is generated here (short "reviews" whose label is the sign
of their words' polarity, a negator flipping the word after it, 5% of labels noisy), the
tokenizer is a word-level one built from its vocabulary, and the model is a 2-layer BERT of
hidden size 32, randomly initialised from its config. PBT tunes AdamW's learning rate and
weight decay, the warmup (a fraction of the whole run) and the model's dropout. One interval
is 30 optimizer steps. Takes about a minute on a 2-core CPU, imports included::

    popbt run examples/hf_text_classification.py --workers 2
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from popbt import LogUniform, Uniform
from popbt.transformers import TransformersSpec

POSITIVE = "good great fine happy bright lovely".split()
NEGATIVE = "bad awful sad dark poor boring".split()
NEGATORS = "not never hardly".split()
NEUTRAL = [f"w{i}" for i in range(20)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
MAX_LENGTH = 24
TRAIN_SIZE, EVAL_SIZE, NOISE, DATA_SEED = 2000, 500, 0.05, 0

space = {
    "learning_rate": LogUniform(1e-4, 3e-2),
    "weight_decay": LogUniform(1e-4, 0.3),
    "warmup_steps": Uniform(0.0, 0.2),  # below 1: a fraction of the run's steps
    "hidden_dropout_prob": Uniform(0.0, 0.3),
}
metric = "eval_accuracy"
mode = "max"
population = 4
intervals = 5


def review(rng: random.Random) -> tuple[str, int]:
    """A few neutral words around sentiment words; the label is the sign of their sum."""
    while True:
        words, polarity = [rng.choice(NEUTRAL) for _ in range(rng.randint(4, 10))], 0
        for _ in range(rng.randint(1, 4)):
            negated = rng.random() < 0.1
            positive = rng.random() < 0.5
            phrase = [rng.choice(POSITIVE if positive else NEGATIVE)]
            if negated:
                phrase.insert(0, rng.choice(NEGATORS))
            polarity += 1 if positive != negated else -1
            at = rng.randint(0, len(words))
            words[at:at] = phrase
        if polarity:
            label = int(polarity > 0)
            return " ".join(words), label if rng.random() >= NOISE else 1 - label


@functools.cache
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the corpus' vocabulary, as a Transformers tokenizer."""
    vocab = {word: i for i, word in enumerate(SPECIAL + POSITIVE + NEGATIVE + NEGATORS + NEUTRAL)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


class Reviews(torch.utils.data.Dataset):
    """Tokenized reviews, padded to MAX_LENGTH: what the Trainer's default collator stacks."""

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        encoded = tokenizer()(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


@functools.cache
def splits() -> tuple[Reviews, Reviews]:
    """The same corpus for every member and worker (fixed seed), split train / eval."""
    rng = random.Random(DATA_SEED)
    texts, labels = zip(*(review(rng) for _ in range(TRAIN_SIZE + EVAL_SIZE)))
    return (
        Reviews(list(texts[:TRAIN_SIZE]), list(labels[:TRAIN_SIZE])),
        Reviews(list(texts[TRAIN_SIZE:]), list(labels[TRAIN_SIZE:])),
    )


def make_model(hparams: dict) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + NEGATORS + NEUTRAL),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
        hidden_dropout_prob=hparams["hidden_dropout_prob"],
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


spec = TransformersSpec(
    make_model,
    train_dataset=lambda: splits()[0],
    eval_dataset=lambda: splits()[1],
    compute_metrics=accuracy,
    steps=30,
    metric=metric,
    args={"per_device_train_batch_size": 32, "per_device_eval_batch_size": 500, "lr_scheduler_type": "linear"},
    intervals=intervals,
)
build, train, evaluate, save, load, apply = spec.functions
