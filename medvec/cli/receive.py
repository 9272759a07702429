"""`medvec receive`: run the DICOM receiver (C-STORE SCP) into the watched folder until interrupted."""

from __future__ import annotations

import logging
from pathlib import Path

from medvec.cli.options import add_collection_option
from medvec.settings import get_settings
from medvec.sources.receiver import DicomReceiver, ReceiverConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("receive", help="receive DICOM pushed by a PACS or modality (C-STORE) into the "
                                              "watched folder")
    p.add_argument("--ae-title", default="MEDVEC", help="this receiver's AE title (default MEDVEC)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on (default 11112)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--allow", nargs="+", default=[], metavar="AE",
                   help="calling AE titles accepted (default: any); others are refused")
    p.add_argument("--out", help="folder to write into (default: the watched folder, $MEDVEC_SOURCE)")
    add_collection_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    logging.getLogger("medvec.sources.receiver").setLevel(logging.INFO)
    out = Path(args.out or get_settings().source).expanduser()
    config = ReceiverConfig(out=out, ae_title=args.ae_title, port=args.port, host=args.host, allow=tuple(args.allow))
    print(f"receiving as {config.ae_title} on port {config.port} into {out}"
          + (f" (accepting {', '.join(config.allow)})" if config.allow else ""), flush=True)
    try:
        DicomReceiver(config).serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
