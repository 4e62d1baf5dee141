"""The query commands (search, classify, explain) through a running ``asif-index serve``:
no encoders, no database connection and no anchor matrices in this process, so a query costs
an HTTP round trip instead of the start-up. Chosen by ``--service URL`` or
``ASIF_SERVICE_URL``; the key comes from ``ASIF_SERVICE_KEY`` only (a flag would show it to
every user of the machine in the process list)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asif_cli.args import query_lines
from asif_cli.output import hit_dict, print_explanation, print_hits, print_prediction
from asif_index.errors import BackendUnavailableError, ConfigError


class ServiceError(ConfigError):
    """The service refused a request (its reason is in the message)."""


def service_url(args) -> str | None:
    url = getattr(args, "service", None) or os.environ.get("ASIF_SERVICE_URL") or None
    return url.rstrip("/") if url else None


class Remote:
    """A thin client of the service's JSON API; errors mapped to one-line AsifErrors."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        from asif_index._optional import require

        httpx = require("httpx", "querying a running service (pip install 'asif-index[serve]')")
        self.url = url
        headers = {}
        key = os.environ.get("ASIF_SERVICE_KEY")
        if key:
            headers["X-API-Key"] = key
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self._httpx = httpx

    def call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except self._httpx.TransportError as exc:
            raise BackendUnavailableError(
                f"no asif-index service answers at {self.url} (--service / ASIF_SERVICE_URL): "
                f"{type(exc).__name__}; start one with 'asif-index serve', or unset it to query "
                "the database directly") from None
        if r.status_code == 401 or r.status_code == 403:
            raise ServiceError(f"the service at {self.url} refused the key: set ASIF_SERVICE_KEY "
                               "to a read key it was started with (ASIF_SERVE_READ_KEYS)")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if isinstance(detail, list):  # FastAPI's validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                                   for d in detail)
            raise ServiceError(f"the service at {self.url} answered {r.status_code}: {detail}")
        return r.json()

    def announce(self) -> None:
        h = self.call("GET", "/healthz")
        print(f"via the service at {self.url} (anchor version {h['anchor_version']}, "
              f"{h['anchors']} anchors)", file=sys.stderr)


def _hits(doc: dict) -> list[SimpleNamespace]:
    return [SimpleNamespace(**{k: h[k] for k in ("id", "score", "modality", "payload")},
                            similarity=h.get("similarity")) for h in doc["hits"]]


def search(args, flt, qb: float | bool | None = None) -> int:
    """flt: the parsed filter (connectors.filters), as the local search parses it; qb: the
    search's qbnorm (``asif_cli.args.qbnorm_choice``)."""
    from connectors import filters

    r = Remote(service_url(args))
    r.announce()
    keep = args.query_keep
    body = {"limit": args.limit, "filter": filters.to_json(flt) or {}, "query_keep": keep,
            "exact": bool(getattr(args, "exact", False)),
            "candidates": getattr(args, "candidates", None),
            "offset": getattr(args, "offset", 0)}
    if qb is not None and not args.item:
        body["qbnorm"] = qb

    def ask(**query) -> list:
        return _hits(r.call("POST", "/search", json={**body, **query}))

    def show(doc: dict, what: str) -> None:
        print_hits(_hits(doc), args.json, what, doc.get("qbnorm"))

    if args.queries:
        for line in query_lines(args.queries):
            print(json.dumps({"query": line, "hits": [hit_dict(h) for h in ask(text=line)]}))
        return 0
    if args.image:
        modality = filters.only_modality(flt)
        if (flt is not None and flt != filters.with_modality(None, modality)) or \
                keep is not None:
            raise ConfigError("an image search through the service takes only --filter "
                              "modality=...; drop the other filters or --query-keep, or query "
                              "the database directly (unset --service / ASIF_SERVICE_URL)")
        path = Path(args.image)
        if not path.is_file():
            raise ConfigError(f"query image '{path}' (--image) does not exist")
        data = {"limit": str(args.limit), "offset": str(getattr(args, "offset", 0))}
        if args.text:  # a composed query
            data["text"] = args.text
            if args.image_weight is not None:
                data["image_weight"] = str(args.image_weight)
        if modality:
            data["modality"] = modality
        if qb is not None:
            data["qbnorm"] = "on" if qb is True else "off" if qb is False else str(qb)
        with path.open("rb") as f:
            doc = r.call("POST", "/search/image", files={"file": (path.name, f)}, data=data)
        show(doc, f"image {args.image}" + (f" + {args.text!r}" if args.text else ""))
        return 0
    if args.item:
        show(r.call("POST", "/search", json={**body, "item_id": args.item}),
             f"item {args.item}")
    else:
        show(r.call("POST", "/search", json={**body, "text": args.text}), repr(args.text))
    return 0


def explain(args) -> int:
    r = Remote(service_url(args))
    r.announce()
    body: dict[str, Any] = {"item_id": args.item, "top": args.top}
    if args.text:
        body["text"] = args.text
    else:
        body["image_path"] = str(Path(args.image).resolve())
    from asif_cli.args import explain_qbnorm

    qb = explain_qbnorm(args)
    if qb is not None:
        body["qbnorm"] = qb
    ex = r.call("POST", "/explain", json=body)
    ex["anchors"] = [{k: a[k] for k in ("anchor_id", "contribution", "caption", "image_ref")}
                     for a in ex["anchors"]]
    print_explanation(args.item, ex, args.json)
    return 0


def classify(args, images: list[Path], labels: list[str]) -> int:
    if args.template or args.reduce != "mean":
        raise ConfigError("the service classifies with its built-in templates (mean): drop "
                          "--template/--reduce, or query the database directly (unset "
                          "--service / ASIF_SERVICE_URL)")
    r = Remote(service_url(args))
    r.announce()
    shown = 0
    for s in range(0, len(images), 32):  # the service caps files per request
        chunk = images[s:s + 32]
        handles = [p.open("rb") for p in chunk]
        try:
            doc = r.call("POST", "/classify", data={"labels": ",".join(labels)},
                         files=[("files", (str(p), h)) for p, h in zip(chunk, handles)])
        finally:
            for h in handles:
                h.close()
        for p in doc["predictions"]:
            print_prediction(p["file"], p["label"], p["scores"], labels, args.json)
            shown += 1
    return 0 if shown else 2
