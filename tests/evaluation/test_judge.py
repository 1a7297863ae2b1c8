"""sft_jax.evaluation.judge and tools/judge.py against a local fake OpenAI-compatible server."""

import contextlib
import http.server
import importlib.util
import json
import pathlib
import re
import threading
import time

import pytest

from sft_jax.evaluation import judge

_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Run A and run B answer the same questions; the comments give the reference-preferring
# judge's final winner.
QUESTIONS = [
    # task, index, inputs, targets, prediction A, prediction B
    ("t1", 0, "What is the capital of France?", "Paris", "Paris", "Lyon"),  # A
    ("t1", 1, "What is 2+2?", "4", "5", "4"),  # B
    ("t1", 2, "What color is the sky?", "blue", "red", "green"),  # tie: both wrong
    ("t2", 0, "Opposite of hot?", "cold", "cold", "cold"),  # tie: both right
    ("t2", 1, "Say yes.", "yes", "no", "yes"),  # B
]
CLASSIFICATION = ("cls", 0, "Is water wet? Options: yes, no", "yes", "yes", "no")


def _line(task, index, inputs, targets, prediction, choices=None):
  record = {"task": task, "template": "default", "index": index, "inputs": inputs, "targets": targets,
            "prediction": prediction}
  if choices is not None:
    record["answer_choices"] = choices
  return json.dumps(record) + "\n"


def _write_runs(tmp_path, questions=QUESTIONS, classification=True):
  path_a, path_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  lines_a = [_line(t, i, q, ref, pa) for t, i, q, ref, pa, _ in questions]
  lines_b = [_line(t, i, q, ref, pb) for t, i, q, ref, _, pb in reversed(questions)]  # order is irrelevant
  if classification:
    t, i, q, ref, pa, pb = CLASSIFICATION
    lines_a.append(_line(t, i, q, ref, pa, ["yes", "no"]))
    lines_b.insert(0, _line(t, i, q, ref, pb, ["yes", "no"]))
  path_a.write_text("".join(lines_a))
  path_b.write_text("".join(lines_b))
  return str(path_a), str(path_b)


def _section(text, name):
  name = re.escape(name)
  match = re.search(rf"\[The Start of {name}\]\n(.*?)\n\[The End of {name}\]", text, re.S)
  return match.group(1) if match else None


def _parse_prompt(body):
  """(question, reference or None, answer A, answer B) from a judge request body."""
  user = body["messages"][1]["content"]
  question = re.match(r"\[User Question\]\n(.*?)\n\n\[The Start", user, re.S).group(1)
  return (question, _section(user, "Reference Answer"), _section(user, "Assistant A's Answer"),
          _section(user, "Assistant B's Answer"))


def prefer_reference(body):
  _, reference, a, b = _parse_prompt(body)
  if a == b:
    return "Both are the same. [[C]]"
  if a == reference:
    return "Assistant A matches the reference. [[A]]"
  if b == reference:
    return "Assistant B matches the reference. [[B]]"
  return "Neither is correct. [[C]]"


def always_a(body):
  return "The first answer is better. [[A]]"


class FakeJudge:
  """Records every request; `rule(body)` returns the reply text, or (status, raw response body)."""

  def __init__(self, rule):
    self.rule, self.requests, self.lock = rule, [], threading.Lock()

  def handler(self):
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        with fake.lock:
          fake.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw, "body": body})
        reply = fake.rule(body)
        if isinstance(reply, tuple):  # (status, raw body)
          status, data = reply[0], reply[1].encode()
        else:
          payload = {"id": "x", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
          status, data = 200, json.dumps(payload).encode()
        try:
          self.send_response(status)
          if status == 429:
            self.send_header("Retry-After", "0")
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client timed out and hung up (test_timeout_is_retried_then_reported)

      def log_message(self, *args):
        pass

    return Handler


@contextlib.contextmanager
def serve(rule):
  fake = FakeJudge(rule)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
  server.daemon_threads = True
  # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
  thread.start()
  try:
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield fake
  finally:
    server.shutdown()
    server.server_close()


def _client(fake, **kwargs):
  kwargs.setdefault("backoff_s", 0.01)
  return judge.JudgeClient(url=fake.url, model="judge-1", **kwargs)


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reply,verdict", [
    ("A is better. [[A]]", "A"),
    ("[[B]]", "B"),
    ("They are equally good: [[C]]", "tie"),
    ("I cannot decide.", "error"),
    ("[A]", "error"),
    ("[[D]]", "error"),
    # The explanation may quote the format; the verdict the judge ends with counts.
    ('"[[A]]" would mean A is better, but here B is: [[B]]', "B"),
])
def test_parse_verdict(reply, verdict):
  assert judge.parse_verdict(reply) == verdict


@pytest.mark.parametrize("ab,ba,winner", [
    ("A", "A", "A"), ("B", "B", "B"), ("tie", "tie", "tie"),
    ("A", "B", "tie"), ("B", "tie", "tie"), ("error", "A", "tie"), ("error", "error", "tie"),
])
def test_combine_verdicts_needs_both_orders(ab, ba, winner):
  assert judge.combine_verdicts(ab, ba) == winner


def test_build_messages_with_and_without_reference():
  with_ref = judge.build_messages("Q?", "ans a", "ans b", reference="ref")
  assert with_ref[0] == {"role": "system", "content": judge.SYSTEM_PROMPT_WITH_REFERENCE}
  assert with_ref[1]["role"] == "user"
  assert _parse_prompt({"messages": with_ref}) == ("Q?", "ref", "ans a", "ans b")
  without = judge.build_messages("Q?", "ans a", "ans b")
  assert without[0]["content"] == judge.SYSTEM_PROMPT
  assert _parse_prompt({"messages": without}) == ("Q?", None, "ans a", "ans b")
  for prompt in (judge.SYSTEM_PROMPT, judge.SYSTEM_PROMPT_WITH_REFERENCE):
    assert all(token in prompt for token in ("[[A]]", "[[B]]", "[[C]]"))


# ---------------------------------------------------------------------------
# End to end against the fake server
# ---------------------------------------------------------------------------


def test_prefer_reference_requests_and_tallies(tmp_path):
  path_a, path_b = _write_runs(tmp_path)
  out_dir = tmp_path / "out"
  with serve(prefer_reference) as fake:
    summary = judge.judge_runs(path_a, path_b, str(out_dir), _client(fake, api_key="secret"), concurrency=3)

  # Both orders of every free-text pair, nothing for the classification line.
  expected = set()
  for _, _, q, ref, pa, pb in QUESTIONS:
    expected |= {(q, ref, pa, pb), (q, ref, pb, pa)}
  assert len(fake.requests) == 10
  assert {_parse_prompt(r["body"]) for r in fake.requests} == expected
  for r in fake.requests:
    assert r["path"] == "/v1/chat/completions"
    assert r["headers"]["Authorization"] == "Bearer secret"
    assert r["headers"]["Content-Type"] == "application/json"
    body = r["body"]
    assert set(body) == {"model", "messages", "temperature", "max_tokens"}
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-1", 0, 1024)
    assert body["messages"][0] == {"role": "system", "content": judge.SYSTEM_PROMPT_WITH_REFERENCE}
    # Deterministic bytes: the same messages always give the same body.
    assert r["raw"] == _client(fake).request_body(body["messages"])

  judgments = [json.loads(line) for line in (out_dir / "judgments.jsonl").read_text().splitlines()]
  assert [(j["task"], j["index"], j["verdict_ab"], j["verdict_ba"], j["winner"]) for j in judgments] == [
      ("t1", 0, "A", "A", "A"), ("t1", 1, "B", "B", "B"), ("t1", 2, "tie", "tie", "tie"),
      ("t2", 0, "tie", "tie", "tie"), ("t2", 1, "B", "B", "B")]
  # Run B's correct answer is shown first in the swapped order, so that reply says [[A]].
  assert judgments[1]["reply_ab"] == "Assistant B matches the reference. [[B]]"
  assert judgments[1]["reply_ba"] == "Assistant A matches the reference. [[A]]"

  assert summary["tasks"] == {
      "t1": {"pairs": 3, "wins_a": 1, "wins_b": 1, "ties": 1, "inconsistent": 0, "errors": 0,
             "win_rate_b": pytest.approx(1 / 3), "win_rate_b_adjusted": pytest.approx(0.5)},
      "t2": {"pairs": 2, "wins_a": 0, "wins_b": 1, "ties": 1, "inconsistent": 0, "errors": 0,
             "win_rate_b": 0.5, "win_rate_b_adjusted": 0.75},
  }
  assert summary["overall"] == {"pairs": 5, "wins_a": 1, "wins_b": 2, "ties": 2, "inconsistent": 0,
                                "errors": 0, "win_rate_b": 0.4, "win_rate_b_adjusted": 0.6}
  assert (summary["predictions_a"], summary["predictions_b"], summary["model"]) == (path_a, path_b, "judge-1")
  assert json.loads((out_dir / "judge_summary.json").read_text()) == summary


def test_position_swap_turns_position_bias_into_ties(tmp_path):
  path_a, path_b = _write_runs(tmp_path)
  with serve(always_a) as fake:
    summary = judge.judge_runs(path_a, path_b, str(tmp_path / "out"), _client(fake))
  assert len(fake.requests) == 10
  assert "Authorization" not in fake.requests[0]["headers"]
  judgments = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
  # "[[A]]" in the swapped order means run B: every pair is inconsistent, hence a tie.
  assert {(j["verdict_ab"], j["verdict_ba"], j["winner"]) for j in judgments} == {("A", "B", "tie")}
  assert summary["overall"] == {"pairs": 5, "wins_a": 0, "wins_b": 0, "ties": 5, "inconsistent": 5,
                                "errors": 0, "win_rate_b": 0.0, "win_rate_b_adjusted": 0.5}


def test_malformed_reply_counts_as_error_and_tie(tmp_path):
  path_a, path_b = _write_runs(tmp_path)

  def rule(body):
    question, _, a, _ = _parse_prompt(body)
    if question == "What is 2+2?" and a == "4":  # the swapped order of (t1, 1)
      return "I cannot decide."
    if question == "Say yes.":
      return 'Answering "[[A]]" would be wrong here. [[C]]'
    return prefer_reference(body)

  with serve(rule) as fake:
    summary = judge.judge_runs(path_a, path_b, str(tmp_path / "out"), _client(fake))
  judgments = {(j["task"], j["index"]): j
               for j in map(json.loads, (tmp_path / "out" / "judgments.jsonl").read_text().splitlines())}
  assert (judgments["t1", 1]["verdict_ab"], judgments["t1", 1]["verdict_ba"]) == ("B", "error")
  assert judgments["t1", 1]["winner"] == "tie"
  assert judgments["t1", 1]["reply_ba"] == "I cannot decide."
  assert (judgments["t2", 1]["verdict_ab"], judgments["t2", 1]["verdict_ba"]) == ("tie", "tie")
  assert summary["overall"] == {"pairs": 5, "wins_a": 1, "wins_b": 0, "ties": 4, "inconsistent": 0,
                                "errors": 1, "win_rate_b": 0.0, "win_rate_b_adjusted": 0.4}


def test_no_reference_max_pairs_and_classification(tmp_path):
  path_a, path_b = _write_runs(tmp_path)
  with serve(always_a) as fake:
    summary = judge.judge_runs(path_a, path_b, str(tmp_path / "out"), _client(fake), max_pairs=3,
                               include_classification=True, use_reference=False)
  # The lowest indices across tasks: index 0 of cls, t1 and t2.
  assert {_parse_prompt(r["body"])[0] for r in fake.requests} == {
      CLASSIFICATION[2], "What is the capital of France?", "Opposite of hot?"}
  assert len(fake.requests) == 6
  assert all(_parse_prompt(r["body"])[1] is None for r in fake.requests)
  assert all(r["body"]["messages"][0]["content"] == judge.SYSTEM_PROMPT for r in fake.requests)
  assert sorted(summary["tasks"]) == ["cls", "t1", "t2"]


def test_retries_on_429_and_5xx_then_succeeds(tmp_path):
  path_a, path_b = _write_runs(tmp_path, QUESTIONS[:1], classification=False)
  statuses = iter([(429, "slow down"), (503, "busy")])

  def rule(body):
    return next(statuses, None) or prefer_reference(body)

  with serve(rule) as fake:
    summary = judge.judge_runs(path_a, path_b, str(tmp_path / "out"), _client(fake), concurrency=1)
  assert len(fake.requests) == 4  # two failures, then both orders
  assert summary["overall"]["wins_a"] == 1


def test_gives_up_after_max_retries(tmp_path):
  path_a, path_b = _write_runs(tmp_path, QUESTIONS[:1], classification=False)
  with serve(lambda body: (500, "internal error")) as fake:
    with pytest.raises(judge.JudgeError, match=r"gave up after 3 attempts; last: HTTP 500: internal error"):
      judge.judge_runs(path_a, path_b, str(tmp_path / "out"), _client(fake, max_retries=2), concurrency=2)
  assert len(fake.requests) == 6  # both orders in flight at once, 3 attempts each
  assert not (tmp_path / "out").exists()


def test_client_error_fails_without_retry(tmp_path):
  with serve(lambda body: (400, '{"error": "unknown model judge-1"}')) as fake:
    with pytest.raises(judge.JudgeError, match=r"HTTP 400: .*unknown model judge-1"):
      _client(fake).complete(judge.build_messages("q", "a", "b"))
  assert len(fake.requests) == 1


def test_timeout_is_retried_then_reported():

  def slow(body):
    time.sleep(0.5)
    return "[[A]]"

  with serve(slow) as fake:
    with pytest.raises(judge.JudgeError, match=r"gave up after 2 attempts; last: .*timed out"):
      _client(fake, timeout_s=0.1, max_retries=1).complete(judge.build_messages("q", "a", "b"))
  assert len(fake.requests) == 2


def test_full_endpoint_url_is_accepted():
  with serve(lambda body: "ok") as fake:
    client = judge.JudgeClient(url=fake.url + "/chat/completions/", model="m")
    assert client.complete(judge.build_messages("q", "a", "b")) == "ok"
  assert fake.requests[0]["path"] == "/v1/chat/completions"


def test_reply_that_is_not_a_chat_completion_fails():
  with serve(lambda body: (200, '{"error": "oops"}')) as fake:
    with pytest.raises(judge.JudgeError, match="reply is not a chat completion"):
      _client(fake).complete(judge.build_messages("q", "a", "b"))
  assert len(fake.requests) == 1


# ---------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------


def test_malformed_predictions_line_names_file_and_line(tmp_path):
  good = _line("t1", 0, "q", "r", "p")
  cases = [
      ("{not json\n", "not valid JSON"),
      ("[1, 2]\n", "expected a JSON object, got list"),
      (json.dumps({"task": "t1", "index": 1, "inputs": "q", "targets": "r"}) + "\n",
       "field 'prediction' is missing"),
      (_line("t1", "1", "q", "r", "p"), "field 'index' must be int, got str"),
      (json.dumps({"task": "t1", "index": True, "inputs": "q", "targets": "r", "prediction": "p"}) + "\n",
       "field 'index' must be int, got bool"),
      (good, r"duplicate \(task, index\) \('t1', 0\), first at line 1"),
  ]
  for bad, message in cases:
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + bad)  # the blank line 2 is skipped but counted
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: {message}"):
      judge.read_predictions(str(path))


def test_pairs_missing_from_one_side_are_named(tmp_path):
  path_a, path_b = _write_runs(tmp_path, classification=False)
  lines = pathlib.Path(path_b).read_text().splitlines(keepends=True)
  pathlib.Path(path_b).write_text("".join(line for line in lines if '"Say yes."' not in line))
  with pytest.raises(ValueError, match=rf"1 prediction\(s\) have no counterpart in {re.escape(path_b)}: "
                                       rf"\(task='t2', index=1\) at {re.escape(path_a)}:5$"):
    judge.pair_predictions(path_a, path_b)
  # Either argument order names the file lacking the prediction and where it is present.
  with pytest.raises(ValueError, match=rf"no counterpart in {re.escape(path_b)}: "
                                       rf"\(task='t2', index=1\) at {re.escape(path_a)}:5"):
    judge.pair_predictions(path_b, path_a)


def test_pairs_with_different_questions_are_refused(tmp_path):
  path_a, path_b = _write_runs(tmp_path, classification=False)
  text = pathlib.Path(path_b).read_text().replace("What is 2+2?", "What is 3+3?")
  pathlib.Path(path_b).write_text(text)
  with pytest.raises(ValueError, match=rf"field 'inputs' differs between {re.escape(path_a)}:2 and "
                                       rf"{re.escape(path_b)}:4"):
    judge.pair_predictions(path_a, path_b)


def test_only_classification_lines_is_an_error(tmp_path):
  path_a, path_b = _write_runs(tmp_path, questions=[])
  with pytest.raises(ValueError, match=r"no pairs to judge .*\(classification lines are skipped\)"):
    client = judge.JudgeClient(url="http://127.0.0.1:9", model="m")  # never called
    judge.judge_runs(path_a, path_b, str(tmp_path / "out"), client)


# ---------------------------------------------------------------------------
# tools/judge.py
# ---------------------------------------------------------------------------


def _load_tool():
  spec = importlib.util.spec_from_file_location("judge_tool", _ROOT / "tools" / "judge.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tool_prints_table_and_json(tmp_path, monkeypatch, capsys):
  path_a, path_b = _write_runs(tmp_path)
  monkeypatch.setenv("JUDGE_TEST_KEY", "k123")
  tool = _load_tool()
  with serve(prefer_reference) as fake:
    summary = tool.main([f"--predictions_a={path_a}", f"--predictions_b={path_b}", f"--url={fake.url}",
                         "--model=judge-1", "--api_key_env=JUDGE_TEST_KEY", f"--out_dir={tmp_path / 'out'}",
                         "--concurrency=2"])
  assert {r["headers"]["Authorization"] for r in fake.requests} == {"Bearer k123"}
  lines = capsys.readouterr().out.splitlines()
  assert json.loads(lines[-1]) == summary
  table = lines[:-1]
  assert table[0].split() == ["task", "pairs", "wins", "A", "wins", "B", "ties", "errors", "win", "rate", "B"]
  assert [row.split() for row in table[2:]] == [["t1", "3", "1", "1", "1", "0", "0.333"],
                                                ["t2", "2", "0", "1", "1", "0", "0.500"],
                                                ["overall", "5", "1", "2", "2", "0", "0.400"]]
  assert (tmp_path / "out" / "judgments.jsonl").exists()


def test_tool_refuses_unset_api_key_env(tmp_path, monkeypatch):
  monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
  with pytest.raises(SystemExit):
    _load_tool().main(["--predictions_a=a", "--predictions_b=b", "--url=http://127.0.0.1:9/v1",
                       "--model=m", "--api_key_env=JUDGE_TEST_KEY", f"--out_dir={tmp_path}"])
