"""The tools' code. wflo imports it only inside the sandbox, with the manifest's capabilities."""

from __future__ import annotations

import collections
import re
import urllib.request

_WORD = re.compile(r"[A-Za-z']+")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def text_stats(text: str, top: int = 5) -> dict[str, object]:
    """Lines, words, characters and the most frequent words of a text."""
    words = [w.lower() for w in _WORD.findall(text)]
    common = collections.Counter(words).most_common(top)
    return {"lines": len(text.splitlines()), "words": len(words), "chars": len(text),
            "top": [{"word": w, "count": n} for w, n in common]}  # fmt: skip


def page_title(url: str) -> str:
    """The <title> of a web page (only hosts the manifest allows are reachable)."""
    try:
        from wflo_tool import secret  # given by wflo inside the sandbox
    except ImportError:  # run outside wflo (the author's own tests)
        import os

        def secret(name: str) -> str:
            return os.environ[name]

    request = urllib.request.Request(
        url, headers={"User-Agent": "acme-text-tools", "X-Api-Key": secret("ACME_API_KEY")}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        html = response.read(200_000).decode("utf-8", "replace")
    match = _TITLE.search(html)
    return match.group(1).strip() if match else ""
