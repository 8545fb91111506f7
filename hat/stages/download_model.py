"""download_model.py: download HAT's published models (as HAT's download_model.py), latency predictors, latency
datasets and data; the registry and the resumable, verified HTTP download are :mod:`hat.download`."""
from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from typing import Optional, Sequence

from hat.config import stage_parser
from hat.download import (DEFAULT_DEST, KINDS, REGISTRY, REGISTRY_ENV, DownloadError, Entry, check_reachable,
                          check_sha256, extract_archive, fetch, get_entry, http_download, list_entries, load_registry,
                          verify_present)


def build_parser(prog: str = "download_model.py") -> argparse.ArgumentParser:
    p = stage_parser("Download HAT's published checkpoints, latency predictors, latency datasets and preprocessed "
                     "data.", prog=prog)
    p.add_argument("--model-name", action="append", metavar="NAME", help="registry name (repeatable); see --list")
    p.add_argument("--list", action="store_true", help="list the registry (name, kind, task, size, host)")
    p.add_argument("--kind", choices=KINDS, help="with --list or --download-all: only this kind")
    p.add_argument("--download-all", action="store_true", help="every entry (of --kind, default: the checkpoints)")
    p.add_argument("--dest", "--save-path", dest="dest", default=DEFAULT_DEST, metavar="DIR",
                   help=f"where files go (default: {DEFAULT_DEST})")
    p.add_argument("--registry", metavar="FILE", help=f"registry JSON (default: ${REGISTRY_ENV} or {REGISTRY})")
    p.add_argument("--extract", metavar="DIR", help="unpack the downloaded archive as DIR (atomically), then remove "
                                                    "the archive")
    p.add_argument("--url", help="download this URL instead of a registry entry (same resume/verify rules)")
    p.add_argument("--sha256", help="with --url: the expected sha256 (also checked when the file is already there)")
    p.add_argument("--check", nargs="+", metavar="URL", help="only check that these hosts are reachable")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary lines")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "download_model.py") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.check:
        for url in args.check:
            check_reachable(url, timeout=min(args.timeout, 5.0))
        return 0
    if args.list:
        for line in list_entries(load_registry(args.registry), args.kind):
            print(line)
        return 0
    if args.sha256 is not None and not args.url:
        raise DownloadError("--sha256 goes with --url (registry entries carry their own sha256)")
    args.sha256 = check_sha256(args.sha256)
    if args.url:
        name = os.path.basename(urllib.parse.urlsplit(args.url).path) or "download"
        entries = [Entry(name=name, kind="file", filename=name, url=args.url, sha256=args.sha256)]
    elif args.download_all:
        reg = load_registry(args.registry)
        kinds = (args.kind,) if args.kind else ("subtransformer", "supertransformer")
        entries = [e for e in reg.values() if e.kind in kinds]
    elif args.model_name:
        entries = [get_entry(n, args.registry) for n in args.model_name]
    else:
        raise DownloadError("give --model-name NAME (see --list), --download-all or --url URL")
    if args.extract and len(entries) != 1:
        raise DownloadError("--extract needs exactly one archive")
    if args.extract and os.path.isdir(args.extract) and os.listdir(args.extract):
        print(f"{args.extract}: already there, nothing to do", file=sys.stderr)
        return 0
    for e in entries:
        if args.url:
            path = os.path.join(args.dest, e.filename)
            if os.path.exists(path):  # checked against --sha256 without the network
                verify_present(path, args.sha256, args.quiet)
            else:
                check_reachable(args.url)
                os.makedirs(args.dest, exist_ok=True)
                digest = http_download(args.url, path, args.sha256, timeout=args.timeout, quiet=args.quiet)
                if not args.quiet:
                    pinned = "verified" if args.sha256 else "not verified: no --sha256 given"
                    print(f"{path}: sha256 {digest} ({pinned})", file=sys.stderr)
        else:
            path = fetch(e, args.dest, timeout=args.timeout, quiet=args.quiet)
        if args.extract:
            extract_archive(path, args.extract)
            os.remove(path)
            if not args.quiet:
                print(f"{args.extract}: ready", file=sys.stderr)
        elif not args.quiet and e.config:
            print(f"{path}: architecture {e.config}", file=sys.stderr)
    return 0


