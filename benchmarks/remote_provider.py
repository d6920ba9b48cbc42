"""A loopback Gemini provider in its own process, for the batch benchmarks.

A real provider's work (serialising and sending megabytes of base64) happens on another machine;
in the benchmark's own process it would compete with the node for the interpreter lock. Run:

    python benchmarks/remote_provider.py ANSWER_FILE LATENCIES_JSON

ANSWER_FILE holds the JSON answer; LATENCIES_JSON maps prompts to seconds ("*": the default).
Prints "URL <url>", serves until stdin closes, then prints one JSON line: the most requests it
handled at once and, per request, the time.monotonic() at which it answered (the clock is the
system's, so the benchmark compares it with its own).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from loopback import LoopbackServer, Recorded, Reply


def main() -> None:
    body = Path(sys.argv[1]).read_bytes()
    latencies = json.loads(Path(sys.argv[2]).read_text())
    answered: list[float] = []

    def answer(request: Recorded) -> Reply:
        prompt = request.json()["contents"][0]["parts"][0]["text"]
        delay = latencies.get(prompt, latencies["*"])
        answered.append(time.monotonic() + delay)
        return Reply(body=body, content_type="application/json", delay=delay)

    server = LoopbackServer()
    # Answers go out as headers then body: with Nagle's algorithm the body waits for the client's
    # delayed ACK (40 ms on Linux), a stall no real provider's server has.
    server._httpd.RequestHandlerClass.disable_nagle_algorithm = True
    server.start()
    server.route("POST", r":generateContent$", answer)
    print("URL", server.url, flush=True)
    sys.stdin.read()
    server.stop()
    print(json.dumps({"max_concurrent": server.max_concurrent, "answered": answered}), flush=True)


if __name__ == "__main__":
    main()
