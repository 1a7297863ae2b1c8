"""The inspect report on tiny file tasks: rendered text, token views, counts and packing, by hand."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys

import pytest
import seqio
import tensorflow as tf

from sft_jax.data import collections, inspection, preprocessors, vocabularies
from sft_jax.data.collections import files

tokenizers = pytest.importorskip("tokenizers")

# Byte tokens (+ EOS): inputs 13, 6, 7; targets 4, 2, 9.
ALPACA = [
    {"instruction": "Reverse", "input": "abc", "output": "cba"},
    {"instruction": "Upper", "output": "X"},
    {"instruction": "Say hi", "output": "hi there"},
]
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(REPO, "tools", "inspect_mixture.py")


@pytest.fixture
def alpaca_task(tmp_path):
  path = tmp_path / "tiny.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
  files.register_file_task("inspect_test.alpaca", str(path), "alpaca")
  yield "inspect_test.alpaca", str(path)
  seqio.TaskRegistry.remove("inspect_test.alpaca")


def test_report_on_a_file_task(alpaca_task):
  name, _ = alpaca_task
  report = inspection.inspect(name, "train", n=3, batch_size=2, input_length=32, target_length=8, num_batches=2)
  lines = report.splitlines()
  assert lines[0] == "=== inspect_test.alpaca (train): first 3 examples"
  # Rendered text and the token view of each example (shown in shuffled order).
  for block in ["[inputs]\nReverse\n\nabc\n[targets]\ncba\n"
                "[input tokens]\nR|e|v|e|r|s|e|\\n|\\n|a|b|c|<eos>\n[target tokens]\n[[c|b|a|<eos>]]",
                "[inputs]\nUpper\n[targets]\nX\n[input tokens]\nU|p|p|e|r|<eos>\n[target tokens]\n[[X|<eos>]]",
                "(7 input tokens, 9 target tokens)\n[inputs]\nSay hi\n[targets]\nhi there\n"]:
    assert block in report
  assert "=== example counts (train)\n  inspect_test.alpaca  3\n" in report
  # Best fit, largest first (encoder/32 + decoder/8): "Say hi" (7 + 9 cut to 8) fills a row's
  # decoder; "Reverse" (13 + 4) opens a second row, "Upper" (6 + 2) joins it.
  # Real tokens 7 + 8 + 13 + 4 + 6 + 2 = 40 of 2 * (32 + 8) = 80 slots.
  assert lines[-3:] == [
      "=== packing (BestFitPacker, batch_size 2, input_length 32, target_length 8)",
      "  batch 0: 2 rows, 3 examples (1.50 per row), 40/80 token slots filled (50.0%)",
      "  total: 1 batch, 2 rows, 3 examples (1.50 per row), token efficiency 50.0%; "
      "of 3 examples read: 0 inputs and 1 target truncated, 0 dropped",
  ]


def test_color_marks_weighted_tokens_with_ansi(alpaca_task):
  name, _ = alpaca_task
  report = inspection.format_examples(name, "train", n=3, color=True)
  assert "\x1b[32mc|b|a|<eos>\x1b[0m" in report and "[[" not in report


def _stream_dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  if split == "train":  # an unlimited stream, like the synthetic training splits
    generator = lambda: ({"inputs": "q", "targets": "a"} for _ in itertools.count())
  else:
    generator = lambda: iter([{"inputs": "q", "targets": "a"}] * 3)
  return tf.data.Dataset.from_generator(generator, output_signature={
      "inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)})


def test_counts_report_unlimited_streams_with_their_validation_split(alpaca_task):
  name, _ = alpaca_task
  seqio.TaskRegistry.add("inspect_test.stream",
                         source=seqio.FunctionDataSource(_stream_dataset_fn, splits=("train", "validation")),
                         output_features=preprocessors.text_to_text_features(),
                         preprocessors=list(preprocessors.TOKENIZE_AND_APPEND_EOS))
  seqio.MixtureRegistry.add("inspect_test.mixture", [(name, 1.0), ("inspect_test.stream", 1.0)])
  try:
    assert inspection.format_counts("inspect_test.mixture", "train", limit=10).splitlines() == [
        "=== example counts (train)",
        "  inspect_test.alpaca  3",
        "  inspect_test.stream  unlimited (stream not exhausted after 10 examples); validation: 3",
        "  total over 2 tasks: unlimited (3 in the finite tasks; validation of the unlimited ones: 3)",
    ]
    assert inspection.count_examples("inspect_test.stream", "validation", limit=3).examples == 3
  finally:
    seqio.MixtureRegistry.remove("inspect_test.mixture")
    seqio.TaskRegistry.remove("inspect_test.stream")


def test_chat_task_token_view_and_decoder_only_packing(tmp_path):
  words = ["[UNK]", "user", "assistant", "\n", "Hi", "Hello", "!"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\w+|[^\w\s]+|\s+"), behavior="isolated")
  tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
  (tmp_path / "tok").mkdir()
  tok.save(str(tmp_path / "tok" / "tokenizer.json"))
  (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
  chat_file = tmp_path / "chat.jsonl"
  chat_file.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello!"}]}) + "\n")
  files.register_file_task("inspect_test.chat", str(chat_file), "messages", chat_template="chatml",
                           vocabulary=vocabularies.HFTokenizerVocabulary(str(tmp_path / "tok")))
  try:
    report = inspection.inspect("inspect_test.chat", n=1, batch_size=1, target_length=16, num_batches=1)
  finally:
    seqio.TaskRegistry.remove("inspect_test.chat")
  assert ("--- example 0 (13 tokens, 3 loss-weighted)\n[text]\n"
          "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\n[tokens]\n"
          "<|im_start|>|user|\\n|Hi|<|im_end|>|\\n|<|im_start|>|assistant|\\n|[[Hello|!|<|im_end|>]]|\\n") in report
  assert report.splitlines()[-3:] == [
      "=== packing (BestFitPacker, batch_size 1, decoder-only, length 16)",
      "  batch 0: 1 row, 1 example (1.00 per row), 13/16 token slots filled (81.2%)",
      "  total: 1 batch, 1 row, 1 example (1.00 per row), token efficiency 81.2%; "
      "of 1 examples read: 0 targets truncated, 0 dropped",
  ]


def test_tool_inspects_a_file_given_on_the_command_line(tmp_path, capsys):
  path = tmp_path / "tiny.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
  spec = importlib.util.spec_from_file_location("inspect_mixture_tool", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  try:
    tool.main([f"--file_task=inspect_test.cli={path}:alpaca", "-n", "1", "--batch_size=2", "--input_length=32",
               "--target_length=8", "--color=never"])
  finally:
    seqio.TaskRegistry.remove("inspect_test.cli")
  out = capsys.readouterr().out
  assert out.startswith("=== inspect_test.cli (train): first 1 example\n")
  assert "  inspect_test.cli  3\n" in out
  assert "  batch 0: 2 rows, 3 examples (1.50 per row), 40/80 token slots filled (50.0%)\n" in out


def test_tool_inspects_a_tfds_mixture_on_mock_data():
  # A fresh process: TFDS mocking and the T0 registrations stay out of this one. The tool finds
  # the module that registers t0_train from the name.
  args = [sys.executable, TOOL, "--mixture=t0_train", "--mock_data",
          "--mock_examples=4", "-n", "1", "--batch_size=2", "--num_batches=1", "--color=never"]
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout
  assert out.startswith("=== t0_train (train): first 1 example\n")
  # 18 TFDS datasets, each mocked with 4 raw examples.
  assert re.search(r"^  t0\.glue\.mrpc +4$", out, re.MULTILINE) and "  total over 18 tasks: 72\n" in out
  assert "=== packing (BestFitPacker, batch_size 2, input_length 256, target_length 64)\n  batch 0: 2 rows" in out


def test_registering_module_is_found_by_the_longest_prefix():
  assert collections.registering_module("t0_train") == "sft_jax.data.collections.t0"
  assert collections.registering_module("flan2022_mix") == "sft_jax.data.collections.flan2021"
  assert collections.registering_module("synthetic_preferences") == "sft_jax.data.collections.synthetic_preferences"
  assert collections.registering_module("synthetic.add_one") == "sft_jax.data.collections.synthetic"
  assert collections.registering_module("my_own_mixture") is None
