"""Benchmark: the cost of DKIM signing per message, against building the same message (same run).

Builds personalised messages from one rendered edition (the bundled sample, 15 articles) as the send path
does, then signs each with a fresh 2048-bit RSA key (`newsletter.dkim.sign`). Prints milliseconds per
message for building, for signing, and the split of signing between canonicalisation/hashing and the RSA
operation, with the load average.

    python bench/dkim_sign.py                 # 200 messages
    python bench/dkim_sign.py --messages 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personalise import edition, message, values

from newsletter.dkim import load_key, sign
from newsletter.rendering import personalise, render_edition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pem = Path(folder) / "dkim.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(pem), "2048"], check=True, capture_output=True)
        key = load_key("bench", pem, "The Weekly Review <weekly@news.example.org>")
    content = edition(15)
    rendered = render_edition(content)
    start = time.perf_counter()
    messages = []
    for i in range(args.messages):
        v = values(i)
        html, text = personalise(rendered.html, v, escape=True), personalise(rendered.text, v, escape=False)
        messages.append(message(content, i, html, text, rendered.subject))
    build = (time.perf_counter() - start) / args.messages
    start = time.perf_counter()
    for raw in messages:
        sign(raw, key)
    signing = (time.perf_counter() - start) / args.messages

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from newsletter.dkim import _private_key

    parsed = _private_key(key.private_key)
    start = time.perf_counter()
    for _ in range(50):
        parsed.sign(b"x" * 600, padding.PKCS1v15(), hashes.SHA256())
    rsa = (time.perf_counter() - start) / 50
    size = sum(len(m) for m in messages) / len(messages)
    print(f"{args.messages} messages of {size / 1024:.1f} KiB; load average {os.getloadavg()[0]:.2f}")
    print(f"build (personalise + MIME): {build * 1000:6.2f} ms/message")
    print(f"DKIM sign:                  {signing * 1000:6.2f} ms/message ({signing / build:.1f}x building)")
    print(f"  of which RSA-2048:        {rsa * 1000:6.2f} ms; canonicalisation and hashing {max(signing - rsa, 0) * 1000:.2f} ms")
    print(f"one process signs at most {1 / signing:,.0f} messages/s")


if __name__ == "__main__":
    main()
