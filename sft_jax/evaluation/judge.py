"""Pairwise LLM-as-a-judge over two evaluation runs' generations (`tools/judge.py`).

Two `predictions.jsonl` files written by the evaluator, one JSON object per line
`{"task", "template", "index", "inputs", "targets", "prediction", "answer_choices"?}`, are
paired by (task, index). Each pair is sent to an OpenAI-compatible chat-completions endpoint
with an MT-Bench style pairwise prompt: the user question, the reference answer when there is
one, and the two answers as assistant A and assistant B; the judge ends with "[[A]]", "[[B]]"
or "[[C]]" (tie).

Position swap, as in MT-Bench: every pair is judged twice, run A's answer shown first and then
run B's answer shown first. A run wins only when both orders pick it; any disagreement is a
tie, which cancels a judge's preference for one position. A reply with no verdict token is a
judging error: its pair counts as a tie and is also counted under "errors", so a flaky judge
shows up in the summary instead of silently favouring either run.

Only the standard library is used (urllib), so judging adds no dependency.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

RUNS = ("A", "B")
VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
# Statuses worth retrying: rate limiting and server-side failures. Anything else in 4xx
# (bad model name, bad key, malformed body) will not fix itself.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

SYSTEM_PROMPT = (
    "You are an impartial judge. Compare the responses of two AI assistants to the user "
    "question shown below and decide which one follows the user's instructions and answers "
    "the question better, weighing helpfulness, relevance, accuracy, depth and level of "
    "detail. Start with a brief comparison of the two responses and explain your reasoning. "
    "Do not let the order in which the responses appear, their length, or the assistants' "
    "names influence your decision; be as objective as possible. After your explanation, "
    "give your final verdict strictly in this format: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better, or \"[[C]]\" for a tie.")

SYSTEM_PROMPT_WITH_REFERENCE = (
    "You are an impartial judge. Compare the responses of two AI assistants to the user "
    "question shown below, weighing correctness first and helpfulness second. You are given "
    "a reference answer, assistant A's answer and assistant B's answer. Start by comparing "
    "both answers with the reference answer, point out any mistakes, and explain your "
    "reasoning briefly. Do not let the order in which the responses appear, their length, or "
    "the assistants' names influence your decision; be as objective as possible. After your "
    "explanation, give your final verdict strictly in this format: \"[[A]]\" if assistant A "
    "is better, \"[[B]]\" if assistant B is better, or \"[[C]]\" for a tie.")

_REQUIRED_FIELDS = {"task": str, "index": int, "inputs": str, "targets": str, "prediction": str}


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One line of a predictions.jsonl file and where it came from."""
  record: dict[str, Any]
  path: str
  line: int

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"


def read_predictions(path: str) -> dict[tuple[str, int], Prediction]:
  """Predictions keyed by (task, index); a malformed or duplicate line fails with `path:line`."""
  found: dict[tuple[str, int], Prediction] = {}
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
      for field, kind in _REQUIRED_FIELDS.items():
        if field not in record:
          raise ValueError(f"{where}: field {field!r} is missing")
        # bool is an int subclass; `"index": true` is a bug, not instance 1.
        if not isinstance(record[field], kind) or isinstance(record[field], bool):
          raise ValueError(f"{where}: field {field!r} must be {kind.__name__}, got "
                           f"{type(record[field]).__name__}")
      key = (record["task"], record["index"])
      if key in found:
        raise ValueError(f"{where}: duplicate (task, index) {key}, first at line {found[key].line}")
      found[key] = Prediction(record, path, line_number)
  return found


def _is_classification(p: Prediction) -> bool:
  return "answer_choices" in p.record


def pair_predictions(path_a: str, path_b: str, include_classification: bool = False,
                     max_pairs: int | None = None) -> list[tuple[Prediction, Prediction]]:
  """Reads two runs' predictions and pairs them by (task, index), sorted.

  Fails naming file:line when a prediction has no counterpart in the other file or the two
  sides disagree on the question. Classification lines (those with `answer_choices`) are
  skipped unless asked for: their prediction is a label, not free text to judge. `max_pairs`
  keeps the pairs of lowest index across all tasks, so every task is represented.
  """
  a, b = read_predictions(path_a), read_predictions(path_b)
  for have, lack, lack_path in ((a, b, path_b), (b, a, path_a)):
    missing = sorted(set(have) - set(lack))
    if missing:
      shown = ", ".join(f"(task={k[0]!r}, index={k[1]}) at {have[k].where}" for k in missing[:5])
      raise ValueError(f"{len(missing)} prediction(s) have no counterpart in {lack_path}: "
                       f"{shown}{' ...' if len(missing) > 5 else ''}")
  pairs = []
  for key in sorted(a):
    pa, pb = a[key], b[key]
    for field in ("inputs", "targets"):
      # Judging answers to different questions would give a meaningless verdict.
      if pa.record[field] != pb.record[field]:
        raise ValueError(f"{key}: field {field!r} differs between {pa.where} and {pb.where}")
    if _is_classification(pa) != _is_classification(pb):
      raise ValueError(f"{key}: answer_choices present in only one of {pa.where} and {pb.where}")
    if include_classification or not _is_classification(pa):
      pairs.append((pa, pb))
  if max_pairs is not None:
    if max_pairs < 1:
      raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    keep = set(sorted(((pa.record["index"], pa.record["task"]) for pa, _ in pairs))[:max_pairs])
    pairs = [(pa, pb) for pa, pb in pairs if (pa.record["index"], pa.record["task"]) in keep]
  return pairs


# ---------------------------------------------------------------------------
# Prompt and verdicts
# ---------------------------------------------------------------------------


def build_messages(question: str, answer_a: str, answer_b: str,
                   reference: str | None = None) -> list[dict[str, str]]:
  """The chat messages asking the judge to compare `answer_a` (assistant A) with `answer_b`."""
  parts = [f"[User Question]\n{question}"]
  if reference is not None:
    parts.append(f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]")
  parts.append(f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]")
  parts.append(f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
  system = SYSTEM_PROMPT if reference is None else SYSTEM_PROMPT_WITH_REFERENCE
  return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_verdict(reply: str) -> str:
  """"A", "B" or "tie" from the judge's last verdict token; "error" when it gave none.

  The last token counts: the judge is asked to end with its verdict, and its explanation
  may quote the format ("[[A]] would mean ...") before it.
  """
  tokens = VERDICT_RE.findall(reply)
  if not tokens:
    return "error"
  return {"A": "A", "B": "B", "C": "tie"}[tokens[-1]]


def combine_verdicts(verdict_ab: str, verdict_ba: str) -> str:
  """Final winner from the two orders' verdicts, both already in run terms ("A"/"B"/"tie"/"error")."""
  if verdict_ab == verdict_ba and verdict_ab in RUNS:
    return verdict_ab
  return "tie"


# ---------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------


class JudgeError(RuntimeError):
  """The judge endpoint failed in a way retrying did not (or cannot) fix."""


@dataclasses.dataclass(frozen=True)
class JudgeClient:
  """A minimal OpenAI-compatible chat-completions client with retries and timeouts."""
  url: str
  model: str
  api_key: str | None = None
  timeout_s: float = 120.0
  max_retries: int = 5
  backoff_s: float = 1.0
  max_tokens: int = 1024

  @property
  def endpoint(self) -> str:
    base = self.url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"

  def request_body(self, messages: Sequence[Mapping[str, str]]) -> bytes:
    """The JSON body for `messages`: greedy (temperature 0), keys sorted, so reruns send the same bytes."""
    body = {"model": self.model, "messages": list(messages), "temperature": 0,
            "max_tokens": self.max_tokens}
    return json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")

  def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
    """The assistant message content of the judge's reply to `messages`."""
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    data = self.request_body(messages)
    for attempt in range(self.max_retries + 1):
      request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
      retry_after = None
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          payload = response.read()
        break
      except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode("utf-8", "replace")
        if e.code not in RETRY_STATUSES:
          raise JudgeError(f"{self.endpoint}: HTTP {e.code}: {detail}") from e
        failure = f"HTTP {e.code}: {detail}"
        retry_after = e.headers.get("Retry-After")
      except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        failure = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      if attempt == self.max_retries:
        raise JudgeError(f"{self.endpoint}: gave up after {attempt + 1} attempts; last: {failure}")
      delay = self.backoff_s * 2**attempt
      if retry_after is not None and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after))
      logging.warning("judge request failed (%s); retry %d/%d in %.1fs", failure, attempt + 1,
                      self.max_retries, delay)
      time.sleep(delay)
    try:
      content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise JudgeError(f"{self.endpoint}: reply is not a chat completion: {payload[:500]!r}") from e
    if not isinstance(content, str):
      raise JudgeError(f"{self.endpoint}: reply content is {type(content).__name__}, not a string")
    return content


# ---------------------------------------------------------------------------
# Judging and tallies
# ---------------------------------------------------------------------------


def judge_pair(client: JudgeClient, pa: Prediction, pb: Prediction, use_reference: bool = True,
               swapped: bool = False) -> str:
  """The judge's raw reply for one order: run A's answer first, or run B's when `swapped`."""
  record = pa.record
  reference = record["targets"] if use_reference and record["targets"].strip() else None
  first, second = (pb, pa) if swapped else (pa, pb)
  return client.complete(build_messages(record["inputs"], first.record["prediction"],
                                        second.record["prediction"], reference))


def _judgment(pa: Prediction, pb: Prediction, reply_ab: str, reply_ba: str) -> dict[str, Any]:
  verdict_ab, swapped = parse_verdict(reply_ab), parse_verdict(reply_ba)
  # In the swapped order assistant A is run B: map the position back to the run.
  verdict_ba = {"A": "B", "B": "A"}.get(swapped, swapped)
  return {"task": pa.record["task"], "index": pa.record["index"], "verdict_ab": verdict_ab,
          "verdict_ba": verdict_ba, "winner": combine_verdicts(verdict_ab, verdict_ba),
          "reply_ab": reply_ab, "reply_ba": reply_ba}


def _tally(judgments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  counts = {"pairs": len(judgments), "wins_a": 0, "wins_b": 0, "ties": 0, "inconsistent": 0,
            "errors": 0}
  for j in judgments:
    counts[{"A": "wins_a", "B": "wins_b", "tie": "ties"}[j["winner"]]] += 1
    verdicts = (j["verdict_ab"], j["verdict_ba"])
    if "error" in verdicts:
      counts["errors"] += 1
    elif verdicts[0] != verdicts[1]:
      counts["inconsistent"] += 1
  n = max(counts["pairs"], 1)
  counts["win_rate_b"] = counts["wins_b"] / n
  # MT-Bench's "adjusted" win rate: a tie is half a win for each side.
  counts["win_rate_b_adjusted"] = (counts["wins_b"] + 0.5 * counts["ties"]) / n
  return counts


def summarize(judgments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Per-task and overall tallies: wins of each run, ties (with inconsistent and error pairs
  among them counted separately) and run B's win rate, plain and with ties as half wins."""
  by_task: dict[str, list[Mapping[str, Any]]] = {}
  for j in judgments:
    by_task.setdefault(j["task"], []).append(j)
  return {"tasks": {t: _tally(js) for t, js in sorted(by_task.items())}, "overall": _tally(judgments)}


def format_summary_table(summary: Mapping[str, Any]) -> str:
  """The summary as an aligned text table, one row per task and an overall row."""
  header = ("task", "pairs", "wins A", "wins B", "ties", "errors", "win rate B")
  rows = [(task, c["pairs"], c["wins_a"], c["wins_b"], c["ties"], c["errors"], f"{c['win_rate_b']:.3f}")
          for task, c in [*summary["tasks"].items(), ("overall", summary["overall"])]]
  cells = [tuple(str(x) for x in row) for row in [header, *rows]]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
  # A crash mid-write must not leave a truncated file that looks like a finished run.
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                             dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def judge_runs(predictions_a: str, predictions_b: str, out_dir: str, client: JudgeClient,
               concurrency: int = 4, max_pairs: int | None = None,
               include_classification: bool = False, use_reference: bool = True) -> dict[str, Any]:
  """Judges run A against run B pair by pair in both orders; writes judgments.jsonl and
  judge_summary.json into `out_dir` and returns the summary."""
  if concurrency < 1:
    raise ValueError(f"concurrency must be positive, got {concurrency}")
  pairs = pair_predictions(predictions_a, predictions_b, include_classification=include_classification,
                           max_pairs=max_pairs)
  if not pairs:
    raise ValueError(f"no pairs to judge in {predictions_a} and {predictions_b}"
                     f"{'' if include_classification else ' (classification lines are skipped)'}")
  logging.info("judging %d pairs (%d requests) with %s at %s", len(pairs), 2 * len(pairs),
               client.model, client.endpoint)
  with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
    futures = [(pool.submit(judge_pair, client, pa, pb, use_reference, False),
                pool.submit(judge_pair, client, pa, pb, use_reference, True)) for pa, pb in pairs]
    try:
      judgments = [_judgment(pa, pb, ab.result(), ba.result())
                   for (pa, pb), (ab, ba) in zip(pairs, futures)]
    except BaseException:
      # One failure ends the run: do not keep spending judge calls on the rest.
      for ab, ba in futures:
        ab.cancel()
        ba.cancel()
      raise
  summary = summarize(judgments)
  summary.update(predictions_a=predictions_a, predictions_b=predictions_b, model=client.model)
  os.makedirs(out_dir, exist_ok=True)
  _write_atomic(os.path.join(out_dir, "judgments.jsonl"),
                "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
  _write_atomic(os.path.join(out_dir, "judge_summary.json"),
                json.dumps(summary, indent=2, sort_keys=True) + "\n")
  return summary
