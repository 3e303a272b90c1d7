"""The files API: ``/v1/files``."""

from lorafleet.gateway.files.controller import FilesController

__all__ = ["FilesController"]
