"""``python -m wflo.testing.llm_server [--port N]``: run the scripted LLM server standalone."""

from __future__ import annotations

import argparse
import sys
import time

from ._llm_server import LLMServer


def main() -> None:
    parser = argparse.ArgumentParser(description="A scripted OpenAI/Anthropic-compatible server on localhost.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        server = LLMServer(args.host, args.port).start()
    except OSError as exc:
        sys.exit(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    print(
        f"wflo test LLM server on {server.url} (OpenAI base_url {server.openai_url}, Anthropic base_url {server.anthropic_url})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
