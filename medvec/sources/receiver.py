"""A DICOM receiver (C-STORE SCP and C-ECHO, pynetdicom) that a PACS or a modality pushes to: each
instance is written into the watched folder atomically (hidden temp name → fsync → rename → fsync of
the folder) *before* the store is acknowledged, so an acknowledged instance is never lost or half
written, even if the process is killed. When an association ends, a `.done` marker goes into each
study folder it wrote to, and the folder sensor takes the study without waiting for it to settle.

File and folder names are hashes of the UIDs, not the UIDs: paths reach logs and error records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medvec.sources import DONE_MARKER

log = logging.getLogger(__name__)

#: DIMSE status codes (PS3.7 Annex C): success, and "out of resources" for a store that could not be written.
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


def _name(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:24]


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds all of `data` or does not exist; once this returns, it survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"  # hidden: never listed
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must reach the disk before the store is acknowledged
    finally:
        os.close(directory)


@dataclass
class ReceiverConfig:
    out: Path
    ae_title: str = "MEDVEC"
    port: int = 11112
    host: str = "0.0.0.0"
    allow: tuple[str, ...] = ()  # calling AE titles accepted; empty: any


@dataclass
class Received:
    """What the receiver stored, for counts in logs and tests (no identifiers)."""

    instances: int = 0
    studies_done: int = 0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class DicomReceiver:
    """The SCP. `start()` serves in background threads; `serve_forever()` blocks."""

    def __init__(self, config: ReceiverConfig):
        self.config = config
        self.received = Received()
        self._studies: dict[int, set[Path]] = {}  # association id → study folders it wrote to
        self._server = None

    def _ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allow:
            ae.require_calling_aet = list(self.config.allow)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_RELEASED, self._on_end), (evt.EVT_ABORTED, self._on_end)]
        return ae, handlers

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset  # decodes only the header elements we ask for below
            study = _name(str(dataset.StudyInstanceUID))
            folder = Path(self.config.out) / study
            write_atomically(folder / f"{_name(str(dataset.SOPInstanceUID))}.dcm", event.encoded_dataset())
        except Exception as exc:  # noqa: BLE001 - a store we cannot write is refused, never acknowledged
            log.error("could not store an instance (%s); the sender was told to retry", type(exc).__name__)
            with self.received.lock:
                self.received.failures += 1
            return OUT_OF_RESOURCES
        with self.received.lock:
            self.received.instances += 1
            self._studies.setdefault(id(event.assoc), set()).add(folder)
        return SUCCESS

    def _on_end(self, event) -> None:
        with self.received.lock:
            folders = self._studies.pop(id(event.assoc), set())
        for folder in folders:
            write_atomically(folder / DONE_MARKER, b"")
        with self.received.lock:
            self.received.studies_done += len(folders)
        if folders:
            log.info("association ended: %d study folder(s) marked done", len(folders))

    def start(self):
        ae, handlers = self._ae()
        Path(self.config.out).mkdir(parents=True, exist_ok=True)
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        return self

    def serve_forever(self) -> None:
        ae, handlers = self._ae()
        Path(self.config.out).mkdir(parents=True, exist_ok=True)
        ae.start_server((self.config.host, self.config.port), block=True, evt_handlers=handlers)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


#: Accept what the sender has: the receiver stores bytes as sent, decoding happens at normalisation.
ALL_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]
