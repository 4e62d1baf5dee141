"""One example per command, shown under its --help (commands that declare their own epilog
keep it). Kept in one table so that the examples read as a tour of the command line."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "evaluate": "asif-index evaluate --data ../shared/data --ks 400,800 --ps 4,8",
    "doctor": "asif-index doctor --name photos    (or --data ../shared/data for Flickr8k)",
    "match": "asif-index match --data ../shared/data --sizes 100,500 --seeds 320",
    "evaluate-unified": "asif-index evaluate-unified --data ../shared/data --docs "
                        "docs/evaluation.md",
    "evaluate-text-classifier": "asif-index evaluate-text-classifier --data ../shared/data "
                                "--noise 0,0.04,0.12",
    "evaluate-rerank": "asif-index evaluate-rerank --data ../shared/data --m 50 --weights 0.02",
    "evaluate-qbnorm": "asif-index evaluate-qbnorm --data ../shared/data --temperatures "
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
            elif not sub.epilog and path in EXAMPLES:
                sub.epilog = f"example: {EXAMPLES[path]}"
