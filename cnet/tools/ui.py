"""``make ui``: the MLflow UI on a store, opened straight on each experiment's runs table.

``python -m cnet.tools.ui [--backend-store-uri URI] [--host H] [--port P]`` stores the ablation view
(:mod:`cnet.runs_view`: model-training mode, the figures, mispair rates, matching, adaption and
dataset columns) on every experiment of the store, prints one link per experiment, then runs
``mlflow ui`` on the store (until Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys

from cnet.runs_view import publish_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnet.tools.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend-store-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--no-serve", action="store_true", help="store the views and print the links only")
    args = parser.parse_args(argv)
    from cnet.tracking import resolve_tracking_uri

    uri = args.backend_store_uri or resolve_tracking_uri(None)
    links = publish_all(uri, f"http://{args.host}:{args.port}")
    for name, url in links:
        print(f"runs table of experiment {name}: {url}", flush=True)
    if not links:
        print(f"no runs in {uri} yet: train one (python train.py), then open the link it prints", flush=True)
    if args.no_serve:
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host]
    os.execv(sys.executable, [*command, "--port", str(args.port)])  # the UI takes over this process (Ctrl-C stops it)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
