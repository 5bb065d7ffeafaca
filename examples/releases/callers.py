"""Callers of one adapter on trial: ask, check each answer, send the check back as feedback.

An app that extracts a place as JSON can check an answer itself: the JSON parses, it has `city`
and `country`, and both occur in the sentence asked about. That check is the feedback score
(1 or 0) each caller sends with RecordFeedback, which the release's feedback guardrail compares
between stable and the candidate. Run by walkthrough.sh; asks until the trial ends (promoted or
rolled back) or `--max-requests` are sent.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loraplane.client import LoraplaneClient
from loraplane.types import SamplingParameters

GREEDY = SamplingParameters(max_tokens=24, temperature=0)


def score(sentence: str, answer: str) -> float:
    """1 when the answer is the JSON record of a city and country both named in the sentence."""
    try:
        record = json.loads(answer)
    except json.JSONDecodeError:
        return 0.0
    if not isinstance(record, dict) or set(record) != {"city", "country"}:
        return 0.0
    return float(all(isinstance(value, str) and value and value in sentence for value in record.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("adapter")
    parser.add_argument("sentences", type=Path, nargs="+", help="files with one sentence per line")
    parser.add_argument("--max-requests", type=int, default=1000)
    args = parser.parse_args()
    sentences = [line for path in args.sentences for line in path.read_text().splitlines() if line.strip()]
    with LoraplaneClient() as client, ThreadPoolExecutor(4) as pool:

        def ask(index: int) -> tuple[int, float]:
            sentence = sentences[index % len(sentences)]
            answer = client.inference.generate(
                messages=[{"role": "user", "content": sentence}],
                adapter=args.adapter,
                params=GREEDY,
                user=f"user-{index}",  # one caller per request: the canary share splits them
            )
            points = score(sentence, answer.text)
            client.inference.record_feedback(answer.request_id, points)
            assert answer.adapter is not None
            return answer.adapter.version, points

        started, sent = time.monotonic(), 0
        by_version: Counter[int] = Counter()
        good: Counter[int] = Counter()
        while sent < args.max_requests:
            for version, points in pool.map(ask, range(sent, sent + 8)):
                by_version[version] += 1
                good[version] += int(points)
            sent += 8
            state = client.inference.release(args.adapter).state
            if state is None or state.candidate is None:
                break
        seconds = time.monotonic() - started
    answered = ", ".join(f"v{v}: {by_version[v]} ({good[v]} checked right)" for v in sorted(by_version))
    print(f"{sent} requests in {seconds:.0f} s; answered by {answered}")


if __name__ == "__main__":
    main()
