"""`difflab serve`: the sampling web page (gradio, from the ``ui`` extra, imported only here)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .common import UsageError, say

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
INSTALL_HINT = "difflab serve needs gradio: pip install 'difflab[ui]' (or: pip install 'gradio>=6,<7')"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", default=None,
                   help="run folders, or folders to search for runs (default: runs/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, help="port (default: 7860 or the next free one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", metavar="DIR", help="where each request's grid and GIF are written "
                                                "(default: a new temporary folder)")


def run_serve(args) -> int:
    from ..serve.runs import find_runs
    from ..train import resolve_device

    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    paths = args.runs or ["runs"]
    try:
        entries, skipped = find_runs(paths)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for line in skipped:
        say(f"skipped {line}")
    if not entries:
        raise UsageError(f"no diffusion run to serve in {', '.join(map(str, paths))}")
    device = resolve_device(args.device)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"     # before gradio is imported: no usage reports, no version check
    try:
        from ..serve.page import build_page, launch
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "gradio":
            raise RuntimeError(INSTALL_HINT) from None
        raise
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="difflab-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    page = build_page(entries, device=device, out_dir=out)
    try:
        url = launch(page, host=args.host, port=args.port, out_dir=out)
    except OSError as e:
        raise RuntimeError(f"cannot listen on {args.host}:{args.port or 7860} ({str(e).splitlines()[0]}); "
                           "choose another --port") from None
    if args.host not in LOCAL_HOSTS:
        say(f"warning: listening on {args.host}: anyone who can reach this machine can use the page")
    say(f"serving {len(entries)} run{'s' if len(entries) > 1 else ''} ({', '.join(e.name for e in entries)}) "
         f"on {device}")
    say(f"files are written to {out}")
    say(f"open {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        page.close()
    return 0
