"""`finetune-operator run`: start the operator (one replica, standalone: no peering)."""

from __future__ import annotations

import logging
import sys

import kopf

from finetune_operator import handlers
from finetune_operator.settings import from_args, parser


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.add_argument("command", choices=["run"], help="what to do (only `run` for now)")
    args = p.parse_args(argv)
    settings = from_args(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # one line per handler run and object is noise at scale; errors and warnings still show
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers.configure(settings)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=(
            f"http://{settings.bind_address}:{settings.health_port}/healthz" if settings.health_port else None
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
