"""`python -m serving.smoke --url URL`: one image end to end; exit 0 only for a valid PNG.

The chart's `helm test` pod runs this against the installed service.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import httpx
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check(url: str, prompt: str, steps: int, timeout_s: float, api_key: str | None) -> str:
    """Generate one image; returns a description of it, raises RuntimeError when it is not valid."""
    headers = {"Accept": "image/png"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    answer = httpx.post(
        url.rstrip("/") + "/v1/generate",
        json={"prompt": prompt, "steps": steps, "seed": 1},
        headers=headers,
        timeout=timeout_s,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:500]}")
    if answer.headers.get("content-type") != "image/png":
        raise RuntimeError(f"content-type is {answer.headers.get('content-type')!r}, not image/png")
    if not answer.content.startswith(PNG_SIGNATURE):
        raise RuntimeError("the body is not a PNG (bad signature)")
    with Image.open(io.BytesIO(answer.content)) as image:
        image.load()  # decodes every pixel: a truncated or corrupt PNG raises here
        width, height = image.size
        mode = image.mode
    if width < 8 or height < 8 or mode != "RGB":
        raise RuntimeError(f"unexpected image: {width}x{height} {mode}")
    seed = answer.headers.get("x-seed")
    return f"valid PNG {width}x{height} {mode}, {len(answer.content)} bytes, seed {seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.smoke", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--api-key-file", type=Path, help="file holding the API key to send")
    args = parser.parse_args(argv)
    try:
        api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
        description = check(args.url, args.prompt, args.steps, args.timeout, api_key)
    except (RuntimeError, httpx.HTTPError, OSError) as error:
        print(f"FAIL: {error}", file=sys.stderr)
        return 1
    print(f"OK: {description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
