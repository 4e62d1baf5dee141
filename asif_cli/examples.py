"""One example per command, shown under its --help (commands that declare their own epilog
keep it). Kept in one table so that the examples read as a tour of the command line."""

from __future__ import annotations

import argparse

from asif_cli.layout import MOVED

EXAMPLES: dict[str, str] = {
    "eval sweep": "asif-index eval sweep --data ../shared/data --ks 400,800 --ps 4,8",
    "lab doctor": "asif-index lab doctor --name photos    (or --data ../shared/data for Flickr8k)",
    "lab match": "asif-index lab match --data ../shared/data --sizes 100,500 --seeds 320",
    "eval unified": "asif-index eval unified --data ../shared/data --docs "
                        "docs/evaluation.md",
    "eval text-classifier": "asif-index eval text-classifier --data ../shared/data "
                                "--noise 0,0.04,0.12",
    "eval rerank": "asif-index eval rerank --data ../shared/data --m 50 --weights 0.02",
    "eval qbnorm": "asif-index eval qbnorm --data ../shared/data --temperatures "
                       "0.04,0.05 --docs docs/evaluation.md",
    "init": "asif-index init --path ./asif-qdrant --name photos --k 800 --p 8",
    "anchors remove": "asif-index anchors remove --ids 17,42,100-120 --name photos",
    "anchors status": "asif-index anchors status --name photos   (--resume finishes an "
                      "interrupted update)",
    "anchors list": "asif-index anchors list --grep dog --limit 20 --name photos",
    "anchors rebuild": "asif-index anchors rebuild --k 400 --p 6 --name photos",
    "ingest": "asif-index ingest --folder photos/ --checkpoint ingest.ckpt --name photos",
    "explain": "asif-index explain --item 3f2a... --text 'a dog on a beach' --name photos",
    "stats": "asif-index stats --path ./asif-qdrant --name photos",
    "index export": "asif-index index export items.parquet --name photos",
    "serve": "ASIF_SERVE_READ_KEYS=secret asif-index serve --name photos --port 8000",
    "servers": "asif-index servers qdrant    (then: asif-index init --url "
               "http://localhost:6333)",
}


def add_examples(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Give every leaf command without an epilog its example from :data:`EXAMPLES`."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            path = f"{prefix}{name}"
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                add_examples(sub, f"{path} ")
            elif not sub.epilog:  # an old name shows its new place's example
                path = " ".join(MOVED[path]) if path in MOVED else path
                if path in EXAMPLES:
                    sub.epilog = f"example: {EXAMPLES[path]}"
