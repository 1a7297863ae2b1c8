"""Chat templates: token-by-token loss weights, parity with transformers, inference/training prefixes."""

import json

import numpy as np
import pytest

from sft_jax.data import chat
from sft_jax.data import vocabularies

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["[UNK]", "system", "user", "assistant", "\n", "\n\n", " ", ".", "!", "Be", "brief", "Hi", "Hello",
         "Add", "2", "and", "3", "5"]

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "5"},
]

# As in Qwen2.5's template: `{%-`/`{{-` strip the template's own line breaks,
# so only trim_blocks/lstrip_blocks rendering reproduces the ChatML text.
CHATML_JINJA = """{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3_JINJA = """{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def _model_dir(path, chat_template=None, specials=CHATML_TOKENS + LLAMA3_TOKENS, **config):
  """A word-level tokenizer (one token per word, punctuation run or whitespace run) plus its config."""
  path.mkdir(parents=True, exist_ok=True)
  word_level = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
  tok = tokenizers.Tokenizer(word_level)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\w+|[^\w\s]+|\s+"),
                                                      behavior="isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  tok.add_special_tokens(list(specials))
  tok.save(str(path / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", **config}
  if chat_template is not None:
    config["chat_template"] = chat_template
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  return str(path)


@pytest.fixture
def vocab(tmp_path):
  return vocabularies.HFTokenizerVocabulary(_model_dir(tmp_path / "tok"))


def _tokens_and_weights(rendered, vocab):
  return [(vocab.tokenizer.id_to_token(int(i)), int(w))
          for i, w in zip(rendered.token_ids, rendered.loss_weights)]


# Hand-written: (token, loss weight), one line per turn.
CHATML_EXPECTED = [
    ("<|im_start|>", 0), ("system", 0), ("\n", 0),
    ("Be", 0), (" ", 0), ("brief", 0), (".", 0), ("<|im_end|>", 0), ("\n", 0),
    ("<|im_start|>", 0), ("user", 0), ("\n", 0), ("Hi", 0), ("<|im_end|>", 0), ("\n", 0),
    ("<|im_start|>", 0), ("assistant", 0), ("\n", 0), ("Hello", 1), ("!", 1), ("<|im_end|>", 1), ("\n", 0),
    ("<|im_start|>", 0), ("user", 0), ("\n", 0),
    ("Add", 0), (" ", 0), ("2", 0), (" ", 0), ("and", 0), (" ", 0), ("3", 0), (".", 0),
    ("<|im_end|>", 0), ("\n", 0),
    ("<|im_start|>", 0), ("assistant", 0), ("\n", 0), ("5", 1), ("<|im_end|>", 1), ("\n", 0),
]  # pyformat: disable

LLAMA3_EXPECTED = [
    ("<|begin_of_text|>", 0),
    ("<|start_header_id|>", 0), ("system", 0), ("<|end_header_id|>", 0), ("\n\n", 0),
    ("Be", 0), (" ", 0), ("brief", 0), (".", 0), ("<|eot_id|>", 0),
    ("<|start_header_id|>", 0), ("user", 0), ("<|end_header_id|>", 0), ("\n\n", 0),
    ("Hi", 0), ("<|eot_id|>", 0),
    ("<|start_header_id|>", 0), ("assistant", 0), ("<|end_header_id|>", 0), ("\n\n", 0),
    ("Hello", 1), ("!", 1), ("<|eot_id|>", 1),
    ("<|start_header_id|>", 0), ("user", 0), ("<|end_header_id|>", 0), ("\n\n", 0),
    ("Add", 0), (" ", 0), ("2", 0), (" ", 0), ("and", 0), (" ", 0), ("3", 0), (".", 0), ("<|eot_id|>", 0),
    ("<|start_header_id|>", 0), ("assistant", 0), ("<|end_header_id|>", 0), ("\n\n", 0),
    ("5", 1), ("<|eot_id|>", 1),
]  # pyformat: disable


@pytest.mark.parametrize("name, expected", [("chatml", CHATML_EXPECTED), ("llama3", LLAMA3_EXPECTED)])
def test_builtin_weights_token_by_token(vocab, name, expected):
  rendered = chat.render_chat(MESSAGES, name, vocab)
  assert _tokens_and_weights(rendered, vocab) == expected
  assert rendered.token_ids.dtype == np.int32 and rendered.loss_weights.dtype == np.int32
  # Token-exact: the same ids as tokenizing the whole text at once.
  assert rendered.token_ids.tolist() == vocab.encode(rendered.text)
  assert rendered.text == "".join(token for token, _ in expected)


def test_builtin_text_formats(vocab):
  turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
  assert chat.render_chat(turn, chat.CHATML, vocab).text == (
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
  assert chat.render_chat(turn[:1], chat.CHATML, vocab, add_generation_prompt=True).text == (
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  assert chat.render_chat(turn, chat.LLAMA3, vocab).text == (
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
  assert chat.render_chat(turn[:1], chat.LLAMA3, vocab, add_generation_prompt=True).text == (
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("source, builtin", [(CHATML_JINJA, "chatml"), (LLAMA3_JINJA, "llama3")])
def test_jinja_template_matches_builtin(tmp_path, vocab, source, builtin):
  template = chat.JinjaChatTemplate.from_tokenizer_config(
      _model_dir(tmp_path / "jinja", source, bos_token="<|begin_of_text|>"))
  for messages, generation_prompt in ((MESSAGES, False), (MESSAGES[:-1], True), (MESSAGES[:2], True)):
    jinja = chat.render_chat(messages, template, vocab, add_generation_prompt=generation_prompt)
    reference = chat.render_chat(messages, builtin, vocab, add_generation_prompt=generation_prompt)
    assert jinja.text == reference.text
    np.testing.assert_array_equal(jinja.token_ids, reference.token_ids)
    np.testing.assert_array_equal(jinja.loss_weights, reference.loss_weights)
  assert _tokens_and_weights(chat.render_chat(MESSAGES, template, vocab), vocab) == (
      CHATML_EXPECTED if builtin == "chatml" else LLAMA3_EXPECTED)


@pytest.mark.parametrize("source", [CHATML_JINJA, LLAMA3_JINJA])
def test_jinja_text_equals_transformers_apply_chat_template(tmp_path, monkeypatch, vocab, source):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  transformers = pytest.importorskip("transformers")
  model_dir = _model_dir(tmp_path / "jinja", source, bos_token="<|begin_of_text|>")
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  template = chat.get_chat_template(model_dir)
  for messages, generation_prompt in ((MESSAGES, False), (MESSAGES[:-1], True)):
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=generation_prompt)
    rendered = chat.render_chat(messages, template, vocab, add_generation_prompt=generation_prompt)
    assert rendered.text == expected
    assert rendered.token_ids.tolist() == hf_tokenizer.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize("template_kind", ["chatml", "llama3", "jinja"])
def test_inference_prompt_is_token_exact_prefix_of_training(tmp_path, vocab, template_kind):
  template = template_kind
  if template_kind == "jinja":
    template = chat.JinjaChatTemplate.from_tokenizer_config(_model_dir(tmp_path / "jinja", CHATML_JINJA))
  train = chat.render_chat(MESSAGES, template, vocab)
  for cut in (2, 4):  # before each assistant reply
    prompt = chat.render_chat(MESSAGES[:cut], template, vocab, add_generation_prompt=True)
    n = len(prompt.token_ids)
    assert train.text.startswith(prompt.text)
    np.testing.assert_array_equal(prompt.token_ids, train.token_ids[:n])
    np.testing.assert_array_equal(prompt.loss_weights, train.loss_weights[:n])
    # The reply starts right after the prompt: the first target token is token n.
    assert train.loss_weights[n] == 1 and train.loss_weights[n - 1] == 0


def test_jinja_helpers_and_named_templates(tmp_path, vocab):
  source = ("{{- raise_exception('no system messages') if messages[0]['role'] == 'system' }}"
            "{%- for m in messages %}{% generation %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
            "| tojson + '<|im_end|>\\n' }}{% endgeneration %}{% endfor %}"
            "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
  config = _model_dir(tmp_path / "jinja", [{"name": "default", "template": "unused"},
                                           {"name": "json", "template": source}])
  template = chat.JinjaChatTemplate.from_tokenizer_config(str(tmp_path / "jinja" / "tokenizer_config.json"),
                                                          template_name="json")
  assert template.name.endswith("tokenizer_config.json")
  rendered = chat.render_chat(MESSAGES[1:3], template, vocab)
  assert rendered.text == '<|im_start|>user\n"Hi"<|im_end|>\n<|im_start|>assistant\n"Hello!"<|im_end|>\n'
  with pytest.raises(ValueError, match="no system messages"):
    chat.render_chat(MESSAGES, template, vocab)
  with pytest.raises(ValueError, match="no chat template named 'tools'"):
    chat.JinjaChatTemplate.from_tokenizer_config(config, template_name="tools")


def test_validation_errors(vocab):
  with pytest.raises(ValueError, match="empty conversation"):
    chat.render_chat([], "chatml", vocab)
  with pytest.raises(ValueError, match="message 1 has unknown role 'tool'"):
    chat.render_chat([MESSAGES[1], {"role": "tool", "content": "x"}], "chatml", vocab)
  with pytest.raises(ValueError, match="must end with an assistant message, but the last role is 'user'"):
    chat.render_chat(MESSAGES[:4], "chatml", vocab)
  with pytest.raises(ValueError, match="already ends with an assistant message"):
    chat.render_chat(MESSAGES, "chatml", vocab, add_generation_prompt=True)
  with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
    chat.render_chat(MESSAGES, "vicuna", vocab)


def test_missing_special_token_is_named(tmp_path):
  chatml_only = vocabularies.HFTokenizerVocabulary(_model_dir(tmp_path / "tok", specials=CHATML_TOKENS))
  assert chat.render_chat(MESSAGES, "chatml", chatml_only).token_ids.size
  with pytest.raises(ValueError, match=r"special token '<\|begin_of_text\|>'.*not in the vocabulary"):
    chat.render_chat(MESSAGES, "llama3", chatml_only)
  # A Jinja template writes special tokens as text: one the vocabulary lacks would become characters.
  template = chat.JinjaChatTemplate.from_tokenizer_config(
      _model_dir(tmp_path / "jinja", LLAMA3_JINJA, bos_token="<|begin_of_text|>"))
  with pytest.raises(ValueError, match=r"special token '<\|begin_of_text\|>'"):
    chat.render_chat(MESSAGES, template, chatml_only)
  with pytest.raises(TypeError, match="cannot look tokens up"):
    chat.render_chat(MESSAGES, "chatml", vocabularies.get_vocabulary())


def test_template_that_is_not_prefix_stable_is_rejected(tmp_path, vocab):
  # Appends a footer that depends on the number of messages: earlier renders are not prefixes.
  source = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
            "{% endfor %}{{ messages | length }}")
  model_dir = _model_dir(tmp_path / "unstable", source)
  with pytest.raises(ValueError, match=f"chat template '{model_dir}' is not prefix-stable"):
    chat.render_chat(MESSAGES, chat.get_chat_template(model_dir), vocab)
